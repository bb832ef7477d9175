// Awaits of one attempt: which waiting coroutine is resumed next, journaled so a replay repeats it.
//
// Every await registers a [Waiter] and suspends, even when its result is already known: whether a
// result had arrived is timing, so it must not decide whether a coroutine goes on at once. When the
// loop has nothing left to run, [Awaits.onIdle] resumes one waiter:
//   * one waiter awaiting one entry: it goes on once the result is there (nothing journaled);
//   * several waiters (coroutines), or an awaitAny: the choice is journaled as `select{winner}`
//     (the entry whose result resumes it), and a replay makes the journaled choice — except when
//     every waiter awaits a `run` entry: those complete in index order, the lowest goes first
//     (and a cancellation goes to the lowest cancellable one);
//   * a cancellation goes to the first cancellable waiter none of whose entries has a result, as a
//     `cancelled` entry (after a `select` naming the waiter when several wait).
// Only the handler's own coroutines run in between, on the loop, so every command gets its index
// in the same order on every attempt.
package dev.kiln.sdk

import kotlinx.coroutines.CancellableContinuation
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException
import kotlin.time.Duration

/** Why a waiter is resumed. */
internal sealed interface Wake {
    /** The result of entry [index] is known (or, for an awaitAny, [index] is the journaled winner). */
    class Ready(val index: Int) : Wake

    /** The invocation's cancellation surfaces at this await. */
    data object Cancelled : Wake
}

/** One coroutine waiting in an await. */
internal class Waiter(
    /** Entries whose result resumes it (one, or the futures of an awaitAny, in argument order). */
    val indices: List<Int>,
    /** What to suspend on while it waits: [indices] and, for awaitAll, the futures after this one. */
    val suspendOn: List<Int>,
    /** An awaitAny: its winner is journaled even when it is the only waiter. */
    val any: Boolean,
    /** A cancellation may surface here (user awaits; not a `run`'s own wait for its ACK). */
    val cancellable: Boolean,
    val cont: CancellableContinuation<Wake>,
)

internal class Awaits(private val inv: Invocation) {
    private companion object {
        /** Longest idle wait without a signal; only a safety net, every event signals the loop. */
        const val IDLE_MS = 1_000L
    }

    // Touched on the loop thread only.
    private val waiters = ArrayList<Waiter>()

    /** When the loop last started waiting with nothing to resume; -1 after progress. */
    private var idleSince = -1L

    private suspend fun park(indices: List<Int>, suspendOn: List<Int>, any: Boolean, cancellable: Boolean): Wake =
        suspendCancellableCoroutine { cont -> waiters.add(Waiter(indices, suspendOn, any, cancellable, cont)) }

    // User-visible awaits ------------------------------------------------------------------------

    private fun checkOwn(f: FutureImpl<*>) {
        require(f.invocation === inv) { "$f belongs to another invocation" }
    }

    /** A user await of [f], suspending on [suspendOn] (which contains `f.index`). */
    suspend fun <T> future(f: FutureImpl<T>, suspendOn: List<Int>): T {
        checkOwn(f)
        inv.checkUsable("await")
        return when (park(listOf(f.index), suspendOn, any = false, cancellable = true)) {
            is Wake.Ready -> f.decode(inv.resultOf(f.index)!!)
            Wake.Cancelled -> throw TerminalException(ErrorCode.CANCELLED, CANCELLED_MESSAGE)
        }
    }

    /** Await of an entry that completes "at once" or is a select's winner: never cancels. */
    suspend fun uncancellable(index: Int): EntryResult {
        inv.checkUsable("await")
        park(listOf(index), listOf(index), any = false, cancellable = false)
        return inv.resultOf(index)!!
    }

    suspend fun all(futures: List<FutureImpl<*>>): List<Any?> {
        futures.forEach { checkOwn(it) }
        val indices = futures.map { it.index }
        return futures.mapIndexed { i, f -> future(f, indices.subList(i, indices.size)) }
    }

