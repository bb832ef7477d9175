// The ingress HTTP API as requests and response decoders, shared by the suspending and the
// blocking client: `POST /{Service}/{handler}`, `POST /{Object}/{key}/{handler}`, `…/send`
// (`?delay=`), header `idempotency-key`, `GET /invocations/{id}/attach|output`.
package dev.kiln.client

import dev.kiln.sdk.TerminalException
import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.intOrNull
import java.net.URI
import java.net.URLEncoder
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import kotlin.time.Duration
import kotlin.time.toJavaDuration

/** A request and how to read its response. */
internal class Exchange<T>(val request: HttpRequest, val decode: (HttpResponse<ByteArray>) -> T)

internal class Ingress(
    baseUrl: String,
    private val json: Json,
    private val defaultHeaders: Map<String, String>,
    private val requestTimeout: Duration?,
) {
    /** The base URL without a trailing slash. */
    val base: String = baseUrl.trimEnd('/')

    init {
        val uri = URI(base)
        require(uri.scheme == "http" || uri.scheme == "https") {
            "ingress URL must be http(s)://host:port, got $baseUrl"
        }
    }

    fun <O> call(
        target: HandlerTarget,
        key: String?,
        input: Any?,
        hasInput: Boolean,
        options: InvocationOptions,
    ): Exchange<O> {
        target.check(key, hasInput)
        val request = invokeRequest(target, key, input, "", options)
        val output = outputOf<O>(target)
        return Exchange(request) { decodeOutput(it, output) }
    }

    fun <O> send(
        target: HandlerTarget,
        key: String?,
        input: Any?,
        hasInput: Boolean,
        delay: Duration,
        options: InvocationOptions,
    ): Exchange<SentInvocation<O>> {
        target.check(key, hasInput)
        require(!delay.isNegative()) { "delay must not be negative, got $delay" }
        val query = if (delay == Duration.ZERO) "/send" else "/send?delay=${delay.inWholeMilliseconds}ms"
        val request = invokeRequest(target, key, input, query, options)
        val output = outputOf<O>(target)
        return Exchange(request) { decodeSent(it, output) }
    }

    fun <O> attach(invocationId: String, output: KSerializer<O>): Exchange<O> =
        Exchange(get("/invocations/${segment(invocationId)}/attach")) { decodeOutput(it, output) }

    fun <O> output(invocationId: String, output: KSerializer<O>): Exchange<InvocationOutput<O>> =
        Exchange(get("/invocations/${segment(invocationId)}/output")) {
            if (it.statusCode() ==
                NOT_READY
            ) {
                InvocationOutput.Pending
            } else {
                InvocationOutput.Ready(decodeOutput(it, output))
            }
        }

    @Suppress("UNCHECKED_CAST")
    private fun <O> outputOf(target: HandlerTarget): KSerializer<O> = target.outputSerializer as KSerializer<O>

    private fun invokeRequest(
        target: HandlerTarget,
        key: String?,
        input: Any?,
        suffix: String,
        options: InvocationOptions,
    ): HttpRequest {
        val path = buildString {
            append('/').append(segment(target.service))
            if (key != null) append('/').append(segment(key))
            append('/').append(segment(target.handler))
            append(suffix)
        }
        val body = target.inputSerializer?.let { json.encodeToString(it, input).encodeToByteArray() } ?: ByteArray(0)
        val builder = builder(path, options)
            .header("content-type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofByteArray(body))
        options.idempotencyKey?.let { builder.header("idempotency-key", it) }
        return builder.build()
    }

    private fun get(path: String): HttpRequest = builder(path, InvocationOptions.NONE).GET().build()

    private fun builder(path: String, options: InvocationOptions): HttpRequest.Builder {
        val builder = HttpRequest.newBuilder(URI.create(base + path))
        for ((name, value) in defaultHeaders + options.headers) builder.header(name, value)
        requestTimeout?.let { builder.timeout(it.toJavaDuration()) }
        return builder
    }

    private fun <O> decodeOutput(response: HttpResponse<ByteArray>, output: KSerializer<O>): O {
        if (response.statusCode() !in 200..299) throw failure(response)
        return decodePayload(output, response.body())
    }

    private fun <O> decodeSent(response: HttpResponse<ByteArray>, output: KSerializer<O>): SentInvocation<O> {
        if (response.statusCode() !in 200..299) throw failure(response)
        val body = parseObject(response.body())
        val id = (body?.get("invocationId") as? JsonPrimitive)?.content
            ?: throw KilnRequestException(
                response.statusCode(),
                null,
                "send answered without an invocationId: ${text(response)}",
            )
        val status = (body["status"] as? JsonPrimitive)?.content
        return SentInvocation(id, status == "PreviouslyAccepted", output)
    }

    /**
     * A failed answer: a [TerminalException] when it is an invocation's failure output (the answer
     * names the invocation in `x-kiln-invocation-id`), else a [KilnRequestException].
     */
    private fun failure(response: HttpResponse<ByteArray>): RuntimeException {
        val status = response.statusCode()
        val body = parseObject(response.body())
        val code = (body?.get("code") as? JsonPrimitive)?.intOrNull
        val message = (body?.get("message") as? JsonPrimitive)?.content
        val invocation = response.headers().firstValue(INVOCATION_ID_HEADER).orElse(null)
        return if (invocation != null && code != null && message != null && code in 0..65535) {
            TerminalException(code, message)
        } else {
            val what = "${response.request().method()} ${response.uri().path}"
            KilnRequestException(status, code, "$what answered $status: ${message ?: text(response)}")
        }
    }

    private fun parseObject(bytes: ByteArray): JsonObject? =
        runCatching { json.parseToJsonElement(bytes.decodeToString()) as? JsonObject }.getOrNull()

    private fun text(response: HttpResponse<ByteArray>): String = response.body().decodeToString().take(MAX_QUOTED)

    /**
     * Decodes a JSON payload; an empty payload is `Unit` for a Unit serializer and `null` for a
     * nullable one (the SDK's encoding of "no value").
     */
    @Suppress("UNCHECKED_CAST")
    private fun <T> decodePayload(serializer: KSerializer<T>, bytes: ByteArray): T {
        if (bytes.isEmpty()) {
            if (serializer.descriptor.serialName == "kotlin.Unit") return Unit as T
            if (serializer.descriptor.isNullable) return null as T
        }
        return json.decodeFromString(serializer, bytes.decodeToString())
    }

    private companion object {
        const val INVOCATION_ID_HEADER = "x-kiln-invocation-id"

        /** "Not completed yet", as Restate answers it. */
        const val NOT_READY = 470
        const val MAX_QUOTED = 500

        /** A path segment, percent-encoded (UTF-8; `/`, space and everything but `A-Za-z0-9.-*_`). */
        fun segment(s: String): String = URLEncoder.encode(s, Charsets.UTF_8).replace("+", "%20")
    }
}
