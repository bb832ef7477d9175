package com.example.shop

import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.TerminalException
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.run
import dev.kiln.sdk.stateKey
import kotlinx.serialization.Serializable

@Serializable
data class Item(val sku: String, val quantity: Int)

@Serializable
data class Receipt(val cart: String, val items: List<Item>, val paymentId: String)

/** A shopping cart per key (`POST /Cart/{key}/add`): its items are the object's durable state. */
@VirtualObject
class Cart {
    companion object {
        val ITEMS = stateKey<List<Item>>("items")
    }

    /** Adds [item] and returns the number of pieces in the cart (exclusive: one at a time per cart). */
    @Handler
    suspend fun add(ctx: ObjectContext, item: Item): Int {
        if (item.quantity <= 0) throw TerminalException(400, "quantity must be positive, got ${item.quantity}")
        val items = (ctx.get(ITEMS) ?: emptyList()) + item
        ctx.set(ITEMS, items)
        return items.sumOf { it.quantity }
    }

    /** The cart's items (shared: concurrent, read-only). */
    @Shared
    suspend fun items(ctx: SharedObjectContext): List<Item> = ctx.get(ITEMS) ?: emptyList()

    /** Pays for the items (a durable step: it runs once, even across retries) and empties the cart. */
    @Handler
    suspend fun checkout(ctx: ObjectContext): Receipt {
        val items = ctx.get(ITEMS) ?: emptyList()
        if (items.isEmpty()) throw TerminalException(409, "cart ${ctx.key} is empty")
        val paymentId = ctx.run("pay") { Payments.charge(ctx.key, items) }
        ctx.clearAll()
        return Receipt(ctx.key, items, paymentId)
    }
}

/** Stands in for a payment provider: a real one would be called over the network. */
object Payments {
    private var next = 0

    @Synchronized
    fun charge(cart: String, items: List<Item>): String = "pay-${++next}-$cart-${items.size}"
}
