// Byte streams of one attempt: frame sources and sinks, and the errors that end an attempt.
package dev.kiln.sdk

import java.io.IOException
import java.io.InputStream
import java.io.OutputStream

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
        try {
            out.close()
        } catch (_: IOException) {}
    }
}

/**
 * Thrown into user code to stop it after the attempt was ended by the SDK: an ERROR frame was sent
 * (e.g. a journal mismatch or a state write from a shared handler) or the invocation suspended. An
 * [Error], so that a plain `catch (e: Exception)` in user code does not swallow it; should user
 * code swallow it anyway, the attempt stays ended and every later command throws it again.
 */
internal class InvocationAbortedError(message: String) : Error(message)

/** The message of the [TerminalException] an observed cancellation throws. */
internal const val CANCELLED_MESSAGE = "cancelled"

/** `awk_` + the 32 hex digits of the invocation id (its text form without `inv_`) + 8 hex digits of [index]. */
internal fun awakeableId(invocationId: String, index: Int): String =
    "awk_" + invocationId.removePrefix("inv_") + "%08x".format(index)
