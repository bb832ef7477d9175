// The state machine of one invocation attempt (docs/protocol.md §4, §5).
//
// Threads: `run()` is called on the HTTP exchange thread; it reads START and the journal, starts
// the attempt's [InvocationLoop] on a pool thread and then reads frames (ACK, COMPLETION, CANCEL)
// until the request body ends. Every coroutine of the handler runs on the loop, so commands are
// matched against the journal (replaying) or journaled (processing) on that one thread, in program
// order: a command's index is fixed when it is issued. `run` blocks execute on the pool and hand
// their results back to the loop; entries are sent strictly in index order, so a `run` that
// finishes early waits in [outgoing] until every entry before it is sent.
package dev.kiln.sdk

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.CoroutineName
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.asContextElement
import kotlinx.coroutines.cancel
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import java.io.IOException
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.ConcurrentLinkedQueue
import java.util.concurrent.atomic.AtomicBoolean
import kotlin.coroutines.EmptyCoroutineContext
import kotlin.random.Random

/** The name of the `run` block the current coroutine executes; set per coroutine, null outside blocks. */
internal val currentRunBlock = ThreadLocal<String?>()

internal class Invocation(
    internal val handler: HandlerDefinition,
    private val source: FrameSource,
    private val sink: FrameSink,
    /** The pool: the loop's thread, `run` blocks, and coroutines left over after the attempt. */
    private val dispatcher: CoroutineDispatcher,
    /** Wall clock in Unix ms: timers' wake-up times and suspension deadlines. */
    internal val clock: () -> Long = System::currentTimeMillis,
) {
    internal companion object {
        /** `suspend_after_ms` when START has none. */
        const val DEFAULT_SUSPEND_AFTER_MS = 60_000L
    }

    // Set once from START, before the handler coroutine starts.
    internal lateinit var start: StartMessage
    private lateinit var journal: List<JournalEntry>
    private var knownEntries = 0
    internal var suspendAfterMs = DEFAULT_SUSPEND_AFTER_MS

    internal val loop = InvocationLoop(dispatcher)
    internal val awaits = Awaits(this)

    /** The context of this attempt (one per attempt). */
    internal val context: InvocationContext by lazy { InvocationContext(this, writable = !handler.shared) }

    // Loop-thread state ---------------------------------------------------------------------------

    /**
     * Index of the next command: replaying while below [knownEntries]. Written on the loop thread
     * only; volatile because `ctx.logger` reads [replaying] on any thread (a `run` block's).
     */
    @Volatile internal var nextIndex = 1
    internal val state = HashMap<String, ByteArray>()
    internal var random: Random? = null

    /** Encoded entries that wait for every entry before them to be sent. */
    private val outgoing = HashMap<Int, Pair<String, ByteArray>>()
    private var nextToSend = 1
    private var outputIndex = -1

    /** Results of `run` blocks of this attempt (visible once ACKed), how many still execute, the last one's index. */
    private val runResults = HashMap<Int, EntryResult>()
    private val runIndices = HashSet<Int>()
    private var runsExecuting = 0
    private var lastRunIndex = -1

    // Shared with other threads -------------------------------------------------------------------

    /** Wake-up times (Unix ms) of this invocation's `sleep` entries, by index. */
    private val timerWakeUps = ConcurrentHashMap<Int, Long>()

    /** Finished `run` blocks, handed from the pool to the loop. */
    private val doneRuns = ConcurrentLinkedQueue<RunDone>()

    @Volatile private var ackedIndex = -1L

    /** Guards [completions] and the cancellation flags (touched by the reader thread). */
    private val eventLock = Any()
    private val completions = HashMap<Int, EntryResult>()

    /** A cancellation was requested and has not surfaced in user code yet. */
    private var cancelRequested = false

    /** A cancellation surfaced (or will, when the replay reaches its `cancelled` entry): later CANCELs are ignored. */
    private var cancelSurfaced = false

    /** Set when END, ERROR or SUSPEND was sent (or decided), or the stream broke: nothing more is sent. */
    private val finished = AtomicBoolean(false)

    @Volatile private var streamEnded = false

    @Volatile private var job: Job? = null

    @Volatile private var blocks: CoroutineScope? = null

    internal val isOver: Boolean get() = finished.get() || streamEnded

    /** The endpoint's JSON, for every payload and state value of this invocation. */
    internal val json: Json get() = handler.json

    /**
     * `invocation {id} ({service}/{handler}) attempt {epoch}`: the prefix of the SDK's log lines
     * about this attempt (before START: the handler only).
     */
    private val tag: String
        get() = if (::start.isInitialized) {
            "invocation ${start.id} (${handler.qualifiedName}) attempt ${start.epoch}"
        } else {
            "invocation attempt of ${handler.qualifiedName}"
        }

    /** Journal entries known at attempt start are still being consumed: user code re-executes what an earlier attempt ran. */
    internal val replaying: Boolean get() = nextIndex < knownEntries

    /** Runs the attempt: blocks until the request stream ends (or breaks). */
    fun run() {
        try {
            if (!readStartAndJournal()) return
        } catch (e: ProtocolException) {
            fail(ErrorCode.PROTOCOL_VIOLATION, "protocol violation: ${e.message}", retryable = false)
            return
        } catch (e: IOException) {
            return // the runtime went away before the attempt began
        }
        invocationLog.debug(
            "{} started, {} journal entries known{}",
            tag,
            knownEntries,
            if (knownEntries > 1) " (replaying)" else "",
        )
        val name = CoroutineName("kiln ${handler.qualifiedName} ${start.id}")
        val mdc = MdcElement(
            mapOf(
                MdcKeys.INVOCATION_ID to start.id,
                MdcKeys.SERVICE to handler.serviceName,
                MdcKeys.HANDLER to handler.name,
            ),
        )
        blocks = CoroutineScope(SupervisorJob() + dispatcher + name + mdc)
        job = CoroutineScope(loop + name + mdc).launch { runHandler() }
        dispatcher.dispatch(
            EmptyCoroutineContext,
            Runnable { loop.run(done = { job!!.isCompleted && isOver }, idle = ::onIdle) },
        )
        readLoop()
    }

    /** False if the stream ended before the journal was complete. */
    private fun readStartAndJournal(): Boolean {
        val first = source.next() ?: return false
        if (first.type != FrameType.START) throw ProtocolException("expected START, got ${FrameType.name(first.type)}")
        start = StartMessage.decode(first.body)
        if (start.service != handler.serviceName || start.handler != handler.name) {
            throw ProtocolException(
                "START names ${start.service}/${start.handler} but this request is for ${handler.qualifiedName}",
            )
        }
        knownEntries = start.knownEntries
        if (knownEntries < 1) {
            throw ProtocolException("known_entries is $knownEntries; the journal must hold at least the input")
        }
        val entries = ArrayList<JournalEntry>(knownEntries)
        val early = ArrayList<Frame>()
        while (entries.size < knownEntries) {
            val f = source.next() ?: return false
            if (f.type == FrameType.COMPLETION || f.type == FrameType.CANCEL || f.type == FrameType.ACK) {
                early.add(f) // may race ahead of the journal; applied once it is read
                continue
            }
            val i = entries.size
            if (f.type != FrameType.ENTRY) {
                throw ProtocolException("expected journal ENTRY $i of $knownEntries, got ${FrameType.name(f.type)}")
            }
            val e = JournalEntry.decode(f.body)
            if (e.index != i) throw ProtocolException("journal entry $i arrived with index ${e.index}")
            entries.add(e)
        }
        if (entries[0].kind != EntryKind.INPUT) {
            throw ProtocolException("journal entry 0 is '${entries[0].kind}', expected 'input'")
        }
        journal = entries
        state.putAll(start.state)
        ackedIndex = (knownEntries - 1).toLong()
        nextToSend = knownEntries
        suspendAfterMs = start.suspendAfterMs ?: DEFAULT_SUSPEND_AFTER_MS
        for (e in entries) if (e.kind == EntryKind.SLEEP && e.wakeUpAtMs != null) timerWakeUps[e.index] = e.wakeUpAtMs
        val journaledCancel = entries.any { it.kind == EntryKind.CANCELLED }
        cancelSurfaced = journaledCancel
        cancelRequested = start.cancelled && !journaledCancel
        early.forEach { onFrame(it) }
        return true
    }

    private fun readLoop() {
        try {
            while (true) {
                val f = source.next() ?: break
                onFrame(f)
            }
        } catch (e: ProtocolException) {
            fail(ErrorCode.PROTOCOL_VIOLATION, "protocol violation: ${e.message}", retryable = false)
        } catch (_: IOException) {
            // the runtime aborted the stream: same as an unexpected end
        }
        if (!finished.get()) invocationLog.debug("{}: the request stream ended before the attempt finished", tag)
        streamEnded = true
        blocks?.cancel()
        job?.cancel(CancellationException("request stream ended")) // a no-op once the handler is done
        loop.signal()
    }

    private fun onFrame(f: Frame) {
        when (f.type) {
            FrameType.ACK -> {
                val index = Bodies.ackIndex(f.body)
                if (index > ackedIndex) ackedIndex = index // only this thread writes it
            }
            FrameType.COMPLETION -> {
                val (index, result) = Bodies.decodeCompletion(f.body)
                synchronized(eventLock) { completions[index] = result }
            }
            FrameType.CANCEL -> synchronized(eventLock) { if (!cancelSurfaced) cancelRequested = true }
            else -> return // nothing else is meant for the SDK
        }
        loop.signal()
    }

    private suspend fun runHandler() {
        try {
            val output = handler.invoke(context, journal[0].value ?: ByteArray(0))
            complete(output, null)
        } catch (e: InvocationAbortedError) {
            // the ERROR or SUSPEND frame is already sent
        } catch (e: TerminalException) {
            invocationLog.debug("{}: handler failed terminally with code {}: {}", tag, e.code, e.message)
            try {
                complete(null, Failure(e.code, e.message ?: ""))
            } catch (_: InvocationAbortedError) {}
        } catch (e: CancellationException) {
            if (!isOver) fail(ErrorCode.RETRYABLE, describe(e), retryable = true, cause = e)
        } catch (e: StreamClosedException) {
            finished.set(true)
        } catch (e: Throwable) {
            fail(ErrorCode.RETRYABLE, describe(e), retryable = true, cause = e)
        }
    }

    private fun describe(e: Throwable): String = "${e.javaClass.simpleName.ifEmpty { e.javaClass.name }}: ${e.message}"

    /** Journals the `output` entry (unless replayed); END follows once every entry before it is sent. */
    private fun complete(value: ByteArray?, failure: Failure?) {
        if (finished.get()) return
        if (matchJournal(EntryKind.OUTPUT, null) != null) {
            end()
            return
        }
        outputIndex = nextIndex
        append(JournalEntry(nextIndex, EntryKind.OUTPUT, value = value, failure = failure))
    }

    private fun end() {
        if (!finished.compareAndSet(false, true)) return
        invocationLog.debug("{} ended: output journaled", tag)
        try {
            sink.send(FrameType.END, Bodies.EMPTY_MAP)
        } catch (_: IOException) {}
        loop.signal() // the loop may stop once the handler's coroutine is done
    }

    /**
     * Sends ERROR (once per attempt), ends the attempt and stops the handler's coroutines and
     * blocks. The stack trace of [cause] (user code's exception) goes with it, for the runtime's
     * `lastError`.
     */
    internal fun fail(code: Int, message: String, retryable: Boolean, index: Int? = null, cause: Throwable? = null) {
        if (!finished.compareAndSet(false, true)) return
        if (retryable) {
            invocationLog.warn("{} failed, to be retried: {}", tag, message, cause)
        } else {
            invocationLog.warn("{} failed for good (code {}): {}", tag, code, message, cause)
        }
        try {
            sink.send(FrameType.ERROR, Bodies.error(code, message, retryable, index, cause?.stackTraceToString()))
        } catch (_: IOException) {}
        stop(message)
    }

    /** [fail] and stop the calling user code. */
    private fun abort(code: Int, message: String, retryable: Boolean, index: Int? = null): Nothing {
        fail(code, message, retryable, index)
        throw InvocationAbortedError(message)
    }

    /** Sends SUSPEND, ends the attempt and stops user code quietly (on the loop thread). */
    internal fun suspendInvocation(waitingOn: List<Int>) {
        if (!finished.compareAndSet(false, true)) return
        invocationLog.debug("{} suspended, waiting on entries {}", tag, waitingOn)
        try {
            sink.send(FrameType.SUSPEND, Bodies.suspend(waitingOn))
        } catch (_: IOException) {}
        stop("invocation suspended, waiting on entries $waitingOn")
    }

    private fun stop(message: String) {
        blocks?.cancel()
        if (loop.onLoopThread) awaits.stopAll(message)
        job?.cancel(CancellationException(message))
        loop.signal()
    }

    /** A replayed decision differs from what the handler does now (called by [Awaits]). */
    internal fun mismatch(index: Int, detail: String) =
        fail(ErrorCode.JOURNAL_MISMATCH, "journal mismatch at index $index: $detail", retryable = false, index = index)

    // Command issuing, on the loop thread ---------------------------------------------------------

    /**
     * Stops user code if the attempt is over; refuses, with a terminal error naming the fix, a
     * command issued inside a `run` block, off the handler's coroutines, or after the handler
     * returned. [op] names the command for the message.
     */
    internal fun checkUsable(op: String) {
        if (finished.get()) throw InvocationAbortedError("invocation attempt already ended")
        if (streamEnded) throw CancellationException("request stream ended")
        val block = currentRunBlock.get()
        if (block != null) {
            refuse(
                "ctx.$op was called inside the run block '$block' of ${handler.qualifiedName}. A run block must " +
                    "not use the context: its entry is journaled after it ends, and a replay does not run it. Issue " +
                    "the command before or after the block; to run side effects in parallel, start each with " +
                    "ctx.runAsync and await the futures (awaitAll).",
            )
        }
        if (!loop.onLoopThread) {
            refuse(
                "ctx.$op was called on thread '${Thread.currentThread().name}', outside the coroutines of " +
                    "${handler.qualifiedName}. Issue context commands from the handler's coroutine or from " +
                    "coroutines it starts without a dispatcher (async/launch in coroutineScope), so that they are " +
                    "journaled in a deterministic order; not from withContext(Dispatchers.…), " +
                    "launch(Dispatchers.…), GlobalScope or other threads. Put blocking work in ctx.run/ctx.runAsync.",
            )
        }
        if (outputIndex >= 0) {
            refuse(
                "ctx.$op was called after ${handler.qualifiedName} returned, from a coroutine that outlived it. " +
                    "Wait for every coroutine the handler starts (e.g. start them in coroutineScope { … }).",
            )
        }
    }

    private fun refuse(message: String): Nothing = abort(ErrorCode.CONTEXT_MISUSE, message, retryable = false)

    /**
     * While replaying, checks the command against `journal[nextIndex]` (kind, `name` where the
     * kind has one, `service`/`handler` for calls and sends), advances and returns the journaled
     * entry; a mismatch ends the attempt with ERROR 570. While processing, returns `null`.
     */
    internal fun matchJournal(kind: String, name: String?, target: String? = null): JournalEntry? {
        val i = nextIndex
        if (i >= knownEntries) return null
        val e = journal[i]
        val mismatch = e.kind != kind ||
            (kind in EntryKind.NAMED && e.name != name) ||
            (kind in EntryKind.TARGETED && JournalEntry.target(e.service, e.handler) != target)
        if (mismatch) {
            abort(
                ErrorCode.JOURNAL_MISMATCH,
                "journal mismatch at index $i: journal has ${e.describe()}, " +
                    "handler issued ${JournalEntry.describe(kind, name ?: target)}",
                retryable = false,
                index = i,
            )
        }
        nextIndex++
        return e
    }

    internal fun journalAt(index: Int): JournalEntry? = if (index < knownEntries) journal[index] else null

    /** Journals [entry] (whose index must be [nextIndex]) and advances; no waiting for an ACK. */
    internal fun append(entry: JournalEntry): Int {
        if (!place(entry)) throw InvocationAbortedError("invocation attempt already ended")
        if (finished.get() && entry.index != outputIndex) throw CancellationException("response stream closed")
        return entry.index
    }

    /** [append] for a decision taken by [Awaits] outside user code: never throws. */
    internal fun appendDecision(entry: JournalEntry) {
        place(entry)
    }

    private fun place(entry: JournalEntry): Boolean {
        check(entry.index == nextIndex)
        val body = encoded(entry) ?: return false
        nextIndex++
        outgoing[entry.index] = entry.kind to body
        flush()
        return true
    }

    /** The entry's body, or null (and the attempt failed) when it exceeds the frame limit. */
    private fun encoded(entry: JournalEntry): ByteArray? {
        val body = entry.encode()
        if (body.size <= FrameCodec.BODY_BYTES_MAX) return body
        fail(
            ErrorCode.PROTOCOL_VIOLATION,
            "entry ${entry.index} (${entry.describe()}) of ${handler.qualifiedName} is ${body.size} bytes, " +
                "more than the frame limit of ${FrameCodec.BODY_BYTES_MAX} bytes",
            retryable = false,
            index = entry.index,
        )
        return null
    }

    /** Sends every entry whose predecessors are all sent; END after the output. */
    private fun flush() {
        while (!finished.get()) {
            val (kind, body) = outgoing.remove(nextToSend) ?: return
            try {
                // Entries that need no ACK and no action from the runtime (state access) ride with the
                // next flushed frame, or with END after the output (the runtime commits them together
                // anyway): one packet and one chunk instead of several.
                sink.send(FrameType.ENTRY, body, flush = kind in EntryKind.FLUSHED)
            } catch (e: IOException) {
                finished.set(true)
                stop("response stream closed: ${e.message}")
                return
            }
            nextToSend++
            if (kind == EntryKind.OUTPUT) end()
        }
    }

    internal fun checkWritable(writable: Boolean, what: String) {
        if (!writable) {
            abort(
                ErrorCode.STATE_WRITE_FROM_SHARED,
                "shared handler ${handler.qualifiedName} cannot write state ('$what'): " +
                    "state writes are only allowed in exclusive handlers",
                retryable = false,
            )
        }
    }

    internal fun <T> decode(serializer: KSerializer<T>, bytes: ByteArray): T =
        json.decodeFromString(serializer, bytes.decodeToString())

    internal fun <T> encode(serializer: KSerializer<T>, value: T): ByteArray =
        json.encodeToString(serializer, value).encodeToByteArray()

    internal fun addTimer(index: Int, wakeUpAtMs: Long) {
        timerWakeUps[index] = wakeUpAtMs
    }

    internal fun timerWakeUp(index: Int): Long? = timerWakeUps[index]

    // Run blocks ------------------------------------------------------------------------------------

    private class RunDone(
        val index: Int,
        val name: String,
        val value: ByteArray?,
        val failure: Failure?,
        /** Anything but a [TerminalException]: the attempt fails (retryable). */
        val error: Throwable?,
    )

    /**
     * Starts the `run` step [name]: its index is taken now, in program order. Replaying a
     * journaled step returns its recorded result; otherwise [block] executes on the pool (with
     * [currentRunBlock] set for its coroutine) while the handler goes on.
     */
    internal fun <T> startRun(
        op: String,
        name: String,
        policy: RetryPolicy?,
        serializer: KSerializer<T>,
        block: suspend () -> T,
    ): FutureImpl<T> {
        checkUsable(op)
        val decodeValue: (ByteArray) -> T = { decode(serializer, it) }
        matchJournal(EntryKind.RUN, name)?.let { return FutureImpl(this, it.index, decodeValue) }
        val index = nextIndex++
        runIndices.add(index)
        runsExecuting++
        blocks!!.launch(currentRunBlock.asContextElement(name)) {
            val done = try {
                runWithRetries(policy, block).fold(
                    onSuccess = { RunDone(index, name, encode(serializer, it), null, null) },
                    onFailure = {
                        val t = it as TerminalException
                        RunDone(index, name, null, Failure(t.code, t.message ?: ""), null)
                    },
                )
            } catch (e: Throwable) {
                RunDone(index, name, null, null, e)
            }
            doneRuns.add(done)
            loop.signal()
        }
        return FutureImpl(this, index, decodeValue)
    }

    /**
     * Runs [block]: its value or [TerminalException] as a result; any other exception is
     * rethrown without a policy, retried with back-off with one (and a terminal 500 once the
     * attempts are exhausted).
     */
    private suspend fun <T> runWithRetries(policy: RetryPolicy?, block: suspend () -> T): Result<T> {
        var attempt = 1
        var backoffMs = policy?.initialInterval?.inWholeMilliseconds ?: 0
        while (true) {
            try {
                return Result.success(block())
            } catch (e: TerminalException) {
                return Result.failure(e)
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                if (policy == null) throw e
                if (attempt >= policy.maxAttempts) {
                    return Result.failure(TerminalException(ErrorCode.RETRYABLE, e.message ?: e.javaClass.name))
                }
                val maxMs = policy.maxInterval.inWholeMilliseconds
                delay(minOf(backoffMs, maxMs))
                backoffMs = minOf((backoffMs * policy.factor).toLong().coerceAtLeast(backoffMs), maxMs)
                attempt++
            }
        }
    }

    /** Idle loop: journal finished blocks (in index order, via [outgoing]), then resume an await. */
    private fun onIdle(): Long {
        while (true) {
            val d = doneRuns.poll() ?: break
            runsExecuting--
            if (finished.get()) continue
            if (d.error != null) {
                fail(
                    ErrorCode.RETRYABLE,
                    "run '${d.name}' failed: ${describe(d.error)}",
                    retryable = true,
                    cause = d.error,
                )
                continue
            }
            val entry = JournalEntry(d.index, EntryKind.RUN, d.name, value = d.value, failure = d.failure)
            val body = encoded(entry) ?: continue
            runResults[d.index] = EntryResult(d.value, d.failure)
            lastRunIndex = maxOf(lastRunIndex, d.index)
            outgoing[d.index] = EntryKind.RUN to body
            flush()
        }
        return awaits.onIdle()
    }

    /** A block executes or a `run` entry is not ACKed yet: results are on their way locally, no suspending. */
    internal fun localWorkPending(): Boolean = runsExecuting > 0 || lastRunIndex > ackedIndex

    // Results and cancellation ------------------------------------------------------------------------

    /** The result of entry [index] if known: replayed, an ACKed `run` of this attempt, or a COMPLETION. */
    internal fun resultOf(index: Int): EntryResult? {
        if (index < knownEntries) {
            val e = journal[index]
            if (e.kind == EntryKind.RUN) return EntryResult(e.value, e.failure)
            e.result?.let { return it }
        }
        runResults[index]?.let { return if (ackedIndex >= index) it else null }
        return synchronized(eventLock) { completions[index] }
    }

    /** Entry [index] is a `run` (journaled, or started in this attempt). */
    internal fun isRun(index: Int): Boolean = index in runIndices || journalAt(index)?.kind == EntryKind.RUN

    /** A cancellation was requested and has not surfaced yet (processing only). */
    internal fun cancelPending(): Boolean = synchronized(eventLock) { cancelRequested }

    internal fun markCancelSurfaced() {
        synchronized(eventLock) {
            cancelRequested = false
            cancelSurfaced = true
        }
    }
}
