// The public API of the Kiln Kotlin SDK. Everything a handler author uses is in this file, in
// TypedCalls.kt and in KilnEndpoint.kt; every other declaration of the SDK is `internal`. (The
// lower-case file name is deliberate, hence the suppressed ktlint filename rule.)
@file:Suppress("ktlint:standard:filename")

package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.modules.SerializersModule
import kotlinx.serialization.serializer
import org.slf4j.Logger
import kotlin.random.Random
import kotlin.reflect.KType
import kotlin.reflect.typeOf
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

// ---------------------------------------------------------------------------------------------
// Annotations
// ---------------------------------------------------------------------------------------------

/**
 * Marks a class as a stateless **service**. Every handler of a service is `shared` and receives a
 * [Context].
 *
 * @property name the service name used in URLs and discovery; empty means the class's simple name.
 *   Names must match `[A-Za-z_][A-Za-z0-9_]*`.
 */
@Target(AnnotationTarget.CLASS)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Service(val name: String = "")

/**
 * Marks a class as a **virtual object**: a keyed entity with private K/V state. Handlers are
 * exclusive (one at a time per key, receive an [ObjectContext]) unless annotated [Shared]
 * (concurrent, read-only, receive a [SharedObjectContext]).
 *
 * @property name the object type name; empty means the class's simple name.
 */
@Target(AnnotationTarget.CLASS)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class VirtualObject(val name: String = "")

/**
 * On a class: marks it as a **workflow**, a keyed service whose run handler executes once per
 * workflow key (a second invocation of the run handler with the same key attaches to the first).
 *
 * On a `suspend` member function of such a class: marks that function as the workflow's **run
 * handler** (discovery kind `workflow`). It receives a [WorkflowContext] (state reads and writes,
 * durable promises). Exactly one function of a workflow carries `@Workflow`; every other handler
 * (annotated [Handler] or [Shared]) is `shared` and receives a [SharedWorkflowContext], typically
 * to signal the run (resolve a promise) or to query it (read state, peek a promise).
 *
 * @property name on a class: the workflow's service name (empty: the class's simple name); on a
 *   function: the run handler's name (empty: the function's name).
 */
