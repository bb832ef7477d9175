// Typed calls and sends through unbound function references (`ctx.call(Counter::add, key, 5L)`),
// part of the public API. Which overload applies depends on the handler's context parameter:
// `Context` means a stateless service (no key), any keyed context (`SharedObjectContext`,
// `ObjectContext`, the workflow contexts) a virtual object or workflow (key first). Function types
// are contravariant in their parameters, so a `KSuspendFunction3<Nothing, Context, I, O>` accepts
// only handlers taking `Context`, while a `KSuspendFunction3<Nothing, WorkflowContext, I, O>`
// accepts every handler (`WorkflowContext` is a subtype of every context). The misuses (a key for
// a service, none for an object) are overloads deprecated at level ERROR: they are the most
// specific match for the wrong call, so it fails to compile with their message. The compile test
// (TypedCallCompileTest) pins this.
package dev.kiln.sdk

import kotlin.reflect.KSuspendFunction2
import kotlin.reflect.KSuspendFunction3
import kotlin.time.Duration

// When a keyed call does not compile for another reason (an input of the wrong type), the compiler
// may report this overload too, hence the message's last sentence.
private const val NO_KEY_FOR_SERVICES =
    "The handler takes Context, so it belongs to a stateless @Service, which has no key: " +
        "call it without a key, as ctx.call(Service::handler, input) or ctx.send(Service::handler, input). " +
        "(If the handler takes an object or workflow context, the input does not have the type of its parameter.)"

private const val KEY_FOR_OBJECTS =
    "The handler takes an object or workflow context, so it belongs to a @VirtualObject or @Workflow: " +
        "pass the key first, as ctx.call(Object::handler, key, input) or ctx.send(Object::handler, key, input)."

// ---------------------------------------------------------------------------------------------
// Stateless services: no key
// ---------------------------------------------------------------------------------------------

/**
 * Calls [handler], a handler of a stateless [Service] (it takes [Context]), with [input]:
 * `ctx.call(Steps::threeStep, "x")`. The service name comes from the class annotation (or the
 * simple class name), the handler name from [Handler] (or the function name); input and output are
 * encoded with the function's parameter and return types, by the endpoint's JSON. A callee's
 * terminal failure is thrown from [DurableFuture.await]. [handler] must be an unbound reference
 * `Class::function`; otherwise (or for a class without annotation) the call throws
 * `TerminalException(400)`.
 */
public fun <I, O> Context.call(handler: KSuspendFunction3<Nothing, Context, I, O>, input: I): DurableFuture<O> =
    callTyped(this, handler, null, input, hasInput = true)

/** Calls a handler without input of a stateless service: `ctx.call(Clock::now)`. See [call]. */
public fun <O> Context.call(handler: KSuspendFunction2<Nothing, Context, O>): DurableFuture<O> =
    callTyped(this, handler, null, null, hasInput = false)

/**
 * Sends a one-way message with [input] to [handler] of a stateless service, delivered after
 * [delay] (zero: at once): `ctx.send(Mailer::welcome, email)`. Returns once the message is
 * journaled; the handler's output is discarded. Names and encoding as for [call].
 */
public fun <I> Context.send(
    handler: KSuspendFunction3<Nothing, Context, I, *>,
    input: I,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, null, input, hasInput = true, delay)

/** Sends a one-way message without input to [handler] of a stateless service. See [send]. */
public fun Context.send(handler: KSuspendFunction2<Nothing, Context, *>, delay: Duration = Duration.ZERO): Unit =
    sendTyped(this, handler, null, null, hasInput = false, delay)

// ---------------------------------------------------------------------------------------------
// Virtual objects and workflows: the key first
// ---------------------------------------------------------------------------------------------

/**
 * Calls [handler] of the virtual object or workflow instance [key] with [input]:
 * `ctx.call(Counter::add, "my-key", 5L)`. [handler] takes a keyed context ([SharedObjectContext],
 * [ObjectContext], [SharedWorkflowContext] or [WorkflowContext]). Names, encoding and failures as
 * for the unkeyed `call`.
 */
