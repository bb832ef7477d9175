// Turns annotated user classes into service/handler definitions (reflection happens once, at bind).
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.addJsonObject
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import kotlinx.serialization.json.putJsonArray
import kotlinx.serialization.serializer
import java.lang.reflect.InvocationTargetException
import java.lang.reflect.Method
import kotlin.coroutines.intrinsics.suspendCoroutineUninterceptedOrReturn
import kotlin.reflect.KClass
import kotlin.reflect.KFunction
import kotlin.reflect.KType
import kotlin.reflect.full.declaredMemberFunctions
import kotlin.reflect.full.findAnnotation
import kotlin.reflect.jvm.javaMethod

/** JSON used for every user payload (inputs, outputs, state values, run results). */
internal val KilnJson: Json = Json { ignoreUnknownKeys = true }

internal enum class ServiceKind(val wire: String) { SERVICE("service"), VIRTUAL_OBJECT("virtual_object") }

private val NAME_PATTERN = Regex("[A-Za-z_][A-Za-z0-9_]*")

internal class ServiceDefinition(val name: String, val kind: ServiceKind, val handlers: Map<String, HandlerDefinition>)

internal class HandlerDefinition(
    val serviceName: String,
    val name: String,
    /** `shared` per discovery: true for every handler of a stateless service and for `@Shared`. */
    val shared: Boolean,
    private val instance: Any,
    private val method: Method,
    private val inputType: KType?,
    private val inputSerializer: KSerializer<Any?>?,
    /** `null` for handlers returning Unit: their output is an empty payload. */
    private val outputSerializer: KSerializer<Any?>?,
) {
    val qualifiedName: String get() = "$serviceName/$name"

    /**
     * Decodes [input], calls the handler and encodes its result. A body that does not decode is a
     * [TerminalException] with code 400 (retrying cannot fix it).
     */
    suspend fun invoke(ctx: Context, input: ByteArray): ByteArray {
        val args: Array<Any?> = if (inputSerializer == null) arrayOf(ctx) else arrayOf(ctx, decodeInput(input))
        val result = callSuspend(args)
        return if (outputSerializer == null) ByteArray(0)
        else KilnJson.encodeToString(outputSerializer, result).encodeToByteArray()
    }

    private fun decodeInput(input: ByteArray): Any? {
        val ser = inputSerializer!!
        if (input.isEmpty()) {
            if (inputType!!.isMarkedNullable) return null
            throw TerminalException(400, "handler $qualifiedName expects an input of type $inputType, got an empty body")
        }
        return try {
            KilnJson.decodeFromString(ser, input.decodeToString())
        } catch (e: Exception) {
            throw TerminalException(400, "invalid input for $qualifiedName: ${e.message}")
        }
    }

    private suspend fun callSuspend(args: Array<Any?>): Any? = suspendCoroutineUninterceptedOrReturn { cont ->
        try {
            method.invoke(instance, *args, cont)
        } catch (e: InvocationTargetException) {
            throw e.targetException ?: e
        }
    }
}

/** Reads the annotations of [instance]'s class and builds its definition; fails on misuse. */
internal fun defineService(instance: Any): ServiceDefinition {
    val cls: KClass<*> = instance::class
    val svc = cls.findAnnotation<Service>()
    val obj = cls.findAnnotation<VirtualObject>()
    require(svc == null || obj == null) { "${cls.qualifiedName} is annotated both @Service and @VirtualObject" }
    require(svc != null || obj != null) { "${cls.qualifiedName} is neither a @Service nor a @VirtualObject" }
    val kind = if (obj != null) ServiceKind.VIRTUAL_OBJECT else ServiceKind.SERVICE
    val serviceName = (svc?.name ?: obj!!.name).ifEmpty { cls.simpleName ?: "" }
    require(NAME_PATTERN.matches(serviceName)) { "service name '$serviceName' does not match ${NAME_PATTERN.pattern}" }

    val handlers = LinkedHashMap<String, HandlerDefinition>()
    val functions = cls.declaredMemberFunctions
        .filter { it.findAnnotation<Handler>() != null || it.findAnnotation<Shared>() != null }
        .sortedBy { it.name }
    for (f in functions) {
        val h = defineHandler(instance, serviceName, kind, f)
        require(handlers.put(h.name, h) == null) { "service $serviceName has two handlers named '${h.name}'" }
    }
    require(handlers.isNotEmpty()) { "service $serviceName (${cls.qualifiedName}) has no @Handler functions" }
    return ServiceDefinition(serviceName, kind, handlers)
}

@Suppress("UNCHECKED_CAST")
private fun defineHandler(instance: Any, serviceName: String, kind: ServiceKind, f: KFunction<*>): HandlerDefinition {
    val name = (f.findAnnotation<Handler>()?.name ?: "").ifEmpty { f.name }
    val where = "handler $serviceName/$name (${instance::class.qualifiedName}.${f.name})"
    require(NAME_PATTERN.matches(name)) { "$where: name does not match ${NAME_PATTERN.pattern}" }
    require(f.isSuspend) { "$where must be a suspend function" }
    val isSharedAnnotated = f.findAnnotation<Shared>() != null
    require(!(isSharedAnnotated && kind == ServiceKind.SERVICE)) {
        "$where: @Shared is only meaningful in a @VirtualObject (every handler of a service is shared)"
    }
    val shared = kind == ServiceKind.SERVICE || isSharedAnnotated

    val params = f.parameters.drop(1) // the receiver (instance)
    require(params.size in 1..2) { "$where must take a context and at most one input parameter" }
    val ctxClass = params[0].type.classifier
    val allowed: Set<KClass<*>> = when {
        kind == ServiceKind.SERVICE -> setOf(Context::class)
        shared -> setOf(Context::class, SharedObjectContext::class)
        else -> setOf(Context::class, SharedObjectContext::class, ObjectContext::class)
    }
    require(ctxClass in allowed) {
        "$where: first parameter must be one of ${allowed.map { it.simpleName }}, is ${params[0].type}"
    }
    val inputType = params.getOrNull(1)?.type
    val inputSerializer = inputType?.let { serializerFor(it, where) }
    val returnType = f.returnType
    val outputSerializer = if (returnType.classifier == Unit::class) null else serializerFor(returnType, where)

    val method = f.javaMethod ?: throw IllegalArgumentException("$where has no JVM method")
    if (!method.canAccess(instance)) method.isAccessible = true
    return HandlerDefinition(
        serviceName, name, shared, instance, method, inputType,
        inputSerializer as KSerializer<Any?>?, outputSerializer as KSerializer<Any?>?,
    )
}

private fun serializerFor(type: KType, where: String): KSerializer<*> = try {
    serializer(type)
} catch (e: Exception) {
    throw IllegalArgumentException("$where: type $type is not serializable with kotlinx.serialization (${e.message})", e)
}

/** The `GET /discover` document (protocol §1). */
internal fun discoveryJson(services: Collection<ServiceDefinition>): String = buildJsonObject {
    put("protocolVersion", 1)
    putJsonArray("services") {
        for (s in services) addJsonObject {
            put("name", s.name)
            put("kind", s.kind.wire)
            putJsonArray("handlers") {
                for (h in s.handlers.values) addJsonObject {
                    put("name", h.name)
                    put("kind", if (h.shared) "shared" else "exclusive")
                }
            }
        }
    }
}.toString()
