package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import java.io.BufferedInputStream
import java.io.ByteArrayOutputStream
import java.io.InputStream
import java.io.OutputStream
import java.net.Socket
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse

class EndpointTest {
    @Test
    fun `discovery JSON lists services and handler kinds`() {
        val json = discoveryJson(listOf(defineService(TestCounter()), defineService(TestSteps())))
        assertEquals(
            """{"protocolVersion":1,"services":[""" +
                """{"name":"TestCounter","kind":"virtual_object","handlers":[""" +
                """{"name":"add","kind":"exclusive"},{"name":"get","kind":"shared"},""" +
                """{"name":"reset","kind":"exclusive"},{"name":"sneakySet","kind":"shared"}]},""" +
                """{"name":"Stepper","kind":"service","handlers":[""" +
                """{"name":"boom","kind":"shared"},{"name":"failingStep","kind":"shared"},""" +
                """{"name":"greet","kind":"shared"},{"name":"nothing","kind":"shared"},""" +
                """{"name":"randomStep","kind":"shared"},{"name":"teapot","kind":"shared"},""" +
                """{"name":"threeStep","kind":"shared"}]}]}""",
            json,
        )
    }

    @Service
    class NotSuspend {
        @Handler
        fun plain(ctx: Context): String = "x"
    }

    @VirtualObject
    class SharedWantsObjectContext {
        @Shared
        suspend fun peek(ctx: ObjectContext): String = "x"
    }

    @Test
    fun `bind rejects invalid services`() {
        assertThrows(IllegalArgumentException::class.java) { KilnEndpoint().bind(Any()) }
        assertThrows(IllegalArgumentException::class.java) { KilnEndpoint().bind(NotSuspend()) }
        assertThrows(IllegalArgumentException::class.java) { KilnEndpoint().bind(SharedWantsObjectContext()) }
        assertThrows(IllegalArgumentException::class.java) { KilnEndpoint().bind(TestCounter()).bind(TestCounter()) }
    }

    @Test
    fun `HTTP discover and 404`() {
        KilnEndpoint().bind(TestCounter()).start(port = 0).use { server ->
            val client = HttpClient.newHttpClient()
            val base = "http://127.0.0.1:${server.port}"
            val d = client.send(
                HttpRequest.newBuilder(URI("$base/discover")).build(),
                HttpResponse.BodyHandlers.ofString(),
            )
            assertEquals(200, d.statusCode())
            assertEquals("application/json", d.headers().firstValue("content-type").get())
            assertEquals(discoveryJson(listOf(defineService(TestCounter()))), d.body())
            val nf = client.send(
                HttpRequest.newBuilder(URI("$base/invoke/TestCounter/nope"))
                    .POST(HttpRequest.BodyPublishers.noBody())
                    .build(),
                HttpResponse.BodyHandlers.ofString(),
            )
            assertEquals(404, nf.statusCode())
        }
    }

    /** A real HTTP/1.1 chunked full-duplex exchange over a socket: frames flow both ways at once. */
    @Test
    fun `full duplex invocation over HTTP`() {
        val svc = TestSteps()
        KilnEndpoint().bind(svc).start(port = 0).use { server ->
            Socket("127.0.0.1", server.port).use { socket ->
                socket.tcpNoDelay = true
                socket.soTimeout = 5000
                val out = socket.getOutputStream()
                val input = BufferedInputStream(socket.getInputStream())
                val request = "POST /invoke/Stepper/threeStep HTTP/1.1\r\nHost: x\r\n" +
                    "content-type: application/vnd.kiln.v1\r\ntransfer-encoding: chunked\r\n\r\n"
                out.write(request.encodeToByteArray())
                val start = StartMessage("inv-9", "Stepper", "threeStep", "", 1, 1, emptyMap(), 7)
                chunk(out, FrameCodec.encode(FrameType.START, Msgpack.encodeMap(start.toMap())))
                chunk(
                    out,
                    FrameCodec.encode(
                        FrameType.ENTRY,
                        JournalEntry(0, EntryKind.INPUT, value = json("\"h\"")).encode(),
                    ),
                )

                val status = readLine(input)
                assertEquals("HTTP/1.1 200 OK", status)
                val headers = generateSequence { readLine(input).takeIf { it.isNotEmpty() } }
                    .map { it.lowercase() }
                    .toList()
                assertEquals(true, headers.contains("transfer-encoding: chunked"), "headers: $headers")
                assertEquals(true, headers.contains("content-type: application/vnd.kiln.v1"), "headers: $headers")

                val body = ChunkedFrames(input)
                for (k in 1..3) {
                    val e = JournalEntry.decode(body.next().body)
                    assertEquals(k, e.index)
                    assertEquals("\"h-$k\"", e.value.text())
                    chunk(out, FrameCodec.encode(FrameType.ACK, Bodies.ack(k)))
                }
                val output = JournalEntry.decode(body.next().body)
                assertEquals("output", output.kind)
                assertEquals("\"h-1 h-2 h-3\"", output.value.text())
                assertEquals(FrameType.END, body.next().type)
                chunk(out, FrameCodec.encode(FrameType.ACK, Bodies.ack(4)))
                out.write("0\r\n\r\n".encodeToByteArray()) // request body ends
                out.flush()
                assertEquals(null, body.nextOrNull(), "response body ends after the request body")
            }
        }
        assertEquals(3, svc.executions.get())
    }

    private fun chunk(out: OutputStream, bytes: ByteArray) {
        out.write("${Integer.toHexString(bytes.size)}\r\n".encodeToByteArray())
        out.write(bytes)
        out.write("\r\n".encodeToByteArray())
        out.flush()
    }

    private fun readLine(input: InputStream): String {
        val sb = StringBuilder()
        while (true) {
            val c = input.read()
            require(c >= 0) { "connection closed" }
            if (c == '\n'.code) return sb.toString().trimEnd('\r')
            sb.append(c.toChar())
        }
    }

    /** De-chunks a response body and splits it into frames. */
    private inner class ChunkedFrames(private val input: InputStream) {
        private val pending = ByteArrayOutputStream()
        private var ended = false

        fun next(): Frame = nextOrNull() ?: error("response body ended")

        fun nextOrNull(): Frame? {
            while (true) {
                val bytes = pending.toByteArray()
                if (bytes.size >= 8) {
                    val len = java.nio.ByteBuffer.wrap(bytes, 4, 4).int
                    if (bytes.size >= 8 + len) {
                        pending.reset()
                        pending.write(bytes, 8 + len, bytes.size - 8 - len)
                        return FrameCodec.read(bytes.inputStream(0, 8 + len))
                    }
                }
                if (ended) return null
                val size = readLine(input).substringBefore(';').trim().toInt(16)
                if (size == 0) {
                    readLine(input)
                    ended = true
                    continue
                }
                pending.write(input.readNBytes(size))
                readLine(input)
            }
        }
    }
}
