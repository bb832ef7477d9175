// The state machine of one invocation attempt (docs/protocol.md §4).
//
// Threads: `run()` is called on the HTTP exchange thread; it reads START and the journal, launches
// the handler coroutine on [dispatcher] and then loops reading frames (ACKs) until the request body
// ends. The handler coroutine issues commands through [InvocationContext]; each command is matched
// against the journal while replaying, or journaled (sent as an ENTRY frame) while processing.
package dev.kiln.sdk

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.CoroutineName
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch
import kotlinx.serialization.KSerializer
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.util.concurrent.atomic.AtomicBoolean
import kotlin.random.Random

/** Where an attempt's incoming frames come from. */
internal interface FrameSource {
    /** Blocks for the next frame; `null` when the stream has ended. */
    fun next(): Frame?
}

/** Where an attempt's outgoing frames go. Thread-safe. */
internal interface FrameSink {
    /**
     * Writes one frame. With [flush] false the frame may wait in a buffer until the next flushed
     * frame: used for entries the runtime only commits together with the next `run` or `output`.
     */
    fun send(type: Int, body: ByteArray, flush: Boolean = true)
    fun close()
}

internal class StreamFrameSource(private val input: InputStream) : FrameSource {
    override fun next(): Frame? = FrameCodec.read(input)
}

/** Raised on a write to a sink whose stream is closed or broken. */
internal class StreamClosedException(message: String, cause: Throwable? = null) : IOException(message, cause)

internal class StreamFrameSink(private val out: OutputStream) : FrameSink {
    private var closed = false

    override fun send(type: Int, body: ByteArray, flush: Boolean) {
        val bytes = FrameCodec.encode(type, body) // outside the lock; throws ProtocolException when too big
        synchronized(this) {
            if (closed) throw StreamClosedException("response stream already closed")
            try {
                out.write(bytes)
                if (flush) out.flush()
            } catch (e: IOException) {
                closed = true
                throw StreamClosedException("response stream broke: ${e.message}", e)
            }
        }
    }

    override fun close() {
        synchronized(this) {
            if (closed) return
            closed = true
        }
        try { out.close() } catch (_: IOException) {}
    }
}

/**
 * Thrown into user code to stop it after the attempt was ended by the SDK (an ERROR frame was sent,
 * e.g. a journal mismatch or a state write from a shared handler). An [Error], so that a plain
 * `catch (e: Exception)` in user code does not swallow it; should user code swallow it anyway, the
 * attempt stays ended.
 */
internal class InvocationAbortedError(message: String) : Error(message)

