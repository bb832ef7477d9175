// Typed calls and sends through callable references (`ctx.call(Counter::add, key, 5L)`, see
// TypedCalls.kt): the target's names and types are read by reflection once per referenced function
// and cached; its serializers once per serializers module (each endpoint may have its own JSON).
// Whatever the compiler cannot check is refused with a TerminalException(400) naming the fix:
// retrying a call that is wrong in the code cannot succeed.
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.modules.SerializersModule
import java.util.concurrent.ConcurrentHashMap
import kotlin.reflect.KClass
import kotlin.reflect.KFunction
import kotlin.reflect.KParameter
import kotlin.reflect.KType
import kotlin.reflect.jvm.javaMethod
import kotlin.time.Duration

/** What a typed call needs to know about its target handler. */
internal class HandlerTarget(
    val service: String,
    val handler: String,
    val serviceKind: ServiceKind,
    /** The referenced function, for messages: its qualified name and `Class::function`. */
    private val where: String,
    private val ref: String,
    /** `null` when the handler takes no input. */
    private val inputType: KType?,
    /** `null` when the handler returns Unit (an empty output). */
    private val outputType: KType?,
) {
    val qualifiedName: String get() = "$service/$handler"

    val takesInput: Boolean get() = inputType != null

    /** The serializers of input and output for one serializers module; `null` for none / Unit. */
    class Codec(val input: KSerializer<Any?>?, val output: KSerializer<Any?>?)

    private val codecs = ConcurrentHashMap<SerializersModule, Codec>()

    @Suppress("UNCHECKED_CAST")
    fun codec(json: Json): Codec = codecs.getOrPut(json.serializersModule) {
        try {
            Codec(
                inputType?.let { serializerFor(json, it, where) } as KSerializer<Any?>?,
                outputType?.let { serializerFor(json, it, where) } as KSerializer<Any?>?,
            )
        } catch (e: IllegalArgumentException) {
            throw TerminalException(ErrorCode.BAD_REQUEST, "cannot call $qualifiedName: ${e.message}")
        }
    }

    fun encodeInput(json: Json, input: Any?): ByteArray {
        val ser = codec(json).input ?: return ByteArray(0)
        return json.encodeToString(ser, input).encodeToByteArray()
    }

    /** Decodes a call's output bytes with the output serializer (Unit for an empty output). */
    @Suppress("UNCHECKED_CAST")
    fun <O> decodeOutput(json: Json, bytes: ByteArray): O {
        val ser = codec(json).output ?: return Unit as O
        return decodePayload(json, ser, bytes) as O
    }

    /** Checks that a key is given exactly when the target is keyed. */
    fun checkKey(key: String?) {
        if (serviceKind.keyed && key == null) {
            throw TerminalException(
                ErrorCode.BAD_REQUEST,
                "$qualifiedName is a ${serviceKind.wire}: pass the key of the instance to call first, " +
                    "as ctx.call($ref, key, input)",
            )
        }
        if (!serviceKind.keyed && key != null) {
            throw TerminalException(
                ErrorCode.BAD_REQUEST,
                "$qualifiedName is a stateless service: call it without a key, as ctx.call($ref, input)",
            )
        }
    }
}

internal object HandlerTargets {
    private val cache = ConcurrentHashMap<KFunction<*>, HandlerTarget>()

    /** The target of [f]; a reference that is not a handler is a `TerminalException(400)` naming the fix. */
    fun of(f: KFunction<*>): HandlerTarget = cache[f] ?: resolve(f).also { cache[f] = it }

    private fun refuse(message: String): Nothing = throw TerminalException(ErrorCode.BAD_REQUEST, message)

    private fun resolve(f: KFunction<*>): HandlerTarget {
        val method = f.javaMethod
            ?: refuse("${f.name} cannot be called: reference a handler of an annotated class, as Class::${f.name}")
        val cls = method.declaringClass.kotlin
        val where = "${cls.qualifiedName}.${f.name}"
        val (service, kind) = try {
            serviceIdentity(cls)
        } catch (e: IllegalArgumentException) {
            refuse("$where cannot be called: ${e.message}; annotate the class with one of them")
        }
        if (f.parameters.firstOrNull()?.kind != KParameter.Kind.INSTANCE) {
            refuse(
                "$where cannot be called: use an unbound reference (${cls.simpleName}::${f.name}), not one bound to an instance",
            )
        }
        if (!f.isSuspend) refuse("$where cannot be called: it is not a suspend handler; make it a suspend function")
        val params = f.parameters.drop(1)
        if (params.size !in 1..2) {
            refuse(
                "$where cannot be called: a handler takes a context and at most one input, it takes ${params.size} parameters",
            )
        }
        if (f.annotations.none { it is Handler || it is Shared || it is Workflow }) {
            refuse("$where cannot be called: it is not annotated @Handler, @Shared or @Workflow; annotate it")
        }
        checkContextType(kind, params[0].type.classifier)?.let { refuse("$where cannot be called: $it") }
        val output = f.returnType.takeIf { it.classifier != Unit::class }
        val ref = "${cls.simpleName}::${f.name}"
        return HandlerTarget(service, handlerName(f), kind, where, ref, params.getOrNull(1)?.type, output)
    }
}

/**
 * Null if a handler of a service of [kind] may take a context of type [ctx] as far as keys are
 * concerned, else why not: `Context` is for stateless services, a keyed context for virtual objects
 * and workflows. That is what lets the typed `call`/`send` overloads require a key exactly for
 * keyed targets (see TypedCalls.kt).
 */
internal fun checkContextType(kind: ServiceKind, ctx: Any?): String? {
    if (kind == ServiceKind.SERVICE) {
        if (ctx == Context::class) return null
        return "a handler of a @Service takes Context (a service is stateless and has no key), not ${name(ctx)}"
    }
    if (ctx != Context::class) return null
    val (annotation, contexts) = if (kind == ServiceKind.WORKFLOW) {
        "@Workflow" to "WorkflowContext or SharedWorkflowContext"
    } else {
        "@VirtualObject" to "ObjectContext or SharedObjectContext"
    }
    return "a handler of a $annotation takes a keyed context ($contexts), not Context (which is for stateless " +
        "services); change the parameter's type"
}

private fun name(c: Any?): String = (c as? KClass<*>)?.simpleName ?: c.toString()

internal fun <O> callTyped(
    ctx: Context,
    handler: KFunction<*>,
    key: String?,
    input: Any?,
    hasInput: Boolean,
): DurableFuture<O> {
    val inv = ctx as InvocationContext
    val target = checkedTarget(handler, key, hasInput)
    return inv.callTarget(target, key ?: "", target.encodeInput(inv.json, input))
}

internal fun sendTyped(
    ctx: Context,
    handler: KFunction<*>,
    key: String?,
    input: Any?,
    hasInput: Boolean,
    delay: Duration,
) {
    val inv = ctx as InvocationContext
    val target = checkedTarget(handler, key, hasInput)
    ctx.send(target.service, target.handler, key ?: "", target.encodeInput(inv.json, input), delay)
}

private fun checkedTarget(handler: KFunction<*>, key: String?, hasInput: Boolean): HandlerTarget {
    val target = HandlerTargets.of(handler)
    target.checkKey(key)
    if (hasInput != target.takesInput) {
        val what = if (hasInput) "takes no input" else "takes an input"
        throw TerminalException(ErrorCode.BAD_REQUEST, "${target.qualifiedName} $what")
    }
    return target
}
