// The state machine of one invocation attempt (docs/protocol.md §4).
//
// Threads: `run()` is called on the HTTP exchange thread; it reads START and the journal, launches
// the handler coroutine on [dispatcher] and then loops reading frames (ACK, COMPLETION, CANCEL)
// until the request body ends. The handler coroutine issues commands through [InvocationContext]; each command is matched
// against the journal while replaying, or journaled (sent as an ENTRY frame) while processing.
package dev.kiln.sdk

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.CoroutineName
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeoutOrNull
import kotlinx.serialization.KSerializer
import java.io.IOException
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicBoolean
import kotlin.random.Random
import kotlin.time.Duration

internal class Invocation(
    private val handler: HandlerDefinition,
    private val source: FrameSource,
    private val sink: FrameSink,
    private val dispatcher: CoroutineDispatcher,
    /** Wall clock in Unix ms: timers' wake-up times and suspension deadlines. */
    private val clock: () -> Long = System::currentTimeMillis,
) {
    internal companion object {
        /** `suspend_after_ms` when START has none. */
        const val DEFAULT_SUSPEND_AFTER_MS = 60_000L
    }

    // Set once from START, before the handler coroutine starts.
    private lateinit var start: StartMessage
    private lateinit var journal: List<JournalEntry>
    private var knownEntries = 0
    private var suspendAfterMs = DEFAULT_SUSPEND_AFTER_MS

    /** Guards command issuing: [nextIndex], [state] and the order of ENTRY frames. */
    private val commandLock = Any()
    private var nextIndex = 1
    private val state = HashMap<String, ByteArray>()
    private var insideRun = false
    private var random: Random? = null

    /** Wake-up times (Unix ms) of this invocation's `sleep` entries, by index. */
    private val timerWakeUps = ConcurrentHashMap<Int, Long>()

    /** Guards ACK bookkeeping (touched by the reader thread). */
    private val ackLock = Any()
    private var ackedIndex = -1L
    private val ackWaiters = ArrayList<Pair<Int, CompletableDeferred<Unit>>>()

    /**
     * Guards [completions] and the cancellation flags (touched by the reader thread). Lock order:
     * [commandLock] before [eventLock], never the other way round.
     */
    private val eventLock = Any()
    private val completions = HashMap<Int, EntryResult>()

    /** A cancellation was requested and has not surfaced in user code yet. */
    private var cancelRequested = false

    /** A cancellation surfaced (or will, when the replay reaches its `cancelled` entry): later CANCELs are ignored. */
    private var cancelSurfaced = false

    /** Bumped on every event an await may be waiting for (COMPLETION, CANCEL). */
    private val events = MutableStateFlow(0L)

    /** Set when END, ERROR or SUSPEND was sent (or decided), or the stream broke: nothing more is sent. */
    private val finished = AtomicBoolean(false)

    @Volatile private var streamEnded = false
    private var job: Job? = null

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
        job = CoroutineScope(dispatcher + CoroutineName("kiln ${handler.qualifiedName} ${start.id}")).launch {
            runHandler()
        }
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
        streamEnded = true
        job?.cancel(CancellationException("request stream ended")) // a no-op once the handler is done
    }

    private fun onFrame(f: Frame) {
        when (f.type) {
            FrameType.ACK -> onAck(Bodies.ackIndex(f.body))
            FrameType.COMPLETION -> {
                val (index, result) = Bodies.decodeCompletion(f.body)
                synchronized(eventLock) { completions[index] = result }
                events.update { it + 1 }
            }
            FrameType.CANCEL -> {
                synchronized(eventLock) { if (!cancelSurfaced) cancelRequested = true }
                events.update { it + 1 }
            }
            else -> {} // nothing else is meant for the SDK
        }
    }

    private fun onAck(index: Long) {
        val ready = ArrayList<CompletableDeferred<Unit>>()
        synchronized(ackLock) {
            if (index > ackedIndex) ackedIndex = index
            val it = ackWaiters.iterator()
            while (it.hasNext()) {
                val (i, d) = it.next()
                if (i <= ackedIndex) {
                    ready.add(d)
                    it.remove()
                }
            }
        }
        ready.forEach { it.complete(Unit) }
    }

    private suspend fun runHandler() {
        val ctx = context
        try {
            val output = handler.invoke(ctx, journal[0].value ?: ByteArray(0))
            complete(output, null)
        } catch (e: InvocationAbortedError) {
            // the ERROR or SUSPEND frame is already sent
        } catch (e: TerminalException) {
            try {
                complete(null, Failure(e.code, e.message ?: ""))
            } catch (_: InvocationAbortedError) {}
        } catch (e: CancellationException) {
            if (!streamEnded && !finished.get()) fail(ErrorCode.RETRYABLE, describe(e), retryable = true)
        } catch (e: StreamClosedException) {
            finished.set(true)
        } catch (e: Throwable) {
            fail(ErrorCode.RETRYABLE, describe(e), retryable = true)
        }
    }

    private fun describe(e: Throwable): String = "${e.javaClass.simpleName.ifEmpty { e.javaClass.name }}: ${e.message}"

    /** Journals the `output` entry (unless replayed) and sends END. */
    private fun complete(value: ByteArray?, failure: Failure?) {
        synchronized(commandLock) {
            if (finished.get()) return
            val replayed = matchJournal(EntryKind.OUTPUT, null)
            if (replayed == null) append(JournalEntry(nextIndex, EntryKind.OUTPUT, value = value, failure = failure))
            if (!finished.compareAndSet(false, true)) return
            try {
                sink.send(FrameType.END, Bodies.EMPTY_MAP)
            } catch (_: IOException) {}
        }
    }

    /** Sends ERROR (once per attempt) and marks the attempt finished. */
    private fun fail(code: Int, message: String, retryable: Boolean, index: Int? = null) {
        if (!finished.compareAndSet(false, true)) return
        try {
            sink.send(FrameType.ERROR, Bodies.error(code, message, retryable, index))
        } catch (_: IOException) {}
    }

    /** [fail] and stop user code. */
    private fun abort(code: Int, message: String, retryable: Boolean, index: Int? = null): Nothing {
        fail(code, message, retryable, index)
        throw InvocationAbortedError(message)
    }

    // Command issuing; callers hold commandLock --------------------------------------------------

    /** Stops user code if the attempt is over; rejects commands issued inside a `run` block. */
    private fun checkUsable() {
        if (finished.get()) throw InvocationAbortedError("invocation attempt already ended")
        if (streamEnded) throw CancellationException("request stream ended")
        check(!insideRun) { "context commands cannot be used inside a run block of ${handler.qualifiedName}" }
    }

    /**
     * While replaying, checks the command against `journal[nextIndex]` (kind, `name` where the
     * kind has one, `service`/`handler` for calls and sends), advances and returns the journaled
     * entry; a mismatch ends the attempt with ERROR 570. While processing, returns `null`.
     */
    private fun matchJournal(kind: String, name: String?, target: String? = null): JournalEntry? {
        checkUsable()
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

    /** Sends [entry] (whose index must be [nextIndex]) and advances; no waiting for an ACK. */
    private fun append(entry: JournalEntry): Int {
        check(entry.index == nextIndex)
        val body = entry.encode()
        if (body.size > FrameCodec.BODY_BYTES_MAX) {
            abort(
                ErrorCode.PROTOCOL_VIOLATION,
                "entry ${entry.index} (${entry.describe()}) of ${handler.qualifiedName} is ${body.size} bytes, " +
                    "more than the frame limit of ${FrameCodec.BODY_BYTES_MAX} bytes",
                retryable = false,
                index = entry.index,
            )
        }
        try {
            // Entries that need no ACK and no action from the runtime (state access) ride with the
            // next flushed frame, or with END after the output (the runtime commits them together
            // anyway): one packet and one chunk instead of several.
            sink.send(FrameType.ENTRY, body, flush = entry.kind in EntryKind.FLUSHED)
        } catch (e: IOException) {
            finished.set(true)
            throw CancellationException("response stream closed: ${e.message}")
        }
        nextIndex++
        return entry.index
    }

    private fun checkWritable(writable: Boolean, what: String) {
        if (!writable) {
            abort(
                ErrorCode.STATE_WRITE_FROM_SHARED,
                "shared handler ${handler.qualifiedName} cannot write state ('$what'): " +
                    "state writes are only allowed in exclusive handlers",
                retryable = false,
            )
        }
    }

    private fun <T> decode(serializer: KSerializer<T>, bytes: ByteArray): T =
        KilnJson.decodeFromString(serializer, bytes.decodeToString())

    private fun <T> encode(serializer: KSerializer<T>, value: T): ByteArray =
        KilnJson.encodeToString(serializer, value).encodeToByteArray()

    // Awaiting completable entries (protocol §5) ---------------------------------------------------

    /** The result of entry [index] if known: replayed with the journal or delivered by a COMPLETION. */
    private fun resultOf(index: Int): EntryResult? {
        if (index < knownEntries) journal[index].result?.let { return it }
        return synchronized(eventLock) { completions[index] }
    }

    private fun pending(indices: List<Int>): List<Int> = indices.filter { resultOf(it) == null }.distinct()

    private fun checkOwn(f: FutureImpl<*>) {
        require(f.invocation === this) { "$f belongs to another invocation" }
    }

    /**
     * At an await while replaying (caller holds [commandLock]): a journaled `cancelled` at the next
     * index surfaces here, whether or not the awaited future has completed since.
     */
    private fun surfaceReplayedCancellation() {
        if (nextIndex < knownEntries && journal[nextIndex].kind == EntryKind.CANCELLED) {
            nextIndex++
            synchronized(eventLock) {
                cancelRequested = false
                cancelSurfaced = true
            }
            throw TerminalException(ErrorCode.CANCELLED, CANCELLED_MESSAGE)
        }
    }

    /** Journals `cancelled` and throws the cancellation into user code. */
    private fun surfaceCancellation(): Nothing {
        synchronized(commandLock) {
            checkUsable()
            append(JournalEntry(nextIndex, EntryKind.CANCELLED))
        }
        synchronized(eventLock) {
            cancelRequested = false
            cancelSurfaced = true
        }
        throw TerminalException(ErrorCode.CANCELLED, CANCELLED_MESSAGE)
    }

    /**
     * Waits until [ready] holds. When processing (not replaying) and [cancellable], a pending
     * cancellation is journaled and thrown instead. Suspends the invocation on the still pending
     * indices of [waitingOn] when they are all timers firing after the suspension deadline (at
     * once), or when nothing arrived within `suspend_after_ms`.
     */
    private suspend fun waitUntil(waitingOn: List<Int>, cancellable: Boolean, ready: () -> Boolean) {
        val processing = synchronized(commandLock) {
            checkUsable()
            nextIndex >= knownEntries
        }
        val deadline = clock() + suspendAfterMs
        val cancelPending = { cancellable && processing && synchronized(eventLock) { cancelRequested } }
        while (true) {
            if (ready()) return
            if (cancelPending()) surfaceCancellation()
            if (streamEnded) throw CancellationException("request stream ended")
            val now = clock()
            val pending = pending(waitingOn)
            if (pending.isEmpty()) continue // completed meanwhile: ready() holds now
            val onlyLateTimers = pending.all { i -> timerWakeUps[i]?.let { it > deadline } ?: false }
            if (now >= deadline || onlyLateTimers) suspendInvocation(pending)
            withTimeoutOrNull(deadline - now) { events.first { ready() || cancelPending() || streamEnded } }
        }
    }

    /** Sends SUSPEND, ends the attempt and stops user code quietly. */
    private fun suspendInvocation(waitingOn: List<Int>): Nothing {
        synchronized(commandLock) {
            if (!finished.compareAndSet(false, true)) throw InvocationAbortedError("invocation attempt already ended")
            try {
                sink.send(FrameType.SUSPEND, Bodies.suspend(waitingOn))
            } catch (_: IOException) {}
        }
        job?.cancel(CancellationException("invocation suspended"))
        throw InvocationAbortedError("invocation suspended, waiting on entries $waitingOn")
    }

    /** A user-visible await of [f]; suspending on [waitingOn] (which contains `f.index`). */
    internal suspend fun <T> awaitFuture(f: FutureImpl<T>, waitingOn: List<Int>): T {
        checkOwn(f)
        synchronized(commandLock) {
            checkUsable()
            surfaceReplayedCancellation()
        }
        resultOf(f.index)?.let { return f.decode(it) }
        waitUntil(waitingOn, cancellable = true) { resultOf(f.index) != null }
        return f.decode(resultOf(f.index)!!)
    }

    /** Await of an entry known to be completed already (a select's winner) or completed "at once": never cancels. */
    private suspend fun awaitUncancellable(index: Int): EntryResult {
        resultOf(index)?.let { return it }
        waitUntil(listOf(index), cancellable = false) { resultOf(index) != null }
        return resultOf(index)!!
    }

    internal suspend fun awaitAll(futures: List<FutureImpl<*>>): List<Any?> {
        futures.forEach { checkOwn(it) }
        val indices = futures.map { it.index }
        return futures.mapIndexed { i, f -> awaitFuture(f, indices.subList(i, indices.size)) }
    }

    /** Waits for the first completed of [futures] and journals (or replays) the choice; returns its position. */
    internal suspend fun awaitAny(futures: List<FutureImpl<*>>): Int {
        require(futures.isNotEmpty()) { "awaitAny needs at least one future" }
        futures.forEach { checkOwn(it) }
        val indices = futures.map { it.index }
        synchronized(commandLock) {
            checkUsable()
            surfaceReplayedCancellation()
            val replayed = matchJournal(EntryKind.SELECT, null)
            if (replayed != null) {
                val p = indices.indexOf(replayed.winner)
                if (p < 0) {
                    abort(
                        ErrorCode.JOURNAL_MISMATCH,
                        "journal mismatch at index ${replayed.index}: " +
                            "journal has select of entry ${replayed.winner}, handler awaits any of entries $indices",
                        retryable = false,
                        index = replayed.index,
                    )
                }
                return p
            }
        }
        waitUntil(indices, cancellable = true) { indices.any { resultOf(it) != null } }
        val p = indices.indexOfFirst { resultOf(it) != null }
        synchronized(commandLock) {
            checkUsable()
            append(JournalEntry(nextIndex, EntryKind.SELECT, winner = indices[p]))
        }
        return p
    }

    internal suspend fun <T> awaitFirst(futures: List<FutureImpl<out T>>): T {
        val f = futures[awaitAny(futures)]
        return f.decode(awaitUncancellable(f.index))
    }

    internal suspend fun <T> awaitWithTimeout(f: FutureImpl<T>, timeout: Duration): T {
        checkOwn(f)
        val timer = context.timer(timeout) as FutureImpl<*>
        if (awaitAny(listOf(f, timer)) == 1) {
            throw TerminalException(ErrorCode.TIMEOUT, "timed out after $timeout waiting for entry ${f.index}")
        }
        return f.decode(awaitUncancellable(f.index))
    }

    /** The context of this attempt (one per attempt). */
    private val context: InvocationContext by lazy { InvocationContext(writable = !handler.shared) }

    /** The one context implementation; [writable] is false for shared handlers. */
    internal inner class InvocationContext(private val writable: Boolean) : WorkflowContext {
        override val invocationId: String get() = start.id
        override val key: String get() = start.key

        override fun random(): Random = synchronized(commandLock) {
            random ?: Random(start.randomSeed).also { random = it }
        }

        override suspend fun <T> run(name: String, serializer: KSerializer<T>, block: suspend () -> T): T =
            runStep(name, null, serializer, block)

        override suspend fun <T> run(
            name: String,
            retryPolicy: RetryPolicy,
            serializer: KSerializer<T>,
            block: suspend () -> T,
        ): T = runStep(name, retryPolicy, serializer, block)

        private suspend fun <T> runStep(
            name: String,
            policy: RetryPolicy?,
            serializer: KSerializer<T>,
            block: suspend () -> T,
        ): T {
            val replayed = synchronized(commandLock) { matchJournal(EntryKind.RUN, name) }
            if (replayed != null) {
                replayed.failure?.let { throw TerminalException(it.code, it.message) }
                return decode(serializer, replayed.value ?: ByteArray(0))
            }

            synchronized(commandLock) { insideRun = true }
            val outcome: Result<T> = try {
                runWithRetries(policy, block)
            } finally {
                synchronized(commandLock) { insideRun = false }
            }

            val index = synchronized(commandLock) {
                checkUsable()
                val entry = outcome.fold(
                    onSuccess = { JournalEntry(nextIndex, EntryKind.RUN, name, value = encode(serializer, it)) },
                    onFailure = {
                        val t = it as TerminalException
                        JournalEntry(nextIndex, EntryKind.RUN, name, failure = Failure(t.code, t.message ?: ""))
                    },
                )
                append(entry)
            }
            awaitAck(index)
            return outcome.getOrThrow()
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

        override suspend fun <T> get(key: StateKey<T>): T? {
            val bytes = synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.GET_STATE, key.name)
                if (replayed != null) {
                    replayed.value
                } else {
                    val v = state[key.name]
                    append(JournalEntry(nextIndex, EntryKind.GET_STATE, key.name, value = v))
                    v
                }
            }
            return bytes?.let { decode(key.serializer, it) }
        }

        override suspend fun stateKeys(): Set<String> = synchronized(commandLock) {
            val replayed = matchJournal(EntryKind.GET_STATE_KEYS, null)
            if (replayed != null) {
                LinkedHashSet(replayed.keys ?: emptyList())
            } else {
                val keys = state.keys.sorted()
                append(JournalEntry(nextIndex, EntryKind.GET_STATE_KEYS, keys = keys))
                LinkedHashSet(keys)
            }
        }

        // Replayed writes are applied to the local view too: that is idempotent whether or not
        // START.state already contains them, so reads after the replay are right either way.

        override fun <T> set(key: StateKey<T>, value: T) {
            checkWritable(writable, key.name)
            val bytes = encode(key.serializer, value)
            synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.SET_STATE, key.name)
                if (replayed == null) append(JournalEntry(nextIndex, EntryKind.SET_STATE, key.name, value = bytes))
                state[key.name] = bytes
            }
        }

        override fun clear(key: StateKey<*>) {
            checkWritable(writable, key.name)
            synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.CLEAR_STATE, key.name)
                if (replayed == null) append(JournalEntry(nextIndex, EntryKind.CLEAR_STATE, key.name))
                state.remove(key.name)
            }
        }

        override fun clearAll() {
            checkWritable(writable, "*")
            synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.CLEAR_ALL_STATE, null)
                if (replayed == null) append(JournalEntry(nextIndex, EntryKind.CLEAR_ALL_STATE))
                state.clear()
            }
        }

        // Time ------------------------------------------------------------------------------------

        override suspend fun sleep(duration: Duration) {
            timer(duration).await()
        }

        override fun timer(duration: Duration): DurableFuture<Unit> {
            require(!duration.isNegative()) { "timer duration must not be negative: $duration" }
            return synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.SLEEP, null)
                val index = if (replayed != null) {
                    replayed.index
                } else {
                    val wake = clock() + duration.inWholeMilliseconds
                    timerWakeUps[nextIndex] = wake
                    append(JournalEntry(nextIndex, EntryKind.SLEEP, wakeUpAtMs = wake))
                }
                FutureImpl(this@Invocation, index) { }
            }
        }

        // Calls and sends -------------------------------------------------------------------------

        override fun <O> call(
            service: String,
            handler: String,
            key: String,
            input: ByteArray,
            outputSerializer: KSerializer<O>,
        ): DurableFuture<O> = callEntry(service, handler, key, input) { decodePayload(outputSerializer, it) }

        fun <O> callTarget(target: HandlerTarget, key: String, input: ByteArray): DurableFuture<O> =
            callEntry(target.service, target.handler, key, input) { decodeOutput(target, it) }

        private fun <O> callEntry(
            service: String,
            handler: String,
            key: String,
            input: ByteArray,
            decode: (ByteArray) -> O,
        ): FutureImpl<O> = synchronized(commandLock) {
            val replayed = matchJournal(EntryKind.CALL, null, target = "$service/$handler")
            val index = replayed?.index
                ?: append(
                    JournalEntry(
                        nextIndex,
                        EntryKind.CALL,
                        service = service,
                        handler = handler,
                        key = key,
                        value = input,
                    ),
                )
            FutureImpl(this@Invocation, index, decode)
        }

        override fun send(service: String, handler: String, key: String, input: ByteArray, delay: Duration) {
            require(!delay.isNegative()) { "send delay must not be negative: $delay" }
            synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.SEND, null, target = "$service/$handler")
                if (replayed == null) {
                    val delayMs = delay.inWholeMilliseconds.takeIf { it > 0 }
                    append(
                        JournalEntry(
                            nextIndex,
                            EntryKind.SEND,
                            service = service,
                            handler = handler,
                            key = key,
                            value = input,
                            delayMs = delayMs,
                        ),
                    )
                }
            }
        }

        // Awakeables ------------------------------------------------------------------------------

        override fun <T> awakeable(serializer: KSerializer<T>): Awakeable<T> = synchronized(commandLock) {
            val replayed = matchJournal(EntryKind.AWAKEABLE, null)
            val index = replayed?.index ?: append(JournalEntry(nextIndex, EntryKind.AWAKEABLE))
            AwakeableImpl(this@Invocation, index, awakeableId(start.id, index)) { decodePayload(serializer, it) }
        }

        override fun <T> resolveAwakeable(id: String, serializer: KSerializer<T>, value: T) {
            completeAwakeable(id, encodePayload(serializer, value), null)
        }

        override fun rejectAwakeable(id: String, message: String, code: Int) {
            require(code in 0..65535) { "failure code must be in 0..65535, got $code" }
            completeAwakeable(id, null, Failure(code, message))
        }

        private fun completeAwakeable(id: String, value: ByteArray?, failure: Failure?) {
            synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.COMPLETE_AWAKEABLE, null)
                if (replayed == null) {
                    append(
                        JournalEntry(
                            nextIndex,
                            EntryKind.COMPLETE_AWAKEABLE,
                            id = id,
                            value = value,
                            failure = failure,
                        ),
                    )
                }
            }
        }

        // Durable promises ------------------------------------------------------------------------

        override fun <T> promise(name: String, serializer: KSerializer<T>): DurablePromise<T> {
            check(handler.serviceKind == ServiceKind.WORKFLOW) {
                "durable promises exist only in workflows; ${handler.qualifiedName} is not a workflow handler"
            }
            return PromiseImpl(name, serializer)
        }

        private inner class PromiseImpl<T>(override val name: String, private val serializer: KSerializer<T>) :
            DurablePromise<T> {
            override fun future(): DurableFuture<T> = synchronized(commandLock) {
                val replayed = matchJournal(EntryKind.GET_PROMISE, name)
                val index = replayed?.index ?: append(JournalEntry(nextIndex, EntryKind.GET_PROMISE, name))
                FutureImpl(this@Invocation, index) { decodePayload(serializer, it) }
            }

            override suspend fun await(): T = future().await()

            override suspend fun await(timeout: Duration): T = future().await(timeout)

            override suspend fun peek(): T? {
                val index = synchronized(commandLock) {
                    val replayed = matchJournal(EntryKind.PEEK_PROMISE, name)
                    replayed?.index ?: append(JournalEntry(nextIndex, EntryKind.PEEK_PROMISE, name))
                }
                val r = awaitUncancellable(index)
                r.failure?.let { throw TerminalException(it.code, it.message) }
                return r.value?.let { decodePayload(serializer, it) }
            }

            override suspend fun resolve(value: T) = complete(encodePayload(serializer, value), null)

            override suspend fun reject(message: String, code: Int) {
                require(code in 0..65535) { "failure code must be in 0..65535, got $code" }
                complete(null, Failure(code, message))
            }

            private suspend fun complete(value: ByteArray?, failure: Failure?) {
                val index = synchronized(commandLock) {
                    val replayed = matchJournal(EntryKind.COMPLETE_PROMISE, name)
                    replayed?.index
                        ?: append(
                            JournalEntry(
                                nextIndex,
                                EntryKind.COMPLETE_PROMISE,
                                name,
                                value = value,
                                failure = failure,
                            ),
                        )
                }
                awaitUncancellable(index).failure?.let { throw TerminalException(it.code, it.message) }
            }

            override fun toString(): String = "DurablePromise($name)"
        }
    }

    private suspend fun awaitAck(index: Int) {
        val waiter = synchronized(ackLock) {
            if (ackedIndex >= index) {
                null
            } else {
                CompletableDeferred<Unit>().also { ackWaiters.add(index to it) }
            }
        }
        waiter?.await()
    }
}
