package dev.kiln.testing

import dev.kiln.client.BlockingKilnClient
import dev.kiln.client.InvocationOptions
import dev.kiln.client.InvocationOutput
import dev.kiln.client.KilnClient
import dev.kiln.client.KilnRequestException
import dev.kiln.sdk.TerminalException
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Nested
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.TimeSource

/** @KilnTest against the real kiln binary: services from the annotation, the injected client. */
@KilnTest(services = [Tally::class, Shop::class])
class KilnTestTest {
    @Test
    fun `calls an object by key and a service without one`(client: KilnClient) = runBlocking {
        assertEquals(5L, client.call(Tally::add, "calls", 5L))
        assertEquals(7L, client.call(Tally::add, "calls", 2L))
        assertEquals(7L, client.call(Tally::get, "calls"))
        assertEquals(0L, client.call(Tally::get, "other"))
        assertTrue(client.call(Shop::order, Order("tea", 2)).startsWith("2 x tea"))
    }

    @Test
    fun `send returns at once and attach waits for the output`(client: KilnClient) = runBlocking {
        val sent = client.send(Tally::add, "sends", 3L)
        assertTrue(sent.invocationId.startsWith("inv_"), sent.invocationId)
        assertFalse(sent.alreadyAccepted)
        assertEquals(3L, client.attach(sent))
        assertEquals(InvocationOutput.Ready(3L), client.output(sent))
        assertEquals(3L, client.attach<Long>(sent.invocationId))
    }

    @Test
    fun `a delayed send is pending until its time`(client: KilnClient) = runBlocking {
        val start = TimeSource.Monotonic.markNow()
        val sent = client.send(Tally::add, "delayed", 1L, delay = 800.milliseconds)
        assertEquals(InvocationOutput.Pending, client.output(sent))
        assertEquals(1L, client.attach(sent))
        assertTrue(start.elapsedNow() >= 800.milliseconds, "attached after ${start.elapsedNow()}")
    }

    @Test
    fun `an idempotency key runs the handler once`(client: KilnClient) = runBlocking {
        val once = InvocationOptions(idempotencyKey = "order-1")
        val first = client.call(Shop::order, Order("cake", 1), once)
        val again = client.call(Shop::order, Order("cake", 1), once)
        assertEquals(first, again)
        val sent = client.send(Tally::add, "idem", 10L, options = InvocationOptions(idempotencyKey = "s-1"))
        val resent = client.send(Tally::add, "idem", 10L, options = InvocationOptions(idempotencyKey = "s-1"))
        assertTrue(resent.alreadyAccepted)
        assertEquals(sent.invocationId, resent.invocationId)
        assertEquals(10L, client.attach(resent))
        assertEquals(10L, client.call(Tally::get, "idem"))
    }

    @Test
    fun `a handler's TerminalException reaches the caller with its code and message`(client: BlockingKilnClient) {
        val e = assertThrows<TerminalException> { client.call(Shop::order, Order("tea", 0)) }
        assertEquals(422, e.code)
        assertEquals("quantity must be positive, got 0", e.message)
        val sent = client.send(Shop::order, Order("tea", -1))
        assertEquals(422, assertThrows<TerminalException> { client.attach(sent) }.code)
    }

    @Test
    fun `an unknown invocation is a request error, not a terminal failure`(client: BlockingKilnClient) {
        val e = assertThrows<KilnRequestException> { client.attach<Long>("inv_" + "0".repeat(32)) }
        assertEquals(404, e.status)
    }

    @Test
    fun `the node's URLs and admin API are injectable`(node: KilnNode, client: KilnClient) {
        assertEquals(node.ingressUrl, client.ingressUrl)
        assertTrue(node.isRunning)
        val services = node.adminGet("/services")
        assertTrue("Tally" in services && "Shop" in services, services)
        assertTrue(node.endpointUrl!!.startsWith("http://127.0.0.1:"))
    }

    @Nested
    inner class NestedClasses {
        @Test
        fun `share the outer class's node`(node: KilnNode, client: KilnClient) {
            assertSame(node.client, client)
            assertEquals(2L, client.blocking.call(Tally::add, "nested", 2L))
        }
    }
}