    /** Waits for the first completed of [futures] and journals (or replays) the choice; returns its position. */
    suspend fun any(futures: List<FutureImpl<*>>): Int {
        require(futures.isNotEmpty()) { "awaitAny needs at least one future" }
        futures.forEach { checkOwn(it) }
        inv.checkUsable("awaitAny")
        val indices = futures.map { it.index }
        return when (val w = park(indices, indices, any = true, cancellable = true)) {
            is Wake.Ready -> indices.indexOf(w.index)
            Wake.Cancelled -> throw TerminalException(ErrorCode.CANCELLED, CANCELLED_MESSAGE)
        }
    }

    suspend fun <T> first(futures: List<FutureImpl<out T>>): T {
        val f = futures[any(futures)]
        return f.decode(uncancellable(f.index))
    }

    suspend fun <T> withTimeout(f: FutureImpl<T>, timeout: Duration): T {
        checkOwn(f)
        val timer = inv.context.timer(timeout) as FutureImpl<*>
        if (any(listOf(f, timer)) == 1) {
            throw TerminalException(ErrorCode.TIMEOUT, "timed out after $timeout waiting for entry ${f.index}")
        }
        return f.decode(uncancellable(f.index))
    }

    // Resuming, on the loop thread -----------------------------------------------------------------

    /** Stops every waiting coroutine: the attempt is over (suspended or failed). */
    fun stopAll(message: String) {
        val all = waiters.toList()
        waiters.clear()
        all.forEach { it.cont.resumeWithException(InvocationAbortedError(message)) }
    }

    private fun resume(w: Waiter, wake: Wake) {
        waiters.remove(w)
        idleSince = -1
        w.cont.resume(wake)
    }

    /** Called by the loop when no task is queued: resumes one waiter (0) or says how long to wait. */
    fun onIdle(): Long {
        if (inv.isOver) return IDLE_MS
        waiters.removeAll { !it.cont.isActive } // cancelled by the user (e.g. withTimeout)
        if (waiters.isEmpty()) return IDLE_MS
        val resumed = if (inv.replaying) replayDecision() else newDecision()
        return if (resumed || inv.isOver) 0 else waitOrSuspend()
    }

    private fun describeWaiters(): String = waiters.joinToString(", ") { it.indices.toString() }

    /**
     * Several plain waiters that all await `run` entries: `run` results become known in index order
     * (entries are sent in order, ACKs are cumulative), so the waiter of the lowest index goes on
     * first in every execution and nothing needs journaling. A cancellation goes to the lowest
     * cancellable one, as a lone `cancelled` entry. Null when the rule does not apply.
     */
    private fun onlyRuns(): Waiter? {
        if (waiters.size < 2 || waiters.any { it.any || !inv.isRun(it.indices[0]) }) return null
        return waiters.minBy { it.indices[0] }
    }

