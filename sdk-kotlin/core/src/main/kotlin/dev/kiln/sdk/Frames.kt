// Wire format of protocol v1 (docs/protocol.md §2): 8-byte frame header + MessagePack map body.
package dev.kiln.sdk

import org.msgpack.core.MessageFormat
import org.msgpack.core.MessagePack
import org.msgpack.core.MessageUnpacker
import org.msgpack.value.ValueType
import java.io.EOFException
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream

/** Frame types of protocol v1. */
internal object FrameType {
    const val START = 0x0001
    const val ENTRY = 0x0002
    const val ACK = 0x0003
    const val COMPLETION = 0x0004
    const val END = 0x0005
    const val ERROR = 0x0006
    const val SUSPEND = 0x0007
    const val CANCEL = 0x0008

    fun name(type: Int): String = when (type) {
        START -> "START"
        ENTRY -> "ENTRY"
        ACK -> "ACK"
        COMPLETION -> "COMPLETION"
        END -> "END"
        ERROR -> "ERROR"
        SUSPEND -> "SUSPEND"
        CANCEL -> "CANCEL"
        else -> "0x%04x".format(type)
    }
}

/** One frame: its type and its (MessagePack) body. */
internal class Frame(val type: Int, val body: ByteArray) {
    override fun toString(): String = "${FrameType.name(type)}(${body.size} B)"
}

/** The peer sent something that is not protocol v1 (bad header, oversized or garbled body). */
internal class ProtocolException(message: String) : IOException(message)

internal object FrameCodec {
    const val HEADER_BYTES = 8

    /** Largest body a frame may carry (protocol §2). */
    const val BODY_BYTES_MAX = 16 * 1024 * 1024

    /** Encodes header + body into one array, so a frame is written (and flushed) in one call. */
    fun encode(type: Int, body: ByteArray): ByteArray {
        require(type in 0..0xFFFF) { "frame type out of range: $type" }
        if (body.size > BODY_BYTES_MAX) {
            throw ProtocolException("frame body of ${body.size} bytes exceeds the limit of $BODY_BYTES_MAX bytes")
        }
        val out = ByteArray(HEADER_BYTES + body.size)
        out[0] = (type ushr 8).toByte()
        out[1] = type.toByte()
        out[2] = 0
        out[3] = 0
        val n = body.size
        out[4] = (n ushr 24).toByte()
        out[5] = (n ushr 16).toByte()
        out[6] = (n ushr 8).toByte()
        out[7] = n.toByte()
        System.arraycopy(body, 0, out, HEADER_BYTES, n)
        return out
    }

    fun write(out: OutputStream, type: Int, body: ByteArray) {
        out.write(encode(type, body))
        out.flush()
    }

    /**
     * Reads one frame. Returns `null` on a clean end of stream (before the first header byte);
     * throws [EOFException] on a stream that ends inside a frame and [ProtocolException] on a
     * non-zero flags field or a body longer than [BODY_BYTES_MAX] (which is not read).
     */
    fun read(input: InputStream): Frame? {
        val header = ByteArray(HEADER_BYTES)
        var got = 0
        while (got < HEADER_BYTES) {
            val n = input.read(header, got, HEADER_BYTES - got)
            if (n < 0) {
                if (got == 0) return null
                throw EOFException("stream ended inside a frame header ($got of $HEADER_BYTES bytes)")
            }
            got += n
        }
        val type = ((header[0].toInt() and 0xFF) shl 8) or (header[1].toInt() and 0xFF)
        val flags = ((header[2].toInt() and 0xFF) shl 8) or (header[3].toInt() and 0xFF)
        val length = ((header[4].toLong() and 0xFF) shl 24) or ((header[5].toLong() and 0xFF) shl 16) or
            ((header[6].toLong() and 0xFF) shl 8) or (header[7].toLong() and 0xFF)
        if (flags != 0) {
            throw ProtocolException("frame ${FrameType.name(type)} has flags 0x%04x; v1 requires 0".format(flags))
        }
        if (length > BODY_BYTES_MAX) {
            throw ProtocolException(
                "frame ${FrameType.name(type)} announces $length bytes, more than the limit of $BODY_BYTES_MAX",
            )
        }
        val body = ByteArray(length.toInt())
        var off = 0
        while (off < body.size) {
            val n = input.read(body, off, body.size - off)
            if (n < 0) {
                throw EOFException(
                    "stream ended inside a ${FrameType.name(type)} body ($off of ${body.size} bytes)",
                )
            }
            off += n
        }
        return Frame(type, body)
    }
}

/**
 * MessagePack map bodies. Values are written as: String → str, Int/Long → int, Boolean → bool,
 * ByteArray → bin, List → array, Map<String, *> → map, null → nil. Decoding yields the same
 * Kotlin types (every integer as Long, every float as Double, str/bin as they are).
 */
