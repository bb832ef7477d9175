// The HTTP endpoint that serves bound services to the Kiln runtime (docs/protocol.md §1).
package dev.kiln.sdk

import com.sun.net.httpserver.HttpExchange
import com.sun.net.httpserver.HttpServer
import kotlinx.coroutines.ExecutorCoroutineDispatcher
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.serialization.json.Json
import java.io.IOException
import java.net.InetSocketAddress
import java.util.concurrent.CountDownLatch
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.ThreadFactory
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger

/**
 * An SDK endpoint: binds annotated service instances and serves them over HTTP/1.1 to the Kiln
 * runtime (`GET /discover`, `POST /invoke/{service}/{handler}`).
 *
 * ```
 * fun main() {
 *     KilnEndpoint().bind(Counter()).listen()
 * }
 * ```
 *
 * @property json the JSON of every payload (inputs, outputs, `run` results, call inputs and outputs,
 *   awakeable and promise values) and state value of the services bound to this endpoint, typed
 *   calls included. Default: [defaultJson]. To add serializers, start from it:
 *   `KilnEndpoint(Json(KilnEndpoint.defaultJson) { serializersModule = myModule })`.
 */
public class KilnEndpoint(public val json: Json = defaultJson) {
    private val services = LinkedHashMap<String, ServiceDefinition>()

    /**
     * Adds [service], an instance of a class annotated [Service], [VirtualObject] or [Workflow],
     * and returns this endpoint. Throws [IllegalArgumentException] if the class is not a valid
     * service (no handlers, a handler that is not `suspend`, a wrong context type, a
     * non-serializable input/output type, a bad or duplicate name, a workflow without exactly one
     * run handler).
     */
    public fun bind(service: Any): KilnEndpoint {
        val def = defineService(service, json)
        require(def.name !in services) { "a service named '${def.name}' is already bound" }
        services[def.name] = def
        return this
    }

    /**
     * Starts serving on [host]:[port] and returns at once. Port `0` picks a free port (see
     * [KilnServer.port]). Defaults: env `PORT` (else 9080) and env `BIND_HOST` (else 127.0.0.1).
     */
    public fun start(port: Int = defaultPort(), host: String = defaultHost()): KilnServer {
        require(services.isNotEmpty()) { "bind at least one service before starting the endpoint" }
        // Frames are small and latency-bound: disable Nagle. Read once, when the JDK server
        // class initialises, so it must be set before the first HttpServer is created.
        if (System.getProperty("sun.net.httpserver.nodelay") == null) {
            System.setProperty("sun.net.httpserver.nodelay", "true")
        }
        val snapshot = LinkedHashMap(services)
        val http = HttpServer.create(InetSocketAddress(host, port), BACKLOG)
        val httpThreads = Executors.newCachedThreadPool(namedThreads("kiln-http"))
        val handlerThreads = Executors.newCachedThreadPool(namedThreads("kiln-handler"))
        val dispatcher = handlerThreads.asCoroutineDispatcher()
        val discovery = discoveryJson(snapshot.values).encodeToByteArray()
        http.createContext("/") { ex -> serve(ex, snapshot, discovery, dispatcher) }
        http.executor = httpThreads
        http.start()
        return KilnServer(http, httpThreads, dispatcher, host)
    }

    /**
     * Starts serving (see [start]), prints one line `listening on http://HOST:PORT` to stdout and
     * blocks until the server is stopped (normally: until the process ends).
     */
    public fun listen(port: Int = defaultPort(), host: String = defaultHost()) {
        val server = start(port, host)
        println("listening on http://${server.host}:${server.port}")
        System.out.flush()
        server.awaitStop()
    }

