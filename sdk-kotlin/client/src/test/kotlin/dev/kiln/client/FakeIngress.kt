package dev.kiln.client

import com.sun.net.httpserver.HttpServer
import java.net.InetSocketAddress
import java.util.concurrent.CopyOnWriteArrayList

/** A request the fake ingress received. */
class Received(
    val method: String,
    /** The raw (still percent-encoded) path and query. */
    val target: String,
    val headers: Map<String, String>,
    val body: String,
)

/** What the fake ingress answers. */
class Reply(val status: Int, val body: String = "", val headers: Map<String, String> = emptyMap())

/** An HTTP server standing in for Kiln's ingress: records requests, answers with [reply]. */
class FakeIngress : AutoCloseable {
    val received = CopyOnWriteArrayList<Received>()

    @Volatile
    var reply: (Received) -> Reply = { Reply(200, "null") }

    private val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 16).apply {
        createContext("/") { ex ->
            val r = Received(
                ex.requestMethod,
                ex.requestURI.rawPath + (ex.requestURI.rawQuery?.let { "?$it" } ?: ""),
                ex.requestHeaders.entries.associate { (k, v) -> k.lowercase() to v.joinToString(",") },
                ex.requestBody.readBytes().decodeToString(),
            )
            received += r
            val answer = reply(r)
            answer.headers.forEach { (k, v) -> ex.responseHeaders.set(k, v) }
            ex.responseHeaders.set("content-type", "application/json")
            val bytes = answer.body.encodeToByteArray()
            ex.sendResponseHeaders(answer.status, if (bytes.isEmpty()) -1 else bytes.size.toLong())
            if (bytes.isNotEmpty()) ex.responseBody.use { it.write(bytes) }
            ex.close()
        }
        start()
    }

    val url: String get() = "http://127.0.0.1:${server.address.port}"

    val last: Received get() = received.last()

    override fun close() = server.stop(0)
}
