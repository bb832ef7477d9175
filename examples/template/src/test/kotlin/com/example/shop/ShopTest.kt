package com.example.shop

import dev.kiln.client.InvocationOptions
import dev.kiln.client.KilnClient
import dev.kiln.sdk.TerminalException
import dev.kiln.testing.KilnTest
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** Runs against a real kiln node, started for this class with Cart and Greeter registered. */
@KilnTest(services = [Cart::class, Greeter::class])
class ShopTest {
    @Test
    fun `calls a virtual object by key and a service without one`(client: KilnClient) = runBlocking {
        assertEquals(2, client.call(Cart::add, "alice", Item("tea", 2)))
        assertEquals(3, client.call(Cart::add, "alice", Item("cake", 1)))
        assertEquals(listOf(Item("tea", 2), Item("cake", 1)), client.call(Cart::items, "alice"))
        assertEquals(emptyList<Item>(), client.call(Cart::items, "bob"))
        assertEquals("Hello, Ada!", client.call(Greeter::greet, "Ada"))
    }

    @Test
    fun `send returns an invocation id to attach to`(client: KilnClient) = runBlocking {
        val sent = client.send(Cart::add, "carol", Item("jam", 4))
        assertTrue(sent.invocationId.startsWith("inv_"))
        assertEquals(4, client.attach(sent))
    }

    @Test
    fun `an idempotency key makes a retried checkout pay once`(client: KilnClient) = runBlocking {
        client.call(Cart::add, "dave", Item("tea", 1))
        val once = InvocationOptions(idempotencyKey = "checkout-dave-1")
        val receipt = client.call(Cart::checkout, "dave", once)
        val retried = client.call(Cart::checkout, "dave", once)
        assertEquals(receipt, retried)
        assertEquals(emptyList<Item>(), client.call(Cart::items, "dave"))
    }

    @Test
    fun `a TerminalException from a handler reaches the caller`(client: KilnClient) {
        val e = assertThrows<TerminalException> { runBlocking { client.call(Cart::checkout, "empty") } }
        assertEquals(409, e.code)
        assertEquals("cart empty is empty", e.message)
        val blank = assertThrows<TerminalException> { client.blocking.call(Greeter::greet, " ") }
        assertEquals(400, blank.code)
    }
}
