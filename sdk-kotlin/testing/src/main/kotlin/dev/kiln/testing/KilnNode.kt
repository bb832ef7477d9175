// A real `kiln serve` process for tests: free ports, a temporary data dir, a log file, and the
// test's services served from this JVM and registered with it.
package dev.kiln.testing

import dev.kiln.client.KilnClient
import dev.kiln.sdk.KilnEndpoint
import dev.kiln.sdk.KilnServer
import java.io.IOException
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.TimeUnit
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds
import kotlin.time.TimeSource

/**
 * A running `kiln serve` process on free local ports and a temporary data directory, with
 * [services] served by an in-process [KilnEndpoint] (on a free port) and registered with it.
 * [KilnTest] starts one per test class; start one directly with [start] elsewhere, and [close] it.
 *
 * kiln's stdout and stderr go to [logFile], which is kept; the data directory is deleted by
 * [close].
 *
 * @property ingressUrl the node's ingress, e.g. `http://127.0.0.1:41234`.
 * @property adminUrl the node's admin API.
 * @property dataDir the node's (temporary) data directory.
 * @property logFile the file kiln's output goes to.
 * @property client a [KilnClient] of [ingressUrl].
 */
public class KilnNode private constructor(
    private val process: Process,
    private val tempDir: Path,
    public val ingressUrl: String,
    public val adminUrl: String,
    public val dataDir: Path,
    public val logFile: Path,
) : AutoCloseable {
    public val client: KilnClient = KilnClient(ingressUrl)

    /** The in-process endpoint serving the services, `null` when none were given. */
    public var endpointUrl: String? = null
        private set

    @Volatile
    private var server: KilnServer? = null

    @Volatile
    private var closed = false
    private val hook = Thread({ process.destroyForcibly() }, "kiln-testing-stop")

    init {
        Runtime.getRuntime().addShutdownHook(hook)
    }

    /** `true` while the kiln process runs. */
    public val isRunning: Boolean get() = process.isAlive

    /**
     * Registers the SDK endpoint at [uri] (e.g. `http://127.0.0.1:9080`) with the node: admin
     * `POST /deployments {"uri": …}`, which discovers its services. Returns the admin API's answer.
     *
     * @throws IllegalStateException when the node refuses the registration.
     */
    public fun register(uri: String): String {
        val body = "{\"uri\":\"${uri.replace("\\", "\\\\").replace("\"", "\\\"")}\"}"
        val response = admin("POST", "/deployments", body)
        check(response.statusCode() in 200..299) {
            "registering $uri with kiln answered ${response.statusCode()}: ${response.body()} (kiln's log: $logFile)"
        }
        return response.body()
    }

    /** `GET` [path] of the admin API (e.g. `/invocations/inv_…`) and returns the body; throws unless 2xx. */
    public fun adminGet(path: String): String {
        val response = admin("GET", path, null)
        check(response.statusCode() in 200..299) {
            "GET $adminUrl$path answered ${response.statusCode()}: ${response.body()}"
        }
        return response.body()
    }

    /**
     * Stops the endpoint and the kiln process (SIGTERM, then SIGKILL after 10 s) and deletes the
     * data directory. Idempotent.
     */
    override fun close() {
        if (closed) return
        closed = true
        server?.stop()
        stop(process)
        deleteRecursively(tempDir)
        runCatching { Runtime.getRuntime().removeShutdownHook(hook) }
    }

    /** Returns the URLs and the log file. */
    override fun toString(): String = "KilnNode(ingress=$ingressUrl, admin=$adminUrl, log=$logFile)"

    private fun admin(method: String, path: String, body: String?): HttpResponse<String> {
        val publisher = body?.let { HttpRequest.BodyPublishers.ofString(it) } ?: HttpRequest.BodyPublishers.noBody()
        val request = HttpRequest.newBuilder(URI.create(adminUrl + path))
            .header("content-type", "application/json")
            .timeout(java.time.Duration.ofSeconds(30))
            .method(method, publisher)
            .build()
        return HTTP.send(request, HttpResponse.BodyHandlers.ofString())
    }

    /** Starting nodes. */
    public companion object {
        private val HTTP: HttpClient = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(java.time.Duration.ofSeconds(5))
            .build()
        private const val PORT_ATTEMPTS = 3
        private const val POLL_MS = 50L
        private const val CONNECT_TIMEOUT_MS = 1000
        private const val TAIL_LINES = 40

        /**
         * Starts kiln ([binary], by default [KilnBinary.locate]) with [kilnArgs] added to its
         * flags, waits until its admin `GET /health` answers `ok` (at most [startupTimeout]), then
         * serves [services] (instances of annotated classes) from this JVM and registers them.
         *
         * @param logFile where kiln's output goes; by default a new file in [defaultLogDir].
         * @throws IllegalStateException when kiln does not start, with the log's path and its last lines.
         */
        public fun start(
            services: List<Any> = emptyList(),
            kilnArgs: List<String> = emptyList(),
            binary: Path = KilnBinary.locate(),
            logFile: Path? = null,
            startupTimeout: Duration = 30.seconds,
        ): KilnNode {
            val log = logFile ?: newLogFile("kiln")
            Files.createDirectories(log.toAbsolutePath().parent)
            val endpoint = if (services.isEmpty()) null else KilnEndpoint().apply { services.forEach { bind(it) } }
            var attempt = 1
            while (true) {
                val tempDir = Files.createTempDirectory("kiln-test-")
                val node = try {
                    launch(binary, kilnArgs, tempDir, log, startupTimeout)
                } catch (e: PortTakenException) {
                    deleteRecursively(tempDir)
                    if (attempt++ < PORT_ATTEMPTS) continue
                    throw IllegalStateException("kiln could not bind its ports $PORT_ATTEMPTS times (kiln's log: $log)")
                } catch (e: Throwable) {
                    deleteRecursively(tempDir)
                    throw e
                }
                try {
                    if (endpoint != null) node.serve(endpoint)
                } catch (e: Throwable) {
                    node.close()
                    throw e
                }
                return node
            }
        }

        /**
         * Where logs go when no file is given: the system property `kiln.test.logDir` if set,
         * else `target/kiln-logs` (Maven) or `build/kiln-logs` (Gradle) of the working directory
         * when that build directory exists, else `kiln-logs` in the temporary directory.
         */
        public fun defaultLogDir(): Path {
            System.getProperty("kiln.test.logDir")?.takeIf { it.isNotBlank() }?.let { return Path.of(it) }
            val cwd = Path.of(System.getProperty("user.dir"))
            val build = listOf("target", "build").map { cwd.resolve(it) }.firstOrNull { Files.isDirectory(it) }
            return (build ?: Path.of(System.getProperty("java.io.tmpdir"))).resolve("kiln-logs")
        }

        /** A new log file `<name>-<n>.log` in [defaultLogDir]. */
        internal fun newLogFile(name: String): Path {
            val dir = defaultLogDir()
            Files.createDirectories(dir)
            val safe = name.replace(Regex("[^A-Za-z0-9._-]"), "_")
            var n = 1
            while (true) {
                val candidate = dir.resolve(if (n == 1) "$safe.log" else "$safe-$n.log")
                try {
                    return Files.createFile(candidate)
                } catch (e: java.nio.file.FileAlreadyExistsException) {
                    n++
                }
            }
        }

        private fun launch(
            binary: Path,
            kilnArgs: List<String>,
            tempDir: Path,
            log: Path,
            timeout: Duration,
        ): KilnNode {
            val (ingress, admin, peer) = freePorts(3)
            val dataDir = tempDir.resolve("data")
            val command = listOf(
                binary.toString(), "serve",
                "--data-dir", dataDir.toString(),
                "--ingress-addr", "127.0.0.1:$ingress",
                "--admin-addr", "127.0.0.1:$admin",
                "--peer-addr", "127.0.0.1:$peer",
            ) + kilnArgs
            val mark = Files.size(log)
            Files.writeString(
                log,
                "==> ${command.joinToString(" ")}\n",
                java.nio.file.StandardOpenOption.APPEND,
            )
            val builder = ProcessBuilder(command)
                .redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()))
                .redirectInput(ProcessBuilder.Redirect.from(java.io.File("/dev/null")))
            // Only the flags given here configure the node: no KILN_* from the caller's environment.
            builder.environment().keys.removeIf { it.startsWith("KILN_") }
            builder.environment().putIfAbsent("RUST_LOG", "info")
            builder.environment()["NO_COLOR"] = "1"
            val process = builder.start()
            val node = KilnNode(
                process,
                tempDir,
                ingressUrl = "http://127.0.0.1:$ingress",
                adminUrl = "http://127.0.0.1:$admin",
                dataDir = dataDir,
                logFile = log,
            )
            try {
                node.awaitReady(ingress, timeout, mark)
            } catch (e: Throwable) {
                node.close()
                throw e
            }
            return node
        }

        private fun freePorts(n: Int): List<Int> {
            val sockets = (1..n).map { ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress()) }
            return try {
                sockets.map { it.localPort }
            } finally {
                sockets.forEach { it.close() }
            }
        }

        private fun stop(process: Process) {
            if (!process.isAlive) return
            process.destroy()
            if (!process.waitFor(10, TimeUnit.SECONDS)) {
                process.destroyForcibly()
                process.waitFor(10, TimeUnit.SECONDS)
            }
        }

        private fun deleteRecursively(dir: Path) {
            if (!Files.exists(dir)) return
            Files.walk(dir).use { paths ->
                paths.sorted(Comparator.reverseOrder()).forEach { runCatching { Files.deleteIfExists(it) } }
            }
        }
    }

    private class PortTakenException : RuntimeException()

    /** Polls admin `GET /health` until `ok`, then checks that the ingress accepts connections. */
    private fun awaitReady(ingressPort: Int, timeout: Duration, logMark: Long) {
        val started = TimeSource.Monotonic.markNow()
        var last = "no answer yet"
        while (true) {
            if (!process.isAlive) {
                val tail = logTail(logMark)
                if ("Address already in use" in tail) throw PortTakenException()
                throw IllegalStateException(
                    "kiln exited during start-up with status ${process.exitValue()}; kiln's log: $logFile\n$tail",
                )
            }
            try {
                val r = admin("GET", "/health", null)
                if (r.statusCode() == 200 && r.body().contains("\"ok\"")) break
                last = "GET /health answered ${r.statusCode()}: ${r.body()}"
            } catch (e: IOException) {
                last = e.toString()
            }
            check(started.elapsedNow() < timeout) {
                "kiln did not get ready within $timeout (last: $last); kiln's log: $logFile\n${logTail(logMark)}"
            }
            Thread.sleep(POLL_MS)
        }
        while (true) {
            try {
                Socket().use { it.connect(InetSocketAddress("127.0.0.1", ingressPort), CONNECT_TIMEOUT_MS) }
                return
            } catch (e: IOException) {
                check(started.elapsedNow() < timeout) {
                    "kiln's ingress does not accept connections: $e; kiln's log: $logFile"
                }
                Thread.sleep(POLL_MS)
            }
        }
    }

    /** Serves [endpoint] on a free port and registers it. */
    private fun serve(endpoint: KilnEndpoint) {
        val started = endpoint.start(port = 0, host = "127.0.0.1")
        server = started
        val url = "http://127.0.0.1:${started.port}"
        endpointUrl = url
        register(url)
    }

    /** The log's last lines written since [mark]. */
    private fun logTail(mark: Long): String = runCatching {
        val bytes = Files.readAllBytes(logFile)
        val text = bytes.copyOfRange(minOf(mark, bytes.size.toLong()).toInt(), bytes.size).decodeToString()
        text.lines().takeLast(TAIL_LINES).joinToString("\n")
    }.getOrDefault("")
}
