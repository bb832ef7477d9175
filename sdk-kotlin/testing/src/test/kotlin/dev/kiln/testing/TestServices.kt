package dev.kiln.testing

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Service
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.TerminalException
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.run
import dev.kiln.sdk.stateKey
import kotlinx.serialization.Serializable
import java.util.concurrent.atomic.AtomicInteger

@VirtualObject
class Tally {
    companion object {
        val COUNT = stateKey<Long>("count")
    }

    @Handler
    suspend fun add(ctx: ObjectContext, n: Long): Long {
        val total = (ctx.get(COUNT) ?: 0L) + n
        ctx.set(COUNT, total)
        return total
    }

    @Shared
    suspend fun get(ctx: SharedObjectContext): Long = ctx.get(COUNT) ?: 0L
}

@Serializable
data class Order(val item: String, val quantity: Int)

@Service
class Shop {
    /** Counts executed orders (a `run` step each), so a test sees how often one really ran. */
    @Handler
    suspend fun order(ctx: Context, order: Order): String {
        if (order.quantity <= 0) throw TerminalException(422, "quantity must be positive, got ${order.quantity}")
        val n = ctx.run("count") { EXECUTED.incrementAndGet() }
        return "${order.quantity} x ${order.item} (#$n)"
    }

    companion object {
        val EXECUTED = AtomicInteger()
    }
}

/** A service that needs a constructor argument: served from a @BindService field. */
@Service
class Greeter(private val greeting: String) {
    @Handler
    suspend fun greet(ctx: Context, name: String): String = "$greeting, $name"
}
