// The values a KilnClient takes and returns besides handler inputs and outputs.
package dev.kiln.client

import kotlinx.serialization.KSerializer

/**
 * Per-request options of [KilnClient] calls and sends.
 *
 * @property idempotencyKey sent as header `idempotency-key`: the same key for the same target
 *   (service, object key, handler) runs the handler once; a repeated request gets the first one's
 *   response (a send: the first one's invocation id, [SentInvocation.alreadyAccepted] `true`) for
 *   as long as the runtime keeps it (`--idempotency-retention-secs`, 24 h by default). 1 to 256
 *   visible ASCII characters; the runtime refuses others with 400.
 * @property headers extra request headers (added to the client's default headers, overriding them
 *   by name).
 */
public class InvocationOptions(
    public val idempotencyKey: String? = null,
    public val headers: Map<String, String> = emptyMap(),
) {
    /** Returns a description of the options. */
    override fun toString(): String = "InvocationOptions(idempotencyKey=$idempotencyKey, headers=$headers)"

    /** Shared instances. */
    public companion object {
        /** No idempotency key, no extra headers. */
        public val NONE: InvocationOptions = InvocationOptions()
    }
}

/**
 * An invocation started by [KilnClient.send]: the runtime has made it durable and will run it.
 * Wait for its result with [KilnClient.attach] or look at it with [KilnClient.output].
 *
 * @param O the handler's output type.
 * @property invocationId the invocation's id (`inv_` + 32 hex digits), as the admin API and
 *   `GET /invocations/{id}/attach` know it.
 * @property alreadyAccepted `true` when an earlier send with the same idempotency key had already
 *   started this invocation (ingress status `PreviouslyAccepted`), `false` when this send started it.
 */
public class SentInvocation<O> internal constructor(
    public val invocationId: String,
    public val alreadyAccepted: Boolean,
    internal val outputSerializer: KSerializer<O>,
) {
    /** Returns the invocation id and whether it was already accepted. */
    override fun toString(): String = "SentInvocation($invocationId, alreadyAccepted=$alreadyAccepted)"
}

/** What [KilnClient.output] found: the invocation's output, or that it has not finished yet. */
public sealed interface InvocationOutput<out O> {
    /** The invocation has finished with [value]. */
    public data class Ready<out O>(
        /** The handler's output. */
        public val value: O,
    ) : InvocationOutput<O>

    /** The invocation has not finished yet (the ingress answered 470). */
    public data object Pending : InvocationOutput<Nothing>
}

/**
 * The ingress refused or could not answer a request, before or without running a handler: an
 * unknown service, handler or invocation (404), a malformed request (400), a body over the limit
 * (413), overload (429), a node shutting down or an owner that is unreachable (503), or an answer
 * that is not Kiln's. A handler's own failure is a [dev.kiln.sdk.TerminalException] instead.
 *
 * @property status the HTTP status.
 * @property code the `code` of the JSON error body, `null` if the body had none.
 */
public class KilnRequestException(public val status: Int, public val code: Int?, message: String) :
    RuntimeException(message) {
    /** `true` for 429 (overloaded) and 503 (unavailable): the same request may succeed later. */
    public val retryable: Boolean get() = status == 429 || status == 503
}
