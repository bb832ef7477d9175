package dev.kiln.sdk

import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.serialization.json.Json
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.fail
import java.io.ByteArrayOutputStream
import java.io.InputStream
import java.io.OutputStream
import java.util.concurrent.Executors
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/**
 * Test harness: runs one invocation attempt of [handlerName] of [service] with no server. Frames
 * fed in are encoded to bytes and read back by the real frame reader; frames coming out are
 * parsed from the bytes the state machine wrote. [json] plays the endpoint's JSON.
 */
internal class Transcript(service: Any, handlerName: String, json: Json = KilnJson) : AutoCloseable {
    val definition = defineService(service, json)
    private val handler = definition.handlers[handlerName] ?: error("no handler $handlerName")
    private val input = QueueInputStream()
    private val output = FrameCollector()
    private val pool = Executors.newCachedThreadPool { r -> Thread(r, "transcript-handler").apply { isDaemon = true } }
    private val thread = Thread({
        Invocation(handler, StreamFrameSource(input), StreamFrameSink(output), pool.asCoroutineDispatcher()).run()
    }, "transcript-reader").apply {
        isDaemon = true
        start()
    }

    fun send(type: Int, body: ByteArray) = input.push(FrameCodec.encode(type, body))

    fun start(
        knownEntries: Int = 1,
        key: String = "",
        state: Map<String, ByteArray> = emptyMap(),
        seed: Long = 42,
        id: String = "inv-1",
        epoch: Long = 1,
        cancelled: Boolean = false,
        suspendAfterMs: Long? = null,
    ) = send(
        FrameType.START,
        Msgpack.encodeMap(
            StartMessage(
                id,
                definition.name,
                handler.name,
                key,
                epoch,
                knownEntries,
                state,
                seed,
                cancelled,
                suspendAfterMs,
            ).toMap(),
        ),
    )

    fun entry(e: JournalEntry) = send(FrameType.ENTRY, e.encode())
    fun input(json: String?) = entry(JournalEntry(0, EntryKind.INPUT, value = json?.encodeToByteArray()))
    fun ack(index: Int) = send(FrameType.ACK, Bodies.ack(index))
    fun completion(index: Int, result: EntryResult) = send(FrameType.COMPLETION, Bodies.completion(index, result))
    fun completeWith(index: Int, json: String) = completion(index, EntryResult(value = json.encodeToByteArray()))
    fun cancel() = send(FrameType.CANCEL, Bodies.EMPTY_MAP)
    fun closeInput() = input.push(ByteArray(0))

    /** START (with [journal].size known entries) followed by the journal, input first. */
    fun replay(
        journal: List<JournalEntry>,
        key: String = "",
        state: Map<String, ByteArray> = emptyMap(),
        seed: Long = 42,
        id: String = "inv-1",
        cancelled: Boolean = false,
        suspendAfterMs: Long? = null,
    ) {
        start(journal.size, key, state, seed, id = id, cancelled = cancelled, suspendAfterMs = suspendAfterMs)
        journal.forEach { entry(it) }
    }

    fun next(timeoutMs: Long = 5000): Frame =
        output.frames.poll(timeoutMs, TimeUnit.MILLISECONDS) ?: fail("no frame within $timeoutMs ms")

    fun expectNoFrame(ms: Long) = assertNull(output.frames.poll(ms, TimeUnit.MILLISECONDS), "expected no frame")

    fun nextEntry(): JournalEntry {
        val f = next()
        assertEquals(FrameType.ENTRY, f.type, "expected ENTRY, got $f")
        return JournalEntry.decode(f.body)
    }

    fun expectEnd() {
        val f = next()
        assertEquals(FrameType.END, f.type, "expected END, got $f")
        assertEquals(emptyMap<String, Any?>(), Msgpack.decodeMap(f.body))
    }

    /** Expects a SUSPEND frame and returns its `waiting_on`. */
    fun expectSuspend(timeoutMs: Long = 5000): List<Long> {
        val f = next(timeoutMs)
        assertEquals(FrameType.SUSPEND, f.type, "expected SUSPEND, got $f")
        @Suppress("UNCHECKED_CAST")
        return Msgpack.decodeMap(f.body)["waiting_on"] as List<Long>
    }

    fun expectError(): Map<String, Any?> {
        val f = next()
        assertEquals(FrameType.ERROR, f.type, "expected ERROR, got $f")
        return Msgpack.decodeMap(f.body)
    }

    /** Closes the request stream and waits for the attempt to finish. */
    fun finish() {
        closeInput()
        thread.join(5000)
        check(!thread.isAlive) { "invocation did not finish after the input closed" }
    }

    fun isRunning(): Boolean = thread.isAlive

    override fun close() {
        closeInput()
        thread.join(5000)
        pool.shutdownNow()
    }
}

/** An InputStream fed chunk by chunk; an empty chunk means end of stream. */
internal class QueueInputStream : InputStream() {
    private val chunks = LinkedBlockingQueue<ByteArray>()
    private var current: ByteArray? = null
    private var pos = 0
    private var ended = false

    fun push(bytes: ByteArray) = chunks.put(bytes)

    override fun read(): Int {
        val b = ByteArray(1)
        return if (read(b, 0, 1) < 0) -1 else b[0].toInt() and 0xFF
    }

    override fun read(b: ByteArray, off: Int, len: Int): Int {
        if (len == 0) return 0
        while (true) {
            if (ended) return -1
            val c = current
            if (c != null && pos < c.size) {
                val n = minOf(len, c.size - pos)
                System.arraycopy(c, pos, b, off, n)
                pos += n
                return n
            }
            val next = chunks.take()
            if (next.isEmpty()) {
                ended = true
                return -1
            }
            current = next
            pos = 0
        }
    }
}

/** Collects written bytes and splits them into frames as they arrive. */
internal class FrameCollector : OutputStream() {
    val frames = LinkedBlockingQueue<Frame>()
    private val buffer = ByteArrayOutputStream()

    override fun write(b: Int) = write(byteArrayOf(b.toByte()), 0, 1)

    @Synchronized
    override fun write(b: ByteArray, off: Int, len: Int) {
        buffer.write(b, off, len)
        val bytes = buffer.toByteArray()
        val stream = bytes.inputStream()
        var consumed = 0
        while (bytes.size - consumed >= FrameCodec.HEADER_BYTES) {
            val length =
                ((bytes[consumed + 4].toInt() and 0xFF) shl 24) or ((bytes[consumed + 5].toInt() and 0xFF) shl 16) or
                    ((bytes[consumed + 6].toInt() and 0xFF) shl 8) or (bytes[consumed + 7].toInt() and 0xFF)
            if (bytes.size - consumed < FrameCodec.HEADER_BYTES + length) break
            stream.reset()
            stream.skip(consumed.toLong())
            frames.put(FrameCodec.read(stream)!!)
            consumed += FrameCodec.HEADER_BYTES + length
        }
        buffer.reset()
        buffer.write(bytes, consumed, bytes.size - consumed)
    }
}

internal fun json(s: String): ByteArray = s.encodeToByteArray()
internal fun ByteArray?.text(): String? = this?.decodeToString()
