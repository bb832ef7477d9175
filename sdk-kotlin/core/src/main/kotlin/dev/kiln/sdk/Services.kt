// Turns annotated user classes into service/handler definitions (reflection happens once, at bind).
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.addJsonObject
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import kotlinx.serialization.json.putJsonArray
import kotlinx.serialization.json.putJsonObject
import org.slf4j.Logger
import org.slf4j.LoggerFactory
import java.lang.reflect.InvocationTargetException
import java.lang.reflect.Method
import kotlin.coroutines.intrinsics.suspendCoroutineUninterceptedOrReturn
import kotlin.reflect.KClass
import kotlin.reflect.KFunction
import kotlin.reflect.KType
import kotlin.reflect.full.declaredMemberFunctions
import kotlin.reflect.full.findAnnotation
import kotlin.reflect.jvm.javaMethod

internal enum class ServiceKind(val wire: String) {
    SERVICE("service"),
    VIRTUAL_OBJECT("virtual_object"),
    WORKFLOW("workflow"),
    ;

    /** Virtual objects and workflows are addressed by a key; stateless services are not. */
    val keyed: Boolean get() = this != SERVICE
}

/** A handler's kind in discovery (protocol §1, §5). */
internal enum class HandlerKind(val wire: String) { EXCLUSIVE("exclusive"), SHARED("shared"), WORKFLOW("workflow") }

/** A handler's `retryPolicy` in discovery; `null` fields are left to the runtime. */
internal class RetryPolicySpec(val initialIntervalMs: Long?, val maxIntervalMs: Long?, val maxAttempts: Int?)

/** Service and handler names (protocol §1). */
internal val NAME_PATTERN = Regex("[A-Za-z_][A-Za-z0-9_]*")

internal class ServiceDefinition(val name: String, val kind: ServiceKind, val handlers: Map<String, HandlerDefinition>)

