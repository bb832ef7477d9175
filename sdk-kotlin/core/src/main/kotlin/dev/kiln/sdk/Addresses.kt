// How a handler is addressed (its service's name and kind, its own name), for Kiln's own modules
// that address handlers from outside an endpoint (kiln-client): one set of naming rules, the one
// discovery publishes, so a client can never name a handler differently from its endpoint.
package dev.kiln.sdk

import kotlin.reflect.KClass
import kotlin.reflect.KFunction

/** Marks API that exists for Kiln's own modules (kiln-client); it may change without notice. */
@RequiresOptIn(message = "Kiln-internal API, for Kiln's own modules; it may change without notice.")
@Retention(AnnotationRetention.BINARY)
@Target(AnnotationTarget.CLASS, AnnotationTarget.FUNCTION)
public annotation class KilnInternalApi

/**
 * The service an annotated class is served as: its [name] (the annotation's, or the simple class
 * name), whether it is [keyed] (virtual objects and workflows), and its [kind] as discovery names
 * it (`service`, `virtual_object`, `workflow`).
 */
@KilnInternalApi
public class ServiceAddress internal constructor(
    public val name: String,
    public val keyed: Boolean,
    public val kind: String,
)

/**
 * The [ServiceAddress] of [cls]; `IllegalArgumentException` unless it carries exactly one of
 * `@Service`, `@VirtualObject`, `@Workflow` with a valid name.
 */
@KilnInternalApi
public fun serviceAddressOf(cls: KClass<*>): ServiceAddress {
    val (name, kind) = serviceIdentity(cls)
    return ServiceAddress(name, kind.keyed, kind.wire)
}

/** A handler's name as discovery publishes it: `@Handler(name)` or `@Workflow(name)`, else the function's. */
@KilnInternalApi
public fun handlerNameOf(f: KFunction<*>): String = handlerName(f)
