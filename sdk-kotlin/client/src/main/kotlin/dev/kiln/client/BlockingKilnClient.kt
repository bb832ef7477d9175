// The blocking face of KilnClient: the same calls, for code without coroutines.
package dev.kiln.client

import dev.kiln.sdk.Context
import dev.kiln.sdk.WorkflowContext
import kotlinx.serialization.KSerializer
import kotlinx.serialization.serializer
import kotlin.reflect.KSuspendFunction2
import kotlin.reflect.KSuspendFunction3
import kotlin.time.Duration

/**
 * [KilnClient]'s functions as blocking calls (the calling thread waits for the answer; an
 * interrupt aborts the wait with `InterruptedException`): `client.blocking.call(Counter::add, "k", 5L)`.
 * Targets, options and failures are those of [KilnClient].
 */
public class BlockingKilnClient internal constructor(private val client: KilnClient) {
    private val ingress: Ingress get() = client.ingress

    /** Blocking [KilnClient.call] of a keyed handler with input. */
    public fun <I, O> call(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        key: String,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = client.exchangeBlocking(ingress.call(HandlerTargets.of(handler), key, input, hasInput = true, options))

    /** Blocking [KilnClient.call] of a keyed handler without input. */
    public fun <O> call(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        key: String,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = client.exchangeBlocking(ingress.call(HandlerTargets.of(handler), key, null, hasInput = false, options))

    /** Blocking [KilnClient.call] of a stateless service's handler with input. */
    public fun <I, O> call(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = client.exchangeBlocking(ingress.call(HandlerTargets.of(handler), null, input, hasInput = true, options))

    /** Blocking [KilnClient.call] of a stateless service's handler without input. */
    public fun <O> call(
        handler: KSuspendFunction2<Nothing, Context, O>,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = client.exchangeBlocking(ingress.call(HandlerTargets.of(handler), null, null, hasInput = false, options))

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(KilnClient.NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("callServiceWithKey")
    public fun <I, O> call(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        key: String,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KilnClient.NO_KEY_FOR_SERVICES)

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(KilnClient.NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("callServiceWithKeyNoInput")
    public fun <O> call(
        handler: KSuspendFunction2<Nothing, Context, O>,
        key: String,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KilnClient.NO_KEY_FOR_SERVICES)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KilnClient.KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("callObjectWithoutKey")
    public fun <I, O> call(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        input: I,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KilnClient.KEY_FOR_OBJECTS)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KilnClient.KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("callObjectWithoutKeyNoInput")
    public fun <O> call(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        options: InvocationOptions = InvocationOptions.NONE,
    ): O = throw UnsupportedOperationException(KilnClient.KEY_FOR_OBJECTS)

    /** Blocking [KilnClient.send] to a keyed handler with input. */
    public fun <I, O> send(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        key: String,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        client.exchangeBlocking(ingress.send(HandlerTargets.of(handler), key, input, hasInput = true, delay, options))

    /** Blocking [KilnClient.send] to a keyed handler without input. */
    public fun <O> send(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        key: String,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        client.exchangeBlocking(ingress.send(HandlerTargets.of(handler), key, null, hasInput = false, delay, options))

    /** Blocking [KilnClient.send] to a stateless service's handler with input. */
    public fun <I, O> send(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        client.exchangeBlocking(ingress.send(HandlerTargets.of(handler), null, input, hasInput = true, delay, options))

    /** Blocking [KilnClient.send] to a stateless service's handler without input. */
    public fun <O> send(
        handler: KSuspendFunction2<Nothing, Context, O>,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> =
        client.exchangeBlocking(ingress.send(HandlerTargets.of(handler), null, null, hasInput = false, delay, options))

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(KilnClient.NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("sendServiceWithKey")
    public fun <I, O> send(
        handler: KSuspendFunction3<Nothing, Context, I, O>,
        key: String,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KilnClient.NO_KEY_FOR_SERVICES)

    /** A stateless service's handler (it takes a plain [Context]) with a key: does not compile (no key). */
    @Deprecated(KilnClient.NO_KEY_FOR_SERVICES, level = DeprecationLevel.ERROR)
    @JvmName("sendServiceWithKeyNoInput")
    public fun <O> send(
        handler: KSuspendFunction2<Nothing, Context, O>,
        key: String,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KilnClient.NO_KEY_FOR_SERVICES)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KilnClient.KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("sendObjectWithoutKey")
    public fun <I, O> send(
        handler: KSuspendFunction3<Nothing, WorkflowContext, I, O>,
        input: I,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KilnClient.KEY_FOR_OBJECTS)

    /** A virtual object's or workflow's handler without a key: does not compile (pass the key first). */
    @Deprecated(KilnClient.KEY_FOR_OBJECTS, level = DeprecationLevel.ERROR)
    @JvmName("sendObjectWithoutKeyNoInput")
    public fun <O> send(
        handler: KSuspendFunction2<Nothing, WorkflowContext, O>,
        delay: Duration = Duration.ZERO,
        options: InvocationOptions = InvocationOptions.NONE,
    ): SentInvocation<O> = throw UnsupportedOperationException(KilnClient.KEY_FOR_OBJECTS)

    /** Blocking [KilnClient.attach]. */
    public fun <O> attach(sent: SentInvocation<O>): O = attach(sent.invocationId, sent.outputSerializer)

    /** Blocking [KilnClient.attach] by invocation id. */
    public fun <O> attach(invocationId: String, serializer: KSerializer<O>): O =
        client.exchangeBlocking(ingress.attach(invocationId, serializer))

    /** Blocking [KilnClient.output]. */
    public fun <O> output(sent: SentInvocation<O>): InvocationOutput<O> =
        output(sent.invocationId, sent.outputSerializer)

    /** Blocking [KilnClient.output] by invocation id. */
    public fun <O> output(invocationId: String, serializer: KSerializer<O>): InvocationOutput<O> =
        client.exchangeBlocking(ingress.output(invocationId, serializer))

    /** Blocking [KilnClient.attach] by invocation id, decoded as [O]. */
    public inline fun <reified O> attach(invocationId: String): O = attach(invocationId, serializer<O>())

    /** Blocking [KilnClient.output] by invocation id, decoded as [O]. */
    public inline fun <reified O> output(invocationId: String): InvocationOutput<O> =
        output(invocationId, serializer<O>())

    /** Returns the ingress URL. */
    override fun toString(): String = "BlockingKilnClient(${client.ingressUrl})"
}