    /** The default JSON settings of an endpoint. */
    public companion object {
        /**
         * The default [json]: kotlinx.serialization's defaults, but unknown keys are ignored (a
         * newer caller may send fields this code does not know yet) and default values are encoded
         * (a field `closed: Boolean = false` is written to outputs and state, so every reader sees
         * it, whatever its own defaults).
         */
        public val defaultJson: Json get() = KilnJson

        private const val BACKLOG = 256

        private fun defaultPort(): Int = System.getenv("PORT")?.trim()?.takeIf { it.isNotEmpty() }?.toInt() ?: 9080
        private fun defaultHost(): String =
            System.getenv("BIND_HOST")?.trim()?.takeIf { it.isNotEmpty() } ?: "127.0.0.1"

        private fun namedThreads(prefix: String): ThreadFactory {
            val n = AtomicInteger()
            return ThreadFactory { r -> Thread(r, "$prefix-${n.incrementAndGet()}").apply { isDaemon = true } }
        }
    }
}

/** A running endpoint, returned by [KilnEndpoint.start]. */
public class KilnServer internal constructor(
    private val http: HttpServer,
    private val httpThreads: ExecutorService,
    private val dispatcher: ExecutorCoroutineDispatcher,
    /** The address the server is bound to. */
    public val host: String,
) : AutoCloseable {
    private val stopped = CountDownLatch(1)
    private val stopping = AtomicBoolean(false)

    /** The port the server listens on (the real one when started with port 0). */
    public val port: Int = http.address.port

    /** Stops the server at once: closes the listener and every open invocation stream. */
    public fun stop() {
        if (!stopping.compareAndSet(false, true)) return
        http.stop(0)
        httpThreads.shutdownNow()
        dispatcher.close()
        stopped.countDown()
    }

    /** Same as [stop]. */
    override fun close(): Unit = stop()

    /** Blocks until [stop] has been called. */
    public fun awaitStop() {
        stopped.await()
    }
}

private const val PROTOCOL_CONTENT_TYPE = "application/vnd.kiln.v1"

private fun serve(
    ex: HttpExchange,
    services: Map<String, ServiceDefinition>,
    discovery: ByteArray,
    dispatcher: ExecutorCoroutineDispatcher,
) {
    try {
        val path = ex.requestURI.path
        when {
            path == "/discover" ->
                if (ex.requestMethod == "GET") {
                    respond(ex, 200, "application/json", discovery)
                } else {
                    respondText(ex, 405, "use GET /discover")
                }
            path.startsWith("/invoke/") ->
                if (ex.requestMethod == "POST") {
                    invoke(ex, path.removePrefix("/invoke/"), services, dispatcher)
                } else {
                    respondText(ex, 405, "use POST /invoke/{service}/{handler}")
                }
            else -> respondText(ex, 404, "not found: $path")
        }
    } catch (e: IOException) {
        // the peer went away; nothing to report to it
    } catch (e: Throwable) {
        endpointLog.warn("unexpected error serving {} {}", ex.requestMethod, ex.requestURI, e)
    } finally {
        ex.close()
    }
}

private fun invoke(
    ex: HttpExchange,
    target: String,
    services: Map<String, ServiceDefinition>,
    dispatcher: ExecutorCoroutineDispatcher,
) {
    val parts = target.split('/')
    val service = if (parts.size == 2) services[parts[0]] else null
    val handler = service?.handlers?.get(parts[1])
    if (handler == null) {
        respondText(ex, 404, "unknown service or handler: $target")
        return
    }
    ex.responseHeaders.set("content-type", PROTOCOL_CONTENT_TYPE)
    ex.sendResponseHeaders(200, 0) // chunked; flushed now, before the request body ends
    val sink = StreamFrameSink(ex.responseBody)
    try {
        Invocation(handler, StreamFrameSource(ex.requestBody), sink, dispatcher).run()
    } finally {
        sink.close()
    }
}

private fun respondText(ex: HttpExchange, status: Int, text: String) =
    respond(ex, status, "text/plain; charset=utf-8", text.encodeToByteArray())

private fun respond(ex: HttpExchange, status: Int, contentType: String, body: ByteArray) {
    ex.responseHeaders.set("content-type", contentType)
    ex.sendResponseHeaders(status, if (body.isEmpty()) -1 else body.size.toLong())
    if (body.isNotEmpty()) ex.responseBody.use { it.write(body) }
}
