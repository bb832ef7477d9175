package dev.kiln.examples.counter

import dev.kiln.client.KilnClient
import dev.kiln.testing.KilnTest
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test

@KilnTest(services = [Counter::class])
class CounterTest {
    @Test
    fun `adds per key and reads the total`(client: KilnClient) = runBlocking {
        assertEquals(0L, client.call(Counter::get, "a"))
        assertEquals(2L, client.call(Counter::add, "a", 2L))
        assertEquals(5L, client.call(Counter::add, "a", 3L))
        assertEquals(5L, client.call(Counter::get, "a"))
        assertEquals(0L, client.call(Counter::get, "b"))
    }

    @Test
    fun `concurrent adds to one key are applied one at a time`(client: KilnClient) = runBlocking {
        val totals = (1..20).map { async { client.call(Counter::add, "busy", 1L) } }.awaitAll()
        assertEquals((1L..20L).toList(), totals.sorted())
        assertEquals(20L, client.call(Counter::get, "busy"))
    }

    @Test
    fun `a send is applied once it has run`(client: KilnClient) = runBlocking {
        val sent = client.send(Counter::add, "sent", 4L)
        assertEquals(4L, client.attach(sent))
        assertEquals(4L, client.call(Counter::get, "sent"))
    }
}
