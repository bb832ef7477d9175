// The public API of the Kiln Kotlin SDK. Everything a handler author uses is in this file and in
// KilnEndpoint.kt; every other declaration of the SDK is `internal`.
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.serializer
import kotlin.random.Random

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
 * Marks a `suspend` member function of a [Service] or [VirtualObject] class as a handler.
 *
 * A handler takes a context ([Context], [SharedObjectContext] or [ObjectContext]) as its first
 * parameter and optionally one input parameter; input and return value are JSON via
 * kotlinx.serialization (an empty request body means "no input", i.e. `null`; a `Unit` result is
 * an empty body).
 *
 * @property name the handler name; empty means the function's name.
 */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Handler(val name: String = "")

/**
 * Marks a handler of a [VirtualObject] as **shared**: it may run concurrently with other handlers
 * of the same key and may read, but never write, state. Implies [Handler] (a function annotated
 * only with `@Shared` is a handler named after the function).
 */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class Shared

// ---------------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------------

/**
 * The context of every handler: durable side effects, deterministic randomness and the
 * invocation's identity. A context belongs to one invocation attempt; issue its commands
 * sequentially from the handler's coroutine (it is not meant for concurrent use).
 */
public sealed interface Context {
    /** The id of this invocation, identical on every attempt. */
    public val invocationId: String

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
     * A pseudo-random generator seeded from the invocation (`random_seed` of the protocol): it
     * produces the same sequence on every attempt, so its values are safe to use in handler code.
     * Always returns the same instance within one attempt.
     */
    public fun random(): Random
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
 * Reified form of [Context.run]: `val id = ctx.run<String>("create-user") { api.create() }`.
 * The result type [T] must be serializable with kotlinx.serialization.
 */
public suspend inline fun <reified T> Context.run(name: String, noinline block: suspend () -> T): T =
    run(name, serializer<T>(), block)

// ---------------------------------------------------------------------------------------------
// State keys and failures
// ---------------------------------------------------------------------------------------------

/**
 * A typed name of a state entry. Values are stored as JSON produced by [serializer].
 * Create one with [stateKey], typically in a `companion object`.
 *
 * @property name the state entry's name.
 * @property serializer encodes and decodes the entry's value.
 */
public class StateKey<T>(public val name: String, public val serializer: KSerializer<T>) {
    /** Returns `StateKey(name)`. */
    override fun toString(): String = "StateKey($name)"
}

/** Creates a [StateKey] for values of type [T]: `val COUNT = stateKey<Long>("count")`. */
public inline fun <reified T> stateKey(name: String): StateKey<T> = StateKey(name, serializer<T>())

/**
 * A failure that must not be retried. Thrown by a handler, it completes the invocation as failed
 * with [code] and [message]; thrown inside [Context.run], it is journaled as that step's failure
 * and rethrown from `run` (on every replay, too).
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
