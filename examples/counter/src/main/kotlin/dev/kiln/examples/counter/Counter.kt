package dev.kiln.examples.counter

import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.stateKey

/** A durable counter per key: `POST /Counter/{key}/add` with a number, `POST /Counter/{key}/get`. */
@VirtualObject
class Counter {
    companion object {
        val COUNT = stateKey<Long>("count")
    }

    /** Adds [n] to the counter and returns the new total (exclusive: one at a time per key). */
    @Handler
    suspend fun add(ctx: ObjectContext, n: Long): Long {
        val total = (ctx.get(COUNT) ?: 0L) + n
        ctx.set(COUNT, total)
        return total
    }

    /** Returns the current total, 0 when the counter was never added to (shared: read-only). */
    @Shared
    suspend fun get(ctx: SharedObjectContext): Long = ctx.get(COUNT) ?: 0L
}
