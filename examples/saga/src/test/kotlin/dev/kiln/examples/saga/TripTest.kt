package dev.kiln.examples.saga

import dev.kiln.client.KilnClient
import dev.kiln.sdk.TerminalException
import dev.kiln.testing.KilnTest
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

@KilnTest(services = [Trip::class, Flights::class, Hotels::class, Cars::class])
class TripTest {
    @Test
    fun `a trip books flight, hotel and car`(client: KilnClient) = runBlocking {
        assertEquals("booked t1", client.call(Trip::book, TripRequest("t1", "LH1", "ritz", "vw")))
        assertEquals(listOf("t1"), client.call(Flights::status, "LH1").held)
        assertEquals(listOf("t1"), client.call(Hotels::status, "ritz").held)
        assertEquals(listOf("t1"), client.call(Cars::status, "vw").held)
    }

    @Test
    fun `a failed car reservation cancels the flight and the hotel`(client: KilnClient) = runBlocking {
        val e = assertThrows<TerminalException> {
            runBlocking { client.call(Trip::book, TripRequest("t2", "BA2", "savoy", "fiat", failAt = "car")) }
        }
        assertEquals(422, e.code)
        assertEquals("trip t2 failed: car fiat is not available for t2", e.message)
        assertEquals(ReservationStatus(emptyList(), listOf("reserve:t2", "cancel:t2")), client.call(Flights::status, "BA2"))
        assertEquals(ReservationStatus(emptyList(), listOf("reserve:t2", "cancel:t2")), client.call(Hotels::status, "savoy"))
        assertEquals(ReservationStatus(emptyList(), emptyList()), client.call(Cars::status, "fiat"))
    }
}