internal object Msgpack {
    fun encodeMap(map: Map<String, Any?>): ByteArray {
        val packer = MessagePack.newDefaultBufferPacker()
        packer.use {
            writeValue(it, map)
            return it.toByteArray()
        }
    }

    private fun writeValue(p: org.msgpack.core.MessagePacker, v: Any?) {
        when (v) {
            null -> p.packNil()
            is String -> p.packString(v)
            is Int -> p.packInt(v)
            is Long -> p.packLong(v)
            is Boolean -> p.packBoolean(v)
            is ByteArray -> {
                p.packBinaryHeader(v.size)
                p.writePayload(v)
            }
            is List<*> -> {
                p.packArrayHeader(v.size)
                v.forEach { writeValue(p, it) }
            }
            is Set<*> -> {
                p.packArrayHeader(v.size)
                v.forEach { writeValue(p, it) }
            }
            is Map<*, *> -> {
                p.packMapHeader(v.size)
                for ((k, value) in v) {
                    p.packString(k as String)
                    writeValue(p, value)
                }
            }
            else -> throw IllegalArgumentException("cannot encode ${v::class.java.name} as MessagePack")
        }
    }

    /** Decodes a body that must be a map with string keys. */
    fun decodeMap(body: ByteArray): Map<String, Any?> {
        try {
            MessagePack.newDefaultUnpacker(body).use { u ->
                if (!u.hasNext()) throw ProtocolException("empty frame body; expected a MessagePack map")
                if (u.nextFormat.valueType != ValueType.MAP) {
                    throw ProtocolException("frame body is a MessagePack ${u.nextFormat.valueType}, expected a map")
                }
                @Suppress("UNCHECKED_CAST")
                return readValue(u) as Map<String, Any?>
            }
        } catch (e: ProtocolException) {
            throw e
        } catch (e: Exception) {
            throw ProtocolException("garbled MessagePack body: ${e.message}")
        }
    }

    private fun readValue(u: MessageUnpacker): Any? {
        val format = u.nextFormat
        return when (format.valueType) {
            ValueType.NIL -> {
                u.unpackNil()
                null
            }
            ValueType.BOOLEAN -> u.unpackBoolean()
            ValueType.INTEGER ->
                if (format == MessageFormat.UINT64) {
                    u.unpackBigInteger().toLong() // keeps u64 bits
                } else {
                    u.unpackLong()
                }
            ValueType.FLOAT -> u.unpackDouble()
            ValueType.STRING -> u.unpackString()
            ValueType.BINARY -> {
                val n = u.unpackBinaryHeader()
                u.readPayload(n)
            }
            ValueType.ARRAY -> {
                val n = u.unpackArrayHeader()
                List(n) { readValue(u) }
            }
            ValueType.MAP -> {
                val n = u.unpackMapHeader()
                val m = LinkedHashMap<String, Any?>(n * 2)
                repeat(n) {
                    val k = readValue(u) as? String ?: throw ProtocolException("map key is not a string")
                    m[k] = readValue(u)
                }
                m
            }
            ValueType.EXTENSION -> {
                val h = u.unpackExtensionTypeHeader()
                u.readPayload(h.length)
                null
            }
            null -> throw ProtocolException("unknown MessagePack format")
        }
    }
}

// Typed access to decoded bodies ------------------------------------------------------------

internal fun Map<String, Any?>.str(field: String): String? = when (val v = this[field]) {
    null -> null
    is String -> v
    is ByteArray -> v.decodeToString()
    else -> throw ProtocolException("field '$field' must be a string, got ${v::class.simpleName}")
}

internal fun Map<String, Any?>.reqStr(field: String): String =
    str(field) ?: throw ProtocolException("missing field '$field'")

internal fun Map<String, Any?>.long(field: String): Long? = when (val v = this[field]) {
    null -> null
    is Long -> v
    else -> throw ProtocolException("field '$field' must be an integer, got ${v::class.simpleName}")
}

internal fun Map<String, Any?>.bool(field: String): Boolean? = when (val v = this[field]) {
    null -> null
    is Boolean -> v
    else -> throw ProtocolException("field '$field' must be a bool, got ${v::class.simpleName}")
}

internal fun Map<String, Any?>.reqLong(field: String): Long =
    long(field) ?: throw ProtocolException("missing field '$field'")

/** A payload: `bin` per the protocol; a `str` is accepted as its UTF-8 bytes. */
internal fun Map<String, Any?>.bytes(field: String): ByteArray? = when (val v = this[field]) {
    null -> null
    is ByteArray -> v
    is String -> v.encodeToByteArray()
    else -> throw ProtocolException("field '$field' must be bin, got ${v::class.simpleName}")
}
