// The client of Kiln's ingress API for plain JVM code: calls, sends and attaches, typed by function
// references to the handlers (`client.call(Counter::add, "my-key", 5L)`), no code generation.
package dev.kiln.client

import dev.kiln.sdk.Context
import dev.kiln.sdk.WorkflowContext
import kotlinx.coroutines.future.await
import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.serializer
import java.net.http.HttpClient
import java.net.http.HttpResponse
import kotlin.reflect.KSuspendFunction2
import kotlin.reflect.KSuspendFunction3
import kotlin.time.Duration

/**
 * A client of a Kiln node's ingress (default `http://127.0.0.1:8080`): calls and sends to
 * handlers, and attaches to invocations, from code that is not a handler.
 *
 * ```
 * val kiln = KilnClient("http://127.0.0.1:8080")
 * val total: Long = kiln.call(Counter::add, "my-key", 5L)        // virtual object: key, input
 * val s: String = kiln.call(Steps::threeStep, "x")                // stateless service: no key
 * val sent = kiln.send(Counter::add, "my-key", 1L, delay = 10.seconds)
 * val later: Long = kiln.attach(sent)                             // waits for its output
 * ```
 *
 * Targets are **unbound function references** (`Class::handler`) to handlers of annotated classes;
 * names, key and encodings follow the SDK's rules for `ctx.call` (service name from the class
 * annotation or the simple class name, handler name from `@Handler(name)` or the function name,
 * JSON via kotlinx.serialization from the parameter and return types). Handlers of virtual objects
 * and workflows take a key, stateless services' handlers (those taking a plain [Context]) do not:
 * passing a key to a [Context] handler does not compile.
 *
 * Every function suspends without blocking a thread; [blocking] offers the same calls for code
 * without coroutines. A handler's terminal failure is thrown as the SDK's
 * [dev.kiln.sdk.TerminalException] with its code and message; a request the ingress refuses (an
 * unknown service, overload, …) as [KilnRequestException]; a connection failure as the JDK's
 * `java.io.IOException`.
 *
 * A client holds no resources of its own beyond [httpClient]; it is safe for concurrent use.
 *
 * @param ingressUrl the ingress base URL, e.g. `http://127.0.0.1:8080`.
 * @param httpClient the JDK HTTP client to use (default: HTTP/1.1, 10 s connect timeout).
 * @param json encodes inputs and decodes outputs; use the same configuration as the services.
 * @param headers default headers sent with every request.
 * @param requestTimeout the longest a request may take (`null`: no limit; a call waits for its
 *   handler to finish, which may take long when it sleeps or waits for an awakeable).
 */