@Target(AnnotationTarget.CLASS, AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Workflow(val name: String = "")

/**
 * Marks a `suspend` member function of a [Service], [VirtualObject] or [Workflow] class as a
 * handler.
 *
 * A handler takes a context as its first parameter ([Context]; in virtual objects
 * [SharedObjectContext] or, for exclusive handlers, [ObjectContext]; in workflows
 * [SharedWorkflowContext] or, for the run handler, [WorkflowContext]) and optionally one input
 * parameter; input and return value are JSON via kotlinx.serialization (an empty request body
 * means "no input", i.e. `null`; a `Unit` result is an empty body). In a workflow every `@Handler`
 * is shared; the run handler is annotated [Workflow] instead.
 *
 * @property name the handler name; empty means the function's name.
 */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Handler(val name: String = "")

/**
 * Marks a handler of a [VirtualObject] or [Workflow] as **shared**: it may run concurrently with
 * other handlers of the same key and may read, but never write, state. Implies [Handler] (a
 * function annotated only with `@Shared` is a handler named after the function).
 */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Shared

/**
 * Overrides the runtime's retry policy for one handler: published in discovery as the handler's
 * `retryPolicy` (protocol §5). Only the fields given (not `-1`) are published; the runtime's
 * defaults apply to the others (`kiln serve`: 100 ms initial, doubling up to 10 000 ms, 1000
 * attempts).
 *
 * @property initialIntervalMs delay before the first retry, in ms; `-1`: runtime default.
 * @property maxIntervalMs upper bound of the (doubling) delay, in ms; `-1`: runtime default.
 * @property maxAttempts attempts before the invocation fails with code 500; `-1`: runtime default.
 */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Retry(val initialIntervalMs: Long = -1, val maxIntervalMs: Long = -1, val maxAttempts: Int = -1)

// ---------------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------------

/**
 * The context of every handler: durable side effects, deterministic randomness and the
 * invocation's identity. A context belongs to one invocation attempt.
 *
 * Commands may be issued from the handler's coroutine and from coroutines it starts without a
 * dispatcher (`coroutineScope { async { ctx.run(…) } }`): all of them run on one thread of the
 * invocation, each command takes its journal position when it is issued, and awaits resume one at a
 * time in an order that is journaled, so a replay repeats the same sequence. A command issued inside
 * a `run` block, or from another dispatcher or thread, ends the invocation with a terminal error
 * (code 572) whose message names the fix.
 */
public sealed interface Context {
    /** The id of this invocation, identical on every attempt. */
    public val invocationId: String

    /**
     * A logger (SLF4J, named after the service's class) that is **silent while the invocation
     * replays**: until the attempt has consumed the journal entries known when it started, the code
     * re-executes what an earlier attempt already ran and logged. After the last of them (e.g. right
     * after a replayed `run`) it logs normally. While the handler's code (its coroutines and `run`
     * blocks) runs, the MDC holds `kiln.invocationId`, `kiln.service` and `kiln.handler`.
     */
    public val logger: Logger

    /**
     * Runs [block] once and journals its result under [name]: the block's value (encoded with
     * [serializer]) or, if it throws [TerminalException], that failure. The result is returned
     * only after the runtime has acknowledged it as durable. On a replay the recorded result is
     * returned (or the recorded failure rethrown) without running [block] again.
     *
     * Any other exception thrown by [block] fails the whole attempt (retryable); nothing is
     * journaled, so the block runs again on the next attempt.
     */
    public suspend fun <T> run(name: String, serializer: KSerializer<T>, block: suspend () -> T): T

    /**
     * Like [run], but retries [block] in this process when it throws anything other than
     * [TerminalException], waiting with exponential back-off per [retryPolicy] between tries.
     * When [RetryPolicy.maxAttempts] tries have failed, the step is journaled as a failure with
     * code 500 and the last exception's message, and a [TerminalException] with that code and
     * message is thrown (also on every replay). A [TerminalException] from [block] is journaled at
     * once, without retrying.
     */
    public suspend fun <T> run(
        name: String,
        retryPolicy: RetryPolicy,
        serializer: KSerializer<T>,
        block: suspend () -> T,
    ): T

    /**
     * Starts [block] as the durable step [name] and returns its future at once, so that several
     * steps run in parallel: `val a = ctx.runAsync("a") { … }; val b = ctx.runAsync("b") { … }`
     * then `awaitAll(a, b)`. The step takes its journal position when it is started, in program
     * order; its result (value or [TerminalException]) is journaled as for [run], and the future
     * completes once the runtime has acknowledged it as durable. On a replay a journaled step is
     * not run again; its future completes with the recorded result. A step whose block is still
     * running holds back the journaling (not the execution) of every later command until it ends.
     *
     * Any other exception thrown by [block] fails the whole attempt (retryable), as for [run].
     */
    public fun <T> runAsync(name: String, serializer: KSerializer<T>, block: suspend () -> T): DurableFuture<T>

    /** [runAsync] with in-process retries of [block], as for `run(name, retryPolicy, …)`. */
    public fun <T> runAsync(
        name: String,
        retryPolicy: RetryPolicy,
        serializer: KSerializer<T>,
        block: suspend () -> T,
    ): DurableFuture<T>

    /**
     * A pseudo-random generator seeded from the invocation (`random_seed` of the protocol): it
     * produces the same sequence on every attempt, so its values are safe to use in handler code.
     * Always returns the same instance within one attempt.
     */
    public fun random(): Random

    /**
     * Sleeps durably for [duration]: same as `timer(duration).await()`. While the timer runs, the
     * invocation suspends (this SDK holds no request for it) and is resumed by the runtime when
     * the timer fires.
     */
    public suspend fun sleep(duration: Duration)

    /**
     * Starts a durable timer firing [duration] from now and returns it as a future; awaiting it
     * returns when it has fired. The wake-up time is computed once, at first execution, and
     * journaled: a replay uses the journaled time.
     */
    public fun timer(duration: Duration): DurableFuture<Unit>

    /**
     * Untyped call of [handler] of [service] (for a virtual object or workflow, the instance
     * [key]; `""` for a stateless service) with [input] (JSON bytes; empty for "no input"). The
     * future's value is the callee's output decoded with [outputSerializer]; a terminal failure of
     * the callee is thrown from [DurableFuture.await] as a [TerminalException] with its code and
     * message. Prefer the typed `ctx.call(Counter::add, key, n)` extensions.
     */
    public fun <O> call(
        service: String,
        handler: String,
        key: String,
        input: ByteArray,
        outputSerializer: KSerializer<O>,
    ): DurableFuture<O>

    /**
     * Untyped one-way message to [handler] of [service]/[key] with [input] (JSON bytes), delivered
     * after [delay] (zero: at once). Returns once the message is journaled; the runtime delivers
     * it once durable. Messages from one invocation to one receiver keep their order. Prefer the
     * typed `ctx.send(Counter::add, key, n)` extensions.
     */
    public fun send(service: String, handler: String, key: String, input: ByteArray, delay: Duration = Duration.ZERO)

    /**
     * Creates an awakeable: a future that someone else completes, addressed by its [Awakeable.id]
     * (another handler via [resolveAwakeable]/[rejectAwakeable], or an outside system via the
     * ingress). Its value is decoded with [serializer].
     */
    public fun <T> awakeable(serializer: KSerializer<T>): Awakeable<T>

    /**
     * Completes the awakeable [id] with [value] (encoded with [serializer]). Completing an
     * awakeable that is already completed is refused by the runtime (code 409); this handler does
     * not see that.
     */
    public fun <T> resolveAwakeable(id: String, serializer: KSerializer<T>, value: T)

    /** Completes the awakeable [id] with a failure: its awaiter gets `TerminalException(code, message)`. */
    public fun rejectAwakeable(id: String, message: String, code: Int = 500)
}

/**
 * The context of a virtual object's shared handlers: [Context] plus read access to the object's
 * state. Reads are journaled, so a replay sees exactly what the first execution saw.
 */
public sealed interface SharedObjectContext : Context {
    /** The key of the virtual object this invocation addresses. */
    public val key: String

    /** Returns the value stored under [key], or `null` when there is none. */
    public suspend fun <T> get(key: StateKey<T>): T?

    /** Returns the names of all state entries of this object. */
    public suspend fun stateKeys(): Set<String>
}

/**
 * The context of a virtual object's exclusive handlers: [SharedObjectContext] plus state writes.
 * A write is visible to this invocation's later reads at once and committed atomically with its
 * journal entry.
 */
public sealed interface ObjectContext : SharedObjectContext {
    /** Stores [value] under [key]. */
    public fun <T> set(key: StateKey<T>, value: T)

    /** Removes the value stored under [key], if any. */
    public fun clear(key: StateKey<*>)

    /** Removes every state entry of this object. */
    public fun clearAll()
}

/**
 * The context of a workflow's shared handlers: [SharedObjectContext] (state reads) plus the
 * workflow's durable promises, e.g. to signal the run handler (`promise<String>("x").resolve(v)`)
 * or to query it (`peek()`).
 */
public sealed interface SharedWorkflowContext : SharedObjectContext {
    /**
     * The durable promise [name] of this workflow instance (keyed by the workflow key). Creating the
     * handle journals nothing; its operations do.
     */
    public fun <T> promise(name: String, serializer: KSerializer<T>): DurablePromise<T>
}

/**
 * The context of a workflow's run handler (the function annotated [Workflow]): state reads and
 * writes ([ObjectContext]) plus durable promises ([SharedWorkflowContext]).
 */
public sealed interface WorkflowContext :
    ObjectContext,
    SharedWorkflowContext

// ---------------------------------------------------------------------------------------------
// Durable futures, awakeables, promises
// ---------------------------------------------------------------------------------------------

/**
 * The result of a durable operation ([Context.runAsync], [Context.call], [Context.timer],
 * [Context.awakeable], [DurablePromise.future]) that arrives later. Await it from the handler's
 * coroutines (see [Context] for the concurrency rule).
 *
 * Awaiting a future whose result is not known yet waits for it at most the runtime's
 * `suspend_after_ms`; then (or at once, for a timer that fires later than that) the invocation
 * **suspends**: the SDK ends the attempt and the runtime starts a new one (a replay) once the
 * result is there. Code after the await runs only in that new attempt.
 *
 * When the invocation has been cancelled, the next await of a future that is not completed throws
 * `TerminalException(409, "cancelled")` (once per invocation), so compensation code can run.
 */
public sealed interface DurableFuture<T> {
    /**
     * Returns the result, waiting (or suspending) until it is known. A failure (a callee's terminal
     * failure, a rejected awakeable or promise) is thrown as a [TerminalException] with its code
     * and message.
     */
    public suspend fun await(): T

    /**
     * Like [await], but gives up after [timeout] with `TerminalException(408, …)`. The timeout is a
     * durable timer: this is `awaitAny(this, ctx.timer(timeout))`, journaled as a `sleep` and a
     * `select` entry. After a timeout, the future may still be awaited again.
     */
    public suspend fun await(timeout: Duration): T
}

/**
 * A future completed from outside the handler through its [id]: by another handler
 * ([Context.resolveAwakeable] / [Context.rejectAwakeable]) or by an outside system via the
 * ingress. It may be completed once; a second completion is refused (code 409).
 */
public sealed interface Awakeable<T> : DurableFuture<T> {
    /**
     * `awk_` + the 32 hex digits of the invocation id + 8 hex digits of the awakeable's journal
     * index: derived, identical on every attempt.
     */
    public val id: String
}

/**
 * A durable promise of a workflow instance: completed once (by [resolve] or [reject], from any
 * handler of the workflow), awaited by any of them.
 */
public sealed interface DurablePromise<T> {
    /** The promise's name within its workflow instance. */
    public val name: String

    /** Journals a `get_promise` and returns the future of the promise's value (for [awaitAny] or timeouts). */
    public fun future(): DurableFuture<T>

    /** Waits for the promise's value (suspending if needed): `future().await()`. A rejection throws [TerminalException]. */
    public suspend fun await(): T

    /** `future().await(timeout)`: throws `TerminalException(408, …)` when not completed within [timeout]. */
    public suspend fun await(timeout: Duration): T

    /**
     * Returns the value if the promise is resolved, `null` if it is not completed yet, and throws
     * [TerminalException] if it was rejected. (With a nullable [T], a resolved `null` and "not
     * completed" look the same.)
     */
    public suspend fun peek(): T?

    /** Resolves the promise with [value]; throws `TerminalException(409, …)` if it was already completed. */
    public suspend fun resolve(value: T)

    /** Rejects the promise ([code], [message]); throws `TerminalException(409, …)` if it was already completed. */
    public suspend fun reject(message: String, code: Int = 500)
}

/**
 * Awaits every future in turn and returns their values in order; the first failure (in list order)
 * is thrown. While blocked, the invocation suspends on all futures still pending.
 */
public suspend fun <T> awaitAll(vararg futures: DurableFuture<out T>): List<T> = futures.toList().awaitAll()

/** List form of [awaitAll]. */
public suspend fun <T> List<DurableFuture<out T>>.awaitAll(): List<T> = awaitAllFutures(this)

/**
 * Waits until at least one of [futures] is completed and returns its position in [futures] (the
 * first completed one in argument order when several are). The choice is journaled (`select`): on
 * a replay the journaled winner is returned, whatever else has completed since. Await the winner
 * to get its value or failure.
 */
public suspend fun awaitAny(vararg futures: DurableFuture<*>): Int = futures.toList().awaitAny()

/** List form of [awaitAny]. */
public suspend fun List<DurableFuture<*>>.awaitAny(): Int = awaitAnyFuture(this)

/** Awaits the first of [futures] to complete (see [awaitAny]) and returns its value (or throws its failure). */
public suspend fun <T> awaitFirst(vararg futures: DurableFuture<out T>): T = awaitFirstFuture(futures.toList())

// ---------------------------------------------------------------------------------------------
// Reified forms (serializers from the endpoint's JSON module, so contextual serializers work)
// ---------------------------------------------------------------------------------------------

/**
 * The serializer of [T] in the serializers module of the endpoint's JSON (see
 * [KilnEndpoint.json]); a type with none is a `TerminalException(400)` naming the fix (retrying
 * cannot make it serializable).
 */
@PublishedApi
internal inline fun <reified T> Context.serializerOf(): KSerializer<T> = try {
    kilnSerializersModule.serializer<T>()
} catch (e: IllegalArgumentException) {
    throw unserializable(typeOf<T>(), e)
}

/**
 * Untyped call whose output is decoded as [O]: `ctx.call<Long>("Counter", "add", "my-key", "5".toByteArray())`.
 * See [Context.call].
 */
public inline fun <reified O> Context.call(
    service: String,
    handler: String,
    key: String,
    input: ByteArray,
): DurableFuture<O> = call(service, handler, key, input, serializerOf<O>())

/**
 * Reified form of [Context.run]: `val id = ctx.run<String>("create-user") { api.create() }`.
 * The result type [T] must be serializable with kotlinx.serialization.
 */
public suspend inline fun <reified T> Context.run(name: String, noinline block: suspend () -> T): T =
    run(name, serializerOf<T>(), block)

/**
 * Reified form of [Context.run] with in-process retries:
 * `ctx.run("charge", RetryPolicy(maxAttempts = 5)) { psp.charge() }`.
 */
public suspend inline fun <reified T> Context.run(
    name: String,
    retryPolicy: RetryPolicy,
    noinline block: suspend () -> T,
): T = run(name, retryPolicy, serializerOf<T>(), block)

/**
 * Reified form of [Context.runAsync]: `val a = ctx.runAsync<String>("fetch-a") { api.fetch("a") }`.
 */
public inline fun <reified T> Context.runAsync(name: String, noinline block: suspend () -> T): DurableFuture<T> =
    runAsync(name, serializerOf<T>(), block)

/** Reified form of [Context.runAsync] with in-process retries. */
public inline fun <reified T> Context.runAsync(
    name: String,
    retryPolicy: RetryPolicy,
    noinline block: suspend () -> T,
): DurableFuture<T> = runAsync(name, retryPolicy, serializerOf<T>(), block)

/** Reified form of [Context.awakeable]: `val a = ctx.awakeable<String>()`. */
public inline fun <reified T> Context.awakeable(): Awakeable<T> = awakeable(serializerOf<T>())

/** Reified form of [Context.resolveAwakeable]. */
public inline fun <reified T> Context.resolveAwakeable(id: String, value: T): Unit =
    resolveAwakeable(id, serializerOf<T>(), value)

/** Reified form of [SharedWorkflowContext.promise]: `ctx.promise<String>("confirmed")`. */
public inline fun <reified T> SharedWorkflowContext.promise(name: String): DurablePromise<T> =
    promise(name, serializerOf<T>())

/**
 * How [Context.run] retries its block in process: the delay before retry `n` (1-based) is
 * `initialInterval * factor^(n-1)`, at most [maxInterval]; after [maxAttempts] tries in total the
 * step fails terminally (code 500).
 *
 * @property initialInterval delay before the first retry.
 * @property maxInterval upper bound of the delay.
 * @property maxAttempts tries in total, including the first; at least 1.
 * @property factor growth of the delay per retry; at least 1.
 */
public class RetryPolicy(
    public val initialInterval: Duration = 100.milliseconds,
    public val maxInterval: Duration = 10.seconds,
    public val maxAttempts: Int = 3,
    public val factor: Double = 2.0,
) {
    init {
        require(maxAttempts >= 1) { "maxAttempts must be at least 1, got $maxAttempts" }
        require(!initialInterval.isNegative() && !maxInterval.isNegative()) { "retry intervals must not be negative" }
        require(factor >= 1.0) { "factor must be at least 1, got $factor" }
    }

    /** Returns a description of the policy's parameters. */
    override fun toString(): String =
        "RetryPolicy(initialInterval=$initialInterval, maxInterval=$maxInterval, maxAttempts=$maxAttempts, factor=$factor)"
}

// ---------------------------------------------------------------------------------------------
// State keys and failures
// ---------------------------------------------------------------------------------------------

/**
 * A typed name of a state entry. Values are stored as JSON, by the JSON of the endpoint the
 * service is bound to (see [KilnEndpoint.json]). Create one with [stateKey], typically in a
 * `companion object`.
 *
 * @property name the state entry's name.
 */
public class StateKey<T> private constructor(
    public val name: String,
    private val explicit: KSerializer<T>?,
    private val type: KType?,
) {
    /** A key whose values are encoded with [serializer], whatever the endpoint's serializers module. */
    public constructor(name: String, serializer: KSerializer<T>) : this(name, serializer, null)

    /** A key of values of [type], serialized as the endpoint's serializers module says ([stateKey]). */
    @PublishedApi
    internal constructor(name: String, type: KType) : this(name, null, type)

    /**
     * The serializer given to the constructor, or else (keys made by [stateKey]) the one of the
     * value type in the default serializers module. Handlers use the endpoint's module instead, so
     * a contextual serializer registered there applies.
     */
    public val serializer: KSerializer<T> get() = serializerIn(KilnJson.serializersModule)

    @Volatile private var cached: Pair<SerializersModule, KSerializer<T>>? = null

    /** The serializer of the values in [module]; a type without one is a `TerminalException(400)`. */
    @Suppress("UNCHECKED_CAST")
    internal fun serializerIn(module: SerializersModule): KSerializer<T> {
        explicit?.let { return it }
        cached?.let { if (it.first === module) return it.second }
        val ser = try {
            module.serializer(type!!) as KSerializer<T>
        } catch (e: IllegalArgumentException) {
            throw unserializable(type!!, e, "state key '$name'")
        }
        cached = module to ser
        return ser
    }

    /** Returns `StateKey(name)`. */
    override fun toString(): String = "StateKey($name)"
}

/** Creates a [StateKey] for values of type [T]: `val COUNT = stateKey<Long>("count")`. */
public inline fun <reified T> stateKey(name: String): StateKey<T> = StateKey(name, typeOf<T>())

/**
 * A failure that must not be retried. Thrown by a handler, it completes the invocation as failed
 * with [code] and [message] (a caller awaiting [Context.call] gets it thrown with the same code and
 * message); thrown inside [Context.run], it is journaled as that step's failure and rethrown from
 * `run` (on every replay, too). The SDK itself throws it for a timeout (408), an observed
 * cancellation (409, `"cancelled"`) and a promise completed twice (409).
 *
 * @property code an error code in `0..65535`; passed through unchanged to the caller.
 */
public class TerminalException(public val code: Int = 500, message: String) : RuntimeException(message) {
    init {
        require(code in 0..65535) { "TerminalException code must be in 0..65535, got $code" }
    }

    /** A terminal failure with code 500. */
    public constructor(message: String) : this(500, message)
}
