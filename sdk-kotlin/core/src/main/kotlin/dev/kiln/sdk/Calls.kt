// Typed calls and sends through callable references (`ctx.call(Counter::add, key, 5L)`): the
// target's names and serializers are read by reflection once per referenced function and cached.
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import java.util.concurrent.ConcurrentHashMap
import kotlin.reflect.KFunction
import kotlin.reflect.jvm.javaMethod
import kotlin.time.Duration

/** What a typed call needs to know about its target handler. */
internal class HandlerTarget(
    val service: String,
    val handler: String,
    val serviceKind: ServiceKind,
    /** `null` when the handler takes no input. */
    val inputSerializer: KSerializer<Any?>?,
    /** `null` when the handler returns Unit (an empty output). */
    val outputSerializer: KSerializer<Any?>?,
) {
    val qualifiedName: String get() = "$service/$handler"

    fun encodeInput(input: Any?): ByteArray = if (inputSerializer == null) {
        ByteArray(0)
    } else {
        KilnJson.encodeToString(inputSerializer, input).encodeToByteArray()
    }

    /** Checks that a key is given exactly when the target is keyed. */
    fun checkKey(key: String?) {
        if (serviceKind.keyed) {
            require(key != null) { "$qualifiedName is a ${serviceKind.wire}: pass the key of the instance to call" }
        } else {
            require(key == null) { "$qualifiedName is a stateless service: call it without a key" }
        }
    }
}

internal object HandlerTargets {
    private val cache = ConcurrentHashMap<KFunction<*>, HandlerTarget>()

    fun of(f: KFunction<*>): HandlerTarget = cache[f] ?: resolve(f).also { cache[f] = it }

    @Suppress("UNCHECKED_CAST")
    private fun resolve(f: KFunction<*>): HandlerTarget {
        val method = f.javaMethod
            ?: throw IllegalArgumentException("${f.name} is not a member function of an annotated service class")
        val cls = method.declaringClass.kotlin
        val (service, kind) = serviceIdentity(cls)
        val where = "${cls.qualifiedName}.${f.name}"
        require(f.parameters.firstOrNull()?.kind == kotlin.reflect.KParameter.Kind.INSTANCE) {
            "$where: use an unbound reference (${cls.simpleName}::${f.name}), not one bound to an instance"
        }
        require(f.isSuspend) { "$where is not a suspend handler" }
        val params = f.parameters.drop(1)
        require(params.size in 1..2) { "$where is not a handler: it must take a context and at most one input" }
        val annotated = f.annotations.any { it is Handler || it is Shared || it is Workflow }
        require(annotated) { "$where is not annotated @Handler, @Shared or @Workflow" }
        val input = params.getOrNull(1)?.type?.let { serializerFor(it, where) }
        val output = f.returnType.takeIf { it.classifier != Unit::class }?.let { serializerFor(it, where) }
        return HandlerTarget(service, handlerName(f), kind, input as KSerializer<Any?>?, output as KSerializer<Any?>?)
    }
}

/** Decodes a call's output bytes with the target's output serializer (Unit for an empty output). */
@Suppress("UNCHECKED_CAST")
internal fun <O> decodeOutput(target: HandlerTarget, bytes: ByteArray): O =
    if (target.outputSerializer == null) Unit as O else decodePayload(target.outputSerializer, bytes) as O

/**
 * Decodes a JSON payload; an empty payload is `Unit` for a Unit serializer and `null` for a
 * nullable one (the SDK's encoding of "no value").
 */
@Suppress("UNCHECKED_CAST")
internal fun <T> decodePayload(serializer: KSerializer<T>, bytes: ByteArray): T {
    if (bytes.isEmpty()) {
        if (serializer.descriptor.serialName == "kotlin.Unit") return Unit as T
        if (serializer.descriptor.isNullable) return null as T
    }
    return KilnJson.decodeFromString(serializer, bytes.decodeToString())
}

internal fun <T> encodePayload(serializer: KSerializer<T>, value: T): ByteArray =
    if (serializer.descriptor.serialName == "kotlin.Unit") {
        ByteArray(0)
    } else {
        KilnJson.encodeToString(serializer, value).encodeToByteArray()
    }

internal fun <O> callTyped(
    ctx: Context,
    handler: KFunction<*>,
    key: String?,
    input: Any?,
    hasInput: Boolean,
): DurableFuture<O> {
    val target = HandlerTargets.of(handler)
    target.checkKey(key)
    checkInputArity(target, hasInput)
    val inv = (ctx as InvocationContext)
    return inv.callTarget(target, key ?: "", target.encodeInput(input))
}

internal fun sendTyped(
    ctx: Context,
    handler: KFunction<*>,
    key: String?,
    input: Any?,
    hasInput: Boolean,
    delay: Duration,
) {
    val target = HandlerTargets.of(handler)
    target.checkKey(key)
    checkInputArity(target, hasInput)
    ctx.send(target.service, target.handler, key ?: "", target.encodeInput(input), delay)
}

private fun checkInputArity(target: HandlerTarget, hasInput: Boolean) {
    require(hasInput == (target.inputSerializer != null)) {
        if (hasInput) "${target.qualifiedName} takes no input" else "${target.qualifiedName} takes an input"
    }
}