public class KilnClient(
    ingressUrl: String,
    private val httpClient: HttpClient = defaultHttpClient(),
    json: Json = DEFAULT_JSON,
    headers: Map<String, String> = emptyMap(),
    requestTimeout: Duration? = null,
) {
    internal val ingress: Ingress = Ingress(ingressUrl, json, headers, requestTimeout)

    /** The ingress base URL, without a trailing slash. */
    public val ingressUrl: String get() = ingress.base

    /** The same client with blocking functions, for code without coroutines. */
    public val blocking: BlockingKilnClient = BlockingKilnClient(this)

    // ---- calls: send the request, wait for the handler's output ----

    /**
     * Calls [handler] of the virtual object or workflow instance [key] with [input] and returns its
     * output: `client.call(Counter::add, "my-key", 5L)`.
     *
     * @throws dev.kiln.sdk.TerminalException the handler's terminal failure.
     * @throws KilnRequestException the ingress refused the request.
     */
    public suspend fun <I, O> call(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        key: String,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = exchange(ingress.call(HandlerTargets.of(handler), key, input, hasInput = true, options))

    /** Calls [handler], which takes no input, of the virtual object or workflow instance [key]: `client.call(Counter::get, "my-key")`. */
    public suspend fun <O> call(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        key: String,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = exchange(ingress.call(HandlerTargets.of(handler), key, null, hasInput = false, options))

    /** Calls [handler] of a stateless service with [input]: `client.call(Steps::threeStep, "x")`. */
    public suspend fun <I, O> call(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = exchange(ingress.call(HandlerTargets.of(handler), null, input, hasInput = true, options))

    /** Calls [handler], which takes no input, of a stateless service: `client.call(Clock::now)`. */
    public suspend fun <O> call(
        handler: KSuspendFunction2<Nothing, Context, O>,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = exchange(ingress.call(HandlerTargets.of(handler), null, null, hasInput = false, options))

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("callServiceWithKey")
    public suspend fun <I, O> call(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        key: String,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(NO_KEY_FOR_SERVICES)

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("callServiceWithKeyNoInput")
    public suspend fun <O> call(
        handler: KSuspendFunction2<Nothing, Context, O>,
        key: String,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(NO_KEY_FOR_SERVICES)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("callObjectWithoutKey")
    public suspend fun <I, O> call(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KEY_FOR_OBJECTS)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("callObjectWithoutKeyNoInput")
    public suspend fun <O> call(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KEY_FOR_OBJECTS)

    // ---- sends: returns once the invocation is durable ----

    /**
     * Sends [input] to [handler] of the virtual object or workflow instance [key], to run after
     * [delay] (zero: at once), and returns once the runtime has made the invocation durable — not
     * when it has run. The result names the invocation for [attach] and [output].
     *
     * @throws KilnRequestException the ingress refused the request.
     */
    public suspend fun <I, O> send(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        key: String,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        exchange(ingress.send(HandlerTargets.of(handler), key, input, hasInput = true, delay, options))

    /** Sends to [handler], which takes no input, of the instance [key] (see the keyed [send] with input). */
    public suspend fun <O> send(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        key: String,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        exchange(ingress.send(HandlerTargets.of(handler), key, null, hasInput = false, delay, options))

    /** Sends [input] to [handler] of a stateless service (see the keyed [send]). */
    public suspend fun <I, O> send(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        exchange(ingress.send(HandlerTargets.of(handler), null, input, hasInput = true, delay, options))

    /** Sends to [handler], which takes no input, of a stateless service (see the keyed [send]). */
    public suspend fun <O> send(
        handler: KSuspendFunction2<Nothing, Context, O>,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        exchange(ingress.send(HandlerTargets.of(handler), null, null, hasInput = false, delay, options))

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("sendServiceWithKey")
    public suspend fun <I, O> send(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        key: String,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(NO_KEY_FOR_SERVICES)

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("sendServiceWithKeyNoInput")
    public suspend fun <O> send(
        handler: KSuspendFunction2<Nothing, Context, O>,
        key: String,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(NO_KEY_FOR_SERVICES)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("sendObjectWithoutKey")
    public suspend fun <I, O> send(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KEY_FOR_OBJECTS)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("sendObjectWithoutKeyNoInput")
    public suspend fun <O> send(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KEY_FOR_OBJECTS)

    // ---- attach and output: the result of an invocation by its id ----

    /**
     * Waits until the invocation [sent] has finished and returns its output (or throws its
     * terminal failure as [dev.kiln.sdk.TerminalException]); at once if it has finished already.
     */
    public suspend fun <O> attach(sent: SentInvocation<O>): O = attach(sent.invocationId, sent.outputSerializer)

    /** Waits for the invocation [invocationId] to finish and returns its output decoded with [serializer]. */
    public suspend fun <O> attach(invocationId: String, serializer: KSerializer<O>): O =
        exchange(ingress.attach(invocationId, serializer))

    /**
     * Returns the output of the invocation [sent] if it has finished ([InvocationOutput.Ready]),
     * else [InvocationOutput.Pending], without waiting. A terminal failure is thrown as
     * [dev.kiln.sdk.TerminalException].
     */
    public suspend fun <O> output(sent: SentInvocation<O>): InvocationOutput<O> =
        output(sent.invocationId, sent.outputSerializer)

    /** [output] of the invocation [invocationId], decoded with [serializer]. */
    public suspend fun <O> output(invocationId: String, serializer: KSerializer<O>): InvocationOutput<O> =
        exchange(ingress.output(invocationId, serializer))

    /** Waits for the invocation [invocationId] to finish and returns its output as [O]: `client.attach<Long>(id)`. */
    public suspend inline fun <reified O> attach(invocationId: String): O = attach(invocationId, serializer<O>())

    /** [output] of the invocation [invocationId] as [O]: `client.output<Long>(id)`. */
    public suspend inline fun <reified O> output(invocationId: String): InvocationOutput<O> =
        output(invocationId, serializer<O>())

    /** Returns the ingress URL. */
    override fun toString(): String = "KilnClient($ingressUrl)"

    private suspend fun <T> exchange(exchange: Exchange<T>): T =
        exchange.decode(httpClient.sendAsync(exchange.request, HttpResponse.BodyHandlers.ofByteArray()).await())

    internal fun <T> exchangeBlocking(exchange: Exchange<T>): T =
        exchange.decode(httpClient.send(exchange.request, HttpResponse.BodyHandlers.ofByteArray()))

    /** Defaults. */
    public companion object {
        /** The JSON configuration of the SDK's payloads: kotlinx.serialization defaults, unknown keys ignored. */
        public val DEFAULT_JSON: Json = Json { ignoreUnknownKeys = true }

        /** An HTTP/1.1 client with a 10 s connect timeout, the default of [KilnClient]. */
        public fun defaultHttpClient(): HttpClient = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(java.time.Duration.ofSeconds(10))
            .build()

        internal const val NO_KEY_FOR_SERVICES: String =
            "The handler takes Context, so it belongs to a stateless @Service, which has no key: " +
                "call it without a key, as client.call(Service::handler, input) or client.send(Service::handler, input)."

        internal const val KEY_FOR_OBJECTS: String =
            "The handler takes an object or workflow context, so it belongs to a @VirtualObject or @Workflow: " +
                "pass the key first, as client.call(Object::handler, key, input) or client.send(Object::handler, key, input)."
    }
}
