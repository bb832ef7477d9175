package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import java.io.ByteArrayInputStream
import java.io.ByteArrayOutputStream
import java.io.EOFException

class FrameCodecTest {
    @Test
    fun `header layout is u16 type, u16 flags, u32 length, big-endian`() {
        val bytes = FrameCodec.encode(FrameType.ACK, byteArrayOf(1, 2, 3))
        assertArrayEquals(byteArrayOf(0, 3, 0, 0, 0, 0, 0, 3, 1, 2, 3), bytes)
    }

    @Test
    fun `frames round-trip through a stream`() {
        val out = ByteArrayOutputStream()
        val entry = JournalEntry(7, EntryKind.RUN, "step", value = "\"v\"".encodeToByteArray())
        FrameCodec.write(out, FrameType.ENTRY, entry.encode())
        FrameCodec.write(out, FrameType.END, Bodies.EMPTY_MAP)
        FrameCodec.write(out, FrameType.ERROR, Bodies.error(570, "m", false, 3))
        val input = ByteArrayInputStream(out.toByteArray())

        val e = JournalEntry.decode(FrameCodec.read(input)!!.body)
        assertEquals(7, e.index)
        assertEquals("run", e.kind)
        assertEquals("step", e.name)
        assertEquals("\"v\"", e.value!!.decodeToString())
        val end = FrameCodec.read(input)!!
        assertEquals(FrameType.END, end.type)
        assertEquals(emptyMap<String, Any?>(), Msgpack.decodeMap(end.body))
        val err = Msgpack.decodeMap(FrameCodec.read(input)!!.body)
        assertEquals(mapOf("code" to 570L, "message" to "m", "retryable" to false, "index" to 3L), err)
        assertNull(FrameCodec.read(input), "clean end of stream")
    }

    @Test
    fun `START body round-trips, nil optional fields are accepted`() {
        val start = StartMessage("id", "Counter", "add", "k", 3, 2, mapOf("count" to "1".encodeToByteArray()), -5)
        val back = StartMessage.decode(Msgpack.encodeMap(start.toMap()))
        assertEquals("Counter", back.service)
        assertEquals(2, back.knownEntries)
        assertEquals(-5, back.randomSeed)
        assertEquals("1", back.state["count"]!!.decodeToString())
        val sparse = StartMessage.decode(
            Msgpack.encodeMap(
                mapOf(
                    "id" to "i",
                    "service" to "S",
                    "handler" to "h",
                    "key" to null,
                    "known_entries" to 1,
                    "state" to null,
                ),
            ),
        )
        assertEquals("", sparse.key)
        assertEquals(0, sparse.state.size)
    }

    @Test
    fun `u64 random seed keeps its bits`() {
        val packer = org.msgpack.core.MessagePack.newDefaultBufferPacker()
        packer.packMapHeader(1)
        packer.packString("random_seed")
        packer.packBigInteger(java.math.BigInteger("18446744073709551615"))
        assertEquals(-1L, Msgpack.decodeMap(packer.toByteArray())["random_seed"])
    }

    @Test
    fun `a frame over 16 MiB is rejected on read without reading the body`() {
        val header = byteArrayOf(0, 2, 0, 0, 0x01, 0, 0, 1) // 16 MiB + 1
        val ex = assertThrows(ProtocolException::class.java) { FrameCodec.read(ByteArrayInputStream(header)) }
        assertEquals(true, ex.message!!.contains("16777217"))
        // exactly 16 MiB is allowed
        val max = ByteArray(FrameCodec.HEADER_BYTES + FrameCodec.BODY_BYTES_MAX)
        max[1] = 2
        max[4] = 0x01
        assertEquals(FrameCodec.BODY_BYTES_MAX, FrameCodec.read(ByteArrayInputStream(max))!!.body.size)
    }

    @Test
    fun `a frame over 16 MiB is rejected on write`() {
        assertThrows(ProtocolException::class.java) {
            FrameCodec.encode(FrameType.ENTRY, ByteArray(FrameCodec.BODY_BYTES_MAX + 1))
        }
    }

    @Test
    fun `non-zero flags and truncated frames are errors`() {
        assertThrows(ProtocolException::class.java) {
            FrameCodec.read(ByteArrayInputStream(byteArrayOf(0, 3, 0, 1, 0, 0, 0, 0)))
        }
        assertThrows(EOFException::class.java) { FrameCodec.read(ByteArrayInputStream(byteArrayOf(0, 3, 0))) }
        assertThrows(EOFException::class.java) {
            FrameCodec.read(ByteArrayInputStream(byteArrayOf(0, 3, 0, 0, 0, 0, 0, 5, 1)))
        }
    }

    @Test
    fun `a body that is not a map is a protocol error`() {
        assertThrows(ProtocolException::class.java) { Msgpack.decodeMap(byteArrayOf(0x01)) }
        assertThrows(ProtocolException::class.java) { Msgpack.decodeMap(byteArrayOf(0xC1.toByte())) }
    }
}
