package dev.kiln.testing

import dev.kiln.client.BlockingKilnClient
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance

/** Services with constructor arguments, from a companion field; the client injected into the constructor. */
@KilnTest(services = [Tally::class])
class BindServiceTest(private val client: BlockingKilnClient) {
    companion object {
        @BindService
        val greeter = Greeter("Hello")
    }

    @Test
    fun `a companion field's service is served with the annotation's`() {
        assertEquals("Hello, Ada", client.call(Greeter::greet, "Ada"))
        assertEquals(1L, client.call(Tally::add, "bound", 1L))
    }
}

/** With a per-class lifecycle, instance fields are served too. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@KilnTest
class PerClassBindServiceTest {
    @BindService
    private val greeter = Greeter("Hi")

    @Test
    fun `an instance field's service is served`(client: BlockingKilnClient) {
        assertEquals("Hi, Bo", client.call(Greeter::greet, "Bo"))
    }
}
