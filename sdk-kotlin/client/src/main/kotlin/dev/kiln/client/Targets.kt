// The target of a typed call (`client.call(Counter::add, …)`): service and handler names, whether
// the target is keyed, and the input and output serializers, read by reflection from the SDK's
// public annotations once per referenced function and cached. The names come from the SDK itself
// (`serviceAddressOf`, `handlerNameOf`: the names its discovery publishes).
@file:OptIn(KilnInternalApi::class)

package dev.kiln.client

import dev.kiln.sdk.Handler
import dev.kiln.sdk.KilnInternalApi
import dev.kiln.sdk.Shared
import dev.kiln.sdk.Workflow
import dev.kiln.sdk.handlerNameOf
import dev.kiln.sdk.serviceAddressOf
import kotlinx.serialization.KSerializer
import kotlinx.serialization.serializer
import java.util.concurrent.ConcurrentHashMap
import kotlin.reflect.KFunction
import kotlin.reflect.KParameter
import kotlin.reflect.KType
import kotlin.reflect.jvm.javaMethod

/** A handler as the ingress addresses it. */
internal class HandlerTarget(
    val service: String,
    val handler: String,
    /** Virtual objects and workflows are addressed by a key; stateless services are not. */
    val keyed: Boolean,
    val kindName: String,
    /** `null` when the handler takes no input. */
    val inputSerializer: KSerializer<Any?>?,
    val outputSerializer: KSerializer<Any?>,
) {
    val qualifiedName: String get() = "$service/$handler"

    /** Checks that a key is given exactly when the target is keyed, and an input exactly when it takes one. */
    fun check(key: String?, hasInput: Boolean) {
        if (keyed) {
            require(key != null) { "$qualifiedName is a $kindName: pass the key of the instance to call" }
        } else {
            require(key == null) { "$qualifiedName is a stateless service: call it without a key" }
        }
        require(hasInput == (inputSerializer != null)) {
            if (hasInput) "$qualifiedName takes no input" else "$qualifiedName takes an input"
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
        val where = "${cls.qualifiedName}.${f.name}"
        require(f.parameters.firstOrNull()?.kind == KParameter.Kind.INSTANCE) {
            "$where: use an unbound reference (${cls.simpleName}::${f.name}), not one bound to an instance"
        }
        require(f.isSuspend) { "$where is not a suspend handler" }
        val params = f.parameters.drop(1)
        require(params.size in 1..2) { "$where is not a handler: it must take a context and at most one input" }
        val annotated = f.annotations.any { it is Handler || it is Shared || it is Workflow }
        require(annotated) { "$where is not annotated @Handler, @Shared or @Workflow" }
        val service = serviceAddressOf(cls)
        val input = params.getOrNull(1)?.type?.let { serializerFor(it, where) }
        val output = serializerFor(f.returnType, where)
        return HandlerTarget(
            service = service.name,
            handler = handlerNameOf(f),
            keyed = service.keyed,
            kindName = service.kind.replace('_', ' '),
            inputSerializer = input as KSerializer<Any?>?,
            outputSerializer = output as KSerializer<Any?>,
        )
    }

    private fun serializerFor(type: KType, where: String): KSerializer<*> = try {
        serializer(type)
    } catch (e: Exception) {
        throw IllegalArgumentException(
            "$where: type $type is not serializable with kotlinx.serialization (${e.message})",
            e,
        )
    }
}