public fun <I, O> Context.call(
    handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
    key: String,
    input: I,
): DurableFuture<O> = callTyped(this, handler, key, input, hasInput = true)

/** Calls a handler without input of the virtual object or workflow instance [key]: `ctx.call(Counter::get, "my-key")`. */
public fun <O> Context.call(handler: KSuspendFunction2<Nothing, WorkflowContext, O>, key: String): DurableFuture<O> =
    callTyped(this, handler, key, null, hasInput = false)

/**
 * Sends a one-way message to [handler] of the virtual object or workflow instance [key] with
 * [input], delivered after [delay]: `ctx.send(Device::checkHeartbeat, key, seq, delay = 10.seconds)`.
 * Messages from one invocation to one receiver keep their order.
 */
public fun <I> Context.send(
    handler: KSuspendFunction3<Nothing, WorkflowContext, I, *>,
    key: String,
    input: I,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, key, input, hasInput = true, delay)

/** Sends a one-way message without input to [handler] of the instance [key]. */
public fun Context.send(
    handler: KSuspendFunction2<Nothing, WorkflowContext, *>,
    key: String,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, key, null, hasInput = false, delay)

// ---------------------------------------------------------------------------------------------
// Misuses, refused at compile time (distinct JVM names: their erased signatures equal the valid ones')
// ---------------------------------------------------------------------------------------------

/** A stateless service's handler called with a key: does not compile (call it without a key). */
@Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
@JvmName("callServiceWithKey")
public fun <I, O> Context.call(
    handler: KSuspendFunction3<Nothing, Context, I, O>,
    key: String,
    input: I,
): DurableFuture<O> = callTyped(this, handler, key, input, hasInput = true)

/** A stateless service's handler called with a key: does not compile (call it without a key). */
@Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
@JvmName("callServiceWithKeyNoInput")
public fun <O> Context.call(handler: KSuspendFunction2<Nothing, Context, O>, key: String): DurableFuture<O> =
    callTyped(this, handler, key, null, hasInput = false)

/** A virtual object's or workflow's handler called without a key: does not compile (pass the key first). */
@Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
@JvmName("callObjectWithoutKey")
public fun <I, O> Context.call(handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>, input: I): DurableFuture<O> =
    callTyped(this, handler, null, input, hasInput = true)

/** A virtual object's or workflow's handler called without a key: does not compile (pass the key first). */
@Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
@JvmName("callObjectWithoutKeyNoInput")
public fun <O> Context.call(handler: KSuspendFunction2<Nothing, WorkflowContext, O>): DurableFuture<O> =
    callTyped(this, handler, null, null, hasInput = false)

/** A message to a stateless service's handler with a key: does not compile (send it without a key). */
@Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
@JvmName("sendServiceWithKey")
public fun <I> Context.send(
    handler: KSuspendFunction3<Nothing, Context, I, *>,
    key: String,
    input: I,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, key, input, hasInput = true, delay)

/** A message to a stateless service's handler with a key: does not compile (send it without a key). */
@Deprecated(NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
@JvmName("sendServiceWithKeyNoInput")
public fun Context.send(
    handler: KSuspendFunction2<Nothing, Context, *>,
    key: String,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, key, null, hasInput = false, delay)

/** A message to a virtual object's or workflow's handler without a key: does not compile (pass the key first). */
@Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
@JvmName("sendObjectWithoutKey")
public fun <I> Context.send(
    handler: KSuspendFunction3<Nothing, WorkflowContext, I, *>,
    input: I,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, null, input, hasInput = true, delay)

/** A message to a virtual object's or workflow's handler without a key: does not compile (pass the key first). */
@Deprecated(KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
@JvmName("sendObjectWithoutKeyNoInput")
public fun Context.send(
    handler: KSuspendFunction2<Nothing, WorkflowContext, *>,
    delay: Duration = Duration.ZERO,
): Unit = sendTyped(this, handler, null, null, hasInput = false, delay)