    /** Replaying: the next journal entry says what the first execution did here. */
    private fun replayDecision(): Boolean {
        val at = inv.nextIndex
        val e = inv.journalAt(at)!!
        val lowest = onlyRuns()
        if (lowest != null) {
            val cancelled = waiters.filter { it.cancellable }.minByOrNull { it.indices[0] }
            if (e.kind == EntryKind.CANCELLED && cancelled != null) {
                inv.nextIndex++
                inv.markCancelSurfaced()
                resume(cancelled, Wake.Cancelled)
            } else {
                resume(lowest, Wake.Ready(lowest.indices[0]))
            }
            return true
        }
        if (waiters.size > 1) {
            if (e.kind != EntryKind.SELECT) {
                inv.mismatch(
                    at,
                    "journal has ${e.describe()}, handler issued select (${waiters.size} coroutines await entries ${describeWaiters()})",
                )
                return false
            }
            val cancelNext = inv.journalAt(at + 1)?.kind == EntryKind.CANCELLED
            val w = waiters.firstOrNull { e.winner in it.indices && (!cancelNext || it.cancellable) }
            if (w == null) {
                inv.mismatch(
                    at,
                    "journal has select of entry ${e.winner}, handler's coroutines await entries ${describeWaiters()}",
                )
                return false
            }
            if (cancelNext) {
                inv.nextIndex += 2
                inv.markCancelSurfaced()
                resume(w, Wake.Cancelled)
                return true
            }
            if (!w.any && inv.resultOf(e.winner!!) == null) return false // the COMPLETION is on its way
            inv.nextIndex++
            resume(w, Wake.Ready(e.winner!!))
            return true
        }
        val w = waiters[0]
        if (e.kind == EntryKind.CANCELLED && w.cancellable) {
            inv.nextIndex++
            inv.markCancelSurfaced()
            resume(w, Wake.Cancelled)
            return true
        }
        if (w.any) {
            if (e.kind != EntryKind.SELECT) {
                inv.mismatch(at, "journal has ${e.describe()}, handler issued select")
                return false
            }
            if (e.winner !in w.indices) {
                inv.mismatch(at, "journal has select of entry ${e.winner}, handler awaits any of entries ${w.indices}")
                return false
            }
            inv.nextIndex++
            resume(w, Wake.Ready(e.winner!!))
            return true
        }
        val i = w.indices[0]
        if (inv.resultOf(i) == null) return false
        resume(w, Wake.Ready(i))
        return true
    }

    /** Processing: the first waiter with a result goes on; else a pending cancellation surfaces. */
    private fun newDecision(): Boolean {
        val lowest = onlyRuns()
        if (lowest != null) {
            if (inv.resultOf(lowest.indices[0]) != null) {
                resume(lowest, Wake.Ready(lowest.indices[0]))
                return true
            }
            if (!inv.cancelPending()) return false
            val w = waiters.filter { it.cancellable }.minByOrNull { it.indices[0] } ?: return false
            return cancel(w, select = false)
        }
        for (w in waiters) {
            val i = w.indices.firstOrNull { inv.resultOf(it) != null } ?: continue
            val journaled = waiters.size > 1 || w.any
            if (journaled) inv.appendDecision(JournalEntry(inv.nextIndex, EntryKind.SELECT, winner = i))
            if (inv.isOver) return false
            resume(w, Wake.Ready(i))
            return true
        }
        if (!inv.cancelPending()) return false
        // None has a result, so the first cancellable one is also the first cancellable one that
        // awaits its select's winner: a replay finds the same waiter.
        val w = waiters.firstOrNull { it.cancellable } ?: return false
        return cancel(w, select = waiters.size > 1)
    }

    /** Journals `cancelled` (after a `select` naming [w] when [select]) and throws it into [w]. */
    private fun cancel(w: Waiter, select: Boolean): Boolean {
        if (select) inv.appendDecision(JournalEntry(inv.nextIndex, EntryKind.SELECT, winner = w.indices[0]))
        inv.appendDecision(JournalEntry(inv.nextIndex, EntryKind.CANCELLED))
        if (inv.isOver) return false
        inv.markCancelSurfaced()
        resume(w, Wake.Cancelled)
        return true
    }

    /**
     * Nothing to resume yet. Suspends the invocation on every entry still pending when nothing
     * arrived within `suspend_after_ms`, or at once when all of them are timers firing later than
     * that; never while a `run` block executes or a `run` entry awaits its ACK (those results are
     * local, the runtime would never complete them).
     */
    private fun waitOrSuspend(): Long {
        val now = inv.clock()
        if (idleSince < 0) idleSince = now
        if (inv.localWorkPending()) return IDLE_MS
        val deadline = idleSince + inv.suspendAfterMs
        val pending = waiters.flatMap { it.suspendOn }.distinct().filter { inv.resultOf(it) == null }
        if (pending.isEmpty()) return IDLE_MS
        val onlyLateTimers = pending.all { i -> inv.timerWakeUp(i)?.let { it > deadline } ?: false }
        if (now >= deadline || onlyLateTimers) {
            inv.suspendInvocation(pending)
            return 0
        }
        return deadline - now
    }
}
