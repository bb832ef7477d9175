// JSON of user payloads: the default settings, the endpoint's serializers, the empty-payload rules.
// Every payload and state value of an invocation goes through its endpoint's Json (KilnEndpoint(json)).
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import kotlinx.serialization.modules.SerializersModule
import kotlinx.serialization.serializer
import kotlin.reflect.KType

/**
 * The default JSON of user payloads (inputs, outputs, state values, run results), see
 * [KilnEndpoint.defaultJson]: unknown keys are ignored (a newer caller may send more fields) and
 * default values are encoded (a field `closed: Boolean = false` is in the output and the state, so
 * other readers see it).
 */
internal val KilnJson: Json = Json {
    ignoreUnknownKeys = true
    encodeDefaults = true
}

/** The serializer of [type] in [json]'s module (contextual serializers included). */
internal fun serializerFor(json: Json, type: KType, where: String): KSerializer<*> = try {
    json.serializersModule.serializer(type)
} catch (e: Exception) {
    throw IllegalArgumentException(
        "$where: type $type is not serializable with kotlinx.serialization (${e.message})",
        e,
    )
}

/** The serializers module of the JSON of the endpoint [this] context's invocation runs on (for the reified forms). */
@PublishedApi
internal val Context.kilnSerializersModule: SerializersModule
    get() = (this as InvocationContext).json.serializersModule

/**
 * The terminal failure for a [type] without a serializer ([cause]): a fault in the code that no
 * retry can fix, so it fails the invocation at once with a message naming the fix.
 */
@PublishedApi
internal fun unserializable(type: KType, cause: Throwable, what: String = "a value"): TerminalException =
    TerminalException(
        ErrorCode.BAD_REQUEST,
        "$what of type $type cannot be serialized: ${cause.message}. Annotate the class @Serializable, or " +
            "register a serializer for it in the serializersModule of the endpoint's Json (KilnEndpoint(json = …))",
    )

/**
 * Decodes a JSON payload; an empty payload is `Unit` for a Unit serializer and `null` for a
 * nullable one (the SDK's encoding of "no value").
 */
@Suppress("UNCHECKED_CAST")
internal fun <T> decodePayload(json: Json, serializer: KSerializer<T>, bytes: ByteArray): T {
    if (bytes.isEmpty()) {
        if (serializer.descriptor.serialName == "kotlin.Unit") return Unit as T
        if (serializer.descriptor.isNullable) return null as T
    }
    return json.decodeFromString(serializer, bytes.decodeToString())
}

/** Encodes a JSON payload; `Unit` is the empty payload. */
internal fun <T> encodePayload(json: Json, serializer: KSerializer<T>, value: T): ByteArray =
    if (serializer.descriptor.serialName == "kotlin.Unit") {
        ByteArray(0)
    } else {
        json.encodeToString(serializer, value).encodeToByteArray()
    }