internal class HandlerDefinition(
    val serviceName: String,
    val name: String,
    val serviceKind: ServiceKind,
    val kind: HandlerKind,
    val retryPolicy: RetryPolicySpec?,
    /** The JSON of the endpoint the service is bound to: payloads and state values. */
    val json: Json,
    /** The logger named after the service's class, behind `ctx.logger`. */
    val logger: Logger,
    private val instance: Any,
    private val method: Method,
    private val inputType: KType?,
    private val inputSerializer: KSerializer<Any?>?,
    /** `null` for handlers returning Unit: their output is an empty payload. */
    private val outputSerializer: KSerializer<Any?>?,
) {
    val qualifiedName: String get() = "$serviceName/$name"

    /** True for handlers that may not write state: every handler except exclusive and workflow-run ones. */
    val shared: Boolean get() = kind == HandlerKind.SHARED

    /**
     * Decodes [input], calls the handler and encodes its result. A body that does not decode (or
     * a body given to a handler without input) is a [TerminalException] with code 400: retrying
     * cannot fix it.
     */
    suspend fun invoke(ctx: Context, input: ByteArray): ByteArray {
        val args: Array<Any?> = if (inputSerializer == null) {
            checkNoInput(input)
            arrayOf(ctx)
        } else {
            arrayOf(ctx, decodeInput(input))
        }
        val result = callSuspend(args)
        return if (outputSerializer == null) {
            ByteArray(0)
        } else {
            json.encodeToString(outputSerializer, result).encodeToByteArray()
        }
    }

    /** An empty body, or JSON `null`, is "no input"; anything else is a caller's mistake. */
    private fun checkNoInput(input: ByteArray) {
        val text = input.decodeToString().trim()
        if (text.isEmpty() || text == "null") return
        throw TerminalException(
            ErrorCode.BAD_REQUEST,
            "handler $qualifiedName takes no input, got a body of ${input.size} bytes: send an empty body",
        )
    }

    private fun decodeInput(input: ByteArray): Any? {
        val ser = inputSerializer!!
        if (input.isEmpty()) {
            if (inputType!!.isMarkedNullable) return null
            throw TerminalException(
                ErrorCode.BAD_REQUEST,
                "handler $qualifiedName expects $inputType, got an empty body",
            )
        }
        return try {
            json.decodeFromString(ser, input.decodeToString())
        } catch (e: Exception) {
            // a SerializationException, or an exception of the input class's init block: the same on every retry
            throw TerminalException(ErrorCode.BAD_REQUEST, "handler $qualifiedName expects $inputType: ${e.message}")
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

/**
 * Reads the annotations of [instance]'s class and builds its definition, with serializers from
 * [json]'s module; fails on misuse ([IllegalArgumentException], at bind time).
 */
internal fun defineService(instance: Any, json: Json = KilnJson): ServiceDefinition {
    val cls: KClass<*> = instance::class
    val (serviceName, kind) = serviceIdentity(cls)

    val handlers = LinkedHashMap<String, HandlerDefinition>()
    val functions = cls.declaredMemberFunctions
        .filter {
            it.findAnnotation<Handler>() != null ||
                it.findAnnotation<Shared>() != null ||
                it.findAnnotation<Workflow>() != null
        }
        .sortedBy { it.name }
    for (f in functions) {
        val h = defineHandler(instance, serviceName, kind, f, json)
        require(handlers.put(h.name, h) == null) { "service $serviceName has two handlers named '${h.name}'" }
    }
    require(handlers.isNotEmpty()) { "service $serviceName (${cls.qualifiedName}) has no @Handler functions" }
    if (kind == ServiceKind.WORKFLOW) {
        val runs = handlers.values.count { it.kind == HandlerKind.WORKFLOW }
        require(runs == 1) {
            "workflow $serviceName (${cls.qualifiedName}) must have exactly one run handler annotated @Workflow, has $runs"
        }
    }
    return ServiceDefinition(serviceName, kind, handlers)
}

/** The service name and kind of an annotated class; fails unless exactly one kind annotation is present. */
internal fun serviceIdentity(cls: KClass<*>): Pair<String, ServiceKind> {
    val svc = cls.findAnnotation<Service>()
    val obj = cls.findAnnotation<VirtualObject>()
    val wf = cls.findAnnotation<Workflow>()
    val count = listOfNotNull(svc, obj, wf).size
    require(count <= 1) { "${cls.qualifiedName} has more than one of @Service, @VirtualObject, @Workflow" }
    require(count == 1) { "${cls.qualifiedName} is not annotated @Service, @VirtualObject or @Workflow" }
    val kind = when {
        obj != null -> ServiceKind.VIRTUAL_OBJECT
        wf != null -> ServiceKind.WORKFLOW
        else -> ServiceKind.SERVICE
    }
    val serviceName = (svc?.name ?: obj?.name ?: wf!!.name).ifEmpty { cls.simpleName ?: "" }
    require(NAME_PATTERN.matches(serviceName)) { "service name '$serviceName' does not match ${NAME_PATTERN.pattern}" }
    return serviceName to kind
}

/** A handler's name: `@Handler(name)` or `@Workflow(name)` when given, else the function's name. */
internal fun handlerName(f: KFunction<*>): String {
    val explicit = f.findAnnotation<Handler>()?.name?.takeIf { it.isNotEmpty() }
        ?: f.findAnnotation<Workflow>()?.name
    return explicit.orEmpty().ifEmpty { f.name }
}

@Suppress("UNCHECKED_CAST")
private fun defineHandler(
    instance: Any,
    serviceName: String,
    kind: ServiceKind,
    f: KFunction<*>,
    json: Json,
): HandlerDefinition {
    val name = handlerName(f)
    val where = "handler $serviceName/$name (${instance::class.qualifiedName}.${f.name})"
    require(NAME_PATTERN.matches(name)) { "$where: name does not match ${NAME_PATTERN.pattern}" }
    require(f.isSuspend) { "$where must be a suspend function" }
    val isSharedAnnotated = f.findAnnotation<Shared>() != null
    val isRun = f.findAnnotation<Workflow>() != null
    require(!(isSharedAnnotated && kind == ServiceKind.SERVICE)) {
        "$where: @Shared is only meaningful in a @VirtualObject or @Workflow (every handler of a service is shared)"
    }
    require(!isRun || kind == ServiceKind.WORKFLOW) {
        "$where: @Workflow on a function marks the run handler of a @Workflow class"
    }
    require(!(isRun && isSharedAnnotated)) { "$where: a workflow's run handler cannot be @Shared" }
    val handlerKind = when {
        isRun -> HandlerKind.WORKFLOW
        kind == ServiceKind.SERVICE || kind == ServiceKind.WORKFLOW || isSharedAnnotated -> HandlerKind.SHARED
        else -> HandlerKind.EXCLUSIVE
    }

    val params = f.parameters.drop(1) // the receiver (instance)
    require(params.size in 1..2) { "$where must take a context and at most one input parameter" }
    val ctxClass = params[0].type.classifier
    // Context only for services, a keyed context only for objects and workflows: the typed calls'
    // overloads tell keyed from unkeyed targets by it (checkContextType).
    val allowed: Set<KClass<*>> = when {
        kind == ServiceKind.SERVICE -> setOf(Context::class)
        handlerKind == HandlerKind.WORKFLOW -> setOf(
            SharedObjectContext::class,
            ObjectContext::class,
            SharedWorkflowContext::class,
            WorkflowContext::class,
        )
        kind == ServiceKind.WORKFLOW -> setOf(SharedObjectContext::class, SharedWorkflowContext::class)
        handlerKind == HandlerKind.SHARED -> setOf(SharedObjectContext::class)
        else -> setOf(SharedObjectContext::class, ObjectContext::class)
    }
    require(ctxClass in allowed) {
        val why = checkContextType(kind, ctxClass)?.let { " ($it)" }.orEmpty()
        "$where: first parameter must be one of ${allowed.map { it.simpleName }}, is ${params[0].type}$why"
    }
    val inputType = params.getOrNull(1)?.type
    val inputSerializer = inputType?.let { serializerFor(json, it, where) }
    val returnType = f.returnType
    val outputSerializer = if (returnType.classifier == Unit::class) null else serializerFor(json, returnType, where)

    val method = f.javaMethod ?: throw IllegalArgumentException("$where has no JVM method")
    if (!method.canAccess(instance)) method.isAccessible = true
    val retry = f.findAnnotation<Retry>()?.let { r ->
        require(r.initialIntervalMs >= -1 && r.maxIntervalMs >= -1 && r.maxAttempts >= -1) {
            "$where: @Retry values must be -1 (runtime default) or non-negative"
        }
        RetryPolicySpec(
            r.initialIntervalMs.takeIf { it >= 0 },
            r.maxIntervalMs.takeIf { it >= 0 },
            r.maxAttempts.takeIf { it >= 0 },
        ).takeIf { it.initialIntervalMs != null || it.maxIntervalMs != null || it.maxAttempts != null }
    }
    return HandlerDefinition(
        serviceName, name, kind, handlerKind, retry, json, LoggerFactory.getLogger(instance.javaClass), instance,
        method, inputType,
        inputSerializer as KSerializer<Any?>?, outputSerializer as KSerializer<Any?>?,
    )
}

/** The `GET /discover` document (protocol §1). */
internal fun discoveryJson(services: Collection<ServiceDefinition>): String = buildJsonObject {
    put("protocolVersion", 1)
    putJsonArray("services") {
        for (s in services) {
            addJsonObject {
                put("name", s.name)
                put("kind", s.kind.wire)
                putJsonArray("handlers") {
                    for (h in s.handlers.values) {
                        addJsonObject {
                            put("name", h.name)
                            put("kind", h.kind.wire)
                            h.retryPolicy?.let { r ->
                                putJsonObject("retryPolicy") {
                                    r.initialIntervalMs?.let { put("initialIntervalMs", it) }
                                    r.maxIntervalMs?.let { put("maxIntervalMs", it) }
                                    r.maxAttempts?.let { put("maxAttempts", it) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}.toString()
