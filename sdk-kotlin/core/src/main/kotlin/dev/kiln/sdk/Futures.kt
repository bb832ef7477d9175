// Durable futures handed to user code, and the all/any/first combinators over them.
package dev.kiln.sdk

import kotlin.time.Duration

/** A future of entry [index]: its result comes with the journal, in a COMPLETION frame, or (a `run`) from its block once ACKed. */
internal open class FutureImpl<T>(
    val invocation: Invocation,
    val index: Int,
    private val decodeValue: (ByteArray) -> T,
) : DurableFuture<T> {
    /** The value of a result, or its failure thrown as a [TerminalException]. */
    fun decode(r: EntryResult): T {
        r.failure?.let { throw TerminalException(it.code, it.message) }
        return decodeValue(r.value ?: ByteArray(0))
    }

    override suspend fun await(): T = invocation.awaits.future(this, listOf(index))

    override suspend fun await(timeout: Duration): T = invocation.awaits.withTimeout(this, timeout)

    override fun toString(): String = "DurableFuture(entry $index)"
}

internal class AwakeableImpl<T>(
    invocation: Invocation,
    index: Int,
    override val id: String,
    decodeValue: (ByteArray) -> T,
) : FutureImpl<T>(invocation, index, decodeValue),
    Awakeable<T> {
    override fun toString(): String = "Awakeable($id)"
}

@Suppress("UNCHECKED_CAST")
internal suspend fun <T> awaitAllFutures(futures: List<DurableFuture<out T>>): List<T> {
    if (futures.isEmpty()) return emptyList()
    val impls = futures.map { it as FutureImpl<*> }
    return impls[0].invocation.awaits.all(impls) as List<T>
}

internal suspend fun awaitAnyFuture(futures: List<DurableFuture<*>>): Int {
    require(futures.isNotEmpty()) { "awaitAny needs at least one future" }
    val impls = futures.map { it as FutureImpl<*> }
    return impls[0].invocation.awaits.any(impls)
}

internal suspend fun <T> awaitFirstFuture(futures: List<DurableFuture<out T>>): T {
    require(futures.isNotEmpty()) { "awaitFirst needs at least one future" }
    @Suppress("UNCHECKED_CAST")
    val impls = futures.map { it as FutureImpl<out T> }
    return impls[0].invocation.awaits.first(impls)
}