internal class Invocation(
    private val handler: HandlerDefinition,
    private val source: FrameSource,
    private val sink: FrameSink,
    private val dispatcher: CoroutineDispatcher,
) {
    // Set once from START, before the handler coroutine starts.
    private lateinit var start: StartMessage
    private lateinit var journal: List<JournalEntry>
    private var knownEntries = 0

    /** Guards command issuing: [nextIndex], [state] and the order of ENTRY frames. */
    private val commandLock = Any()
    private var nextIndex = 1
    private val state = HashMap<String, ByteArray>()
    private var insideRun = false
    private var random: Random? = null

    /** Guards ACK bookkeeping (touched by the reader thread). */
    private val ackLock = Any()
    private var ackedIndex = -1L
    private val ackWaiters = ArrayList<Pair<Int, CompletableDeferred<Unit>>>()

    /** Set when END or ERROR was sent (or decided), or the stream broke: nothing more is sent. */
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
                "START names ${start.service}/${start.handler} but this request is for ${handler.qualifiedName}"
            )
        }
        knownEntries = start.knownEntries
        if (knownEntries < 1) throw ProtocolException("known_entries is $knownEntries; the journal must hold at least the input")
        val entries = ArrayList<JournalEntry>(knownEntries)
        for (i in 0 until knownEntries) {
            val f = source.next() ?: return false
            if (f.type != FrameType.ENTRY) {
                throw ProtocolException("expected journal ENTRY $i of $knownEntries, got ${FrameType.name(f.type)}")
            }
            val e = JournalEntry.decode(f.body)
            if (e.index != i) throw ProtocolException("journal entry $i arrived with index ${e.index}")
            entries.add(e)
        }
        if (entries[0].kind != EntryKind.INPUT) throw ProtocolException("journal entry 0 is '${entries[0].kind}', expected 'input'")
        journal = entries
        state.putAll(start.state)
        ackedIndex = (knownEntries - 1).toLong()
        return true
    }

    private fun readLoop() {
        try {
            while (true) {
                val f = source.next() ?: break
                when (f.type) {
                    FrameType.ACK -> onAck(Bodies.ackIndex(f.body))
                    else -> {} // COMPLETION is reserved in v1; nothing else is meant for the SDK
                }
            }
        } catch (e: ProtocolException) {
            fail(ErrorCode.PROTOCOL_VIOLATION, "protocol violation: ${e.message}", retryable = false)
        } catch (_: IOException) {
            // the runtime aborted the stream: same as an unexpected end
        }
        streamEnded = true
        job?.cancel(CancellationException("request stream ended")) // a no-op once the handler is done
    }

    private fun onAck(index: Long) {
        val ready = ArrayList<CompletableDeferred<Unit>>()
        synchronized(ackLock) {
            if (index > ackedIndex) ackedIndex = index
            val it = ackWaiters.iterator()
            while (it.hasNext()) {
                val (i, d) = it.next()
                if (i <= ackedIndex) { ready.add(d); it.remove() }
            }
        }
        ready.forEach { it.complete(Unit) }
    }

    private suspend fun runHandler() {
        val ctx = InvocationContext(writable = !handler.shared)
        try {
            val output = handler.invoke(ctx, journal[0].value ?: ByteArray(0))
            complete(output, null)
        } catch (e: InvocationAbortedError) {
            // the ERROR frame is already sent
        } catch (e: TerminalException) {
            try { complete(null, Failure(e.code, e.message ?: "")) } catch (_: InvocationAbortedError) {}
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
            try { sink.send(FrameType.END, Bodies.EMPTY_MAP) } catch (_: IOException) {}
        }
    }

    /** Sends ERROR (once per attempt) and marks the attempt finished. */
    private fun fail(code: Int, message: String, retryable: Boolean, index: Int? = null) {
        if (!finished.compareAndSet(false, true)) return
        try { sink.send(FrameType.ERROR, Bodies.error(code, message, retryable, index)) } catch (_: IOException) {}
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
     * While replaying, checks the command against `journal[nextIndex]` (kind, and name where the
     * kind has one), advances and returns the journaled entry; a mismatch ends the attempt with
     * ERROR 570. While processing, returns `null`.
     */
    private fun matchJournal(kind: String, name: String?): JournalEntry? {
        checkUsable()
        val i = nextIndex
        if (i >= knownEntries) return null
        val e = journal[i]
        if (e.kind != kind || (kind in EntryKind.NAMED && e.name != name)) {
            abort(
                ErrorCode.JOURNAL_MISMATCH,
                "journal mismatch at index $i: journal has ${e.describe()}, handler issued ${JournalEntry.describe(kind, name)}",
                retryable = false, index = i,
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
                retryable = false, index = entry.index,
            )
        }
        try {
            // Entries that need no ACK ride with the next run, or with END after the output (the runtime
            // commits them together anyway): one packet and one chunk instead of several.
            sink.send(FrameType.ENTRY, body, flush = entry.kind == EntryKind.RUN)
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

    /** The one context implementation; [writable] is false for shared handlers. */
    private inner class InvocationContext(private val writable: Boolean) : ObjectContext {
        override val invocationId: String get() = start.id
        override val key: String get() = start.key

        override fun random(): Random = synchronized(commandLock) {
            random ?: Random(start.randomSeed).also { random = it }
        }

        override suspend fun <T> run(name: String, serializer: KSerializer<T>, block: suspend () -> T): T {
            val replayed = synchronized(commandLock) { matchJournal(EntryKind.RUN, name) }
            if (replayed != null) {
                replayed.failure?.let { throw TerminalException(it.code, it.message) }
                return decode(serializer, replayed.value ?: ByteArray(0))
            }

            synchronized(commandLock) { insideRun = true }
            val outcome: Result<T> = try {
                Result.success(block())
            } catch (e: TerminalException) {
                Result.failure(e)
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
    }

    private suspend fun awaitAck(index: Int) {
        val waiter = synchronized(ackLock) {
            if (ackedIndex >= index) null
            else CompletableDeferred<Unit>().also { ackWaiters.add(index to it) }
        }
        waiter?.await()
    }
}
