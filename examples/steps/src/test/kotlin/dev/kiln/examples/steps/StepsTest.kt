package dev.kiln.examples.steps

import dev.kiln.client.BlockingKilnClient
import dev.kiln.testing.BindService
import dev.kiln.testing.KilnTest
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import java.nio.file.Files

@KilnTest
class StepsTest {
    companion object {
        /** Every executed step appends a line here. */
        val log = Files.createTempFile("steps", ".log").also { it.toFile().deleteOnExit() }

        @BindService
        val steps = Steps(log = log, stepDelayMs = 5)
    }

    @Test
    fun `three durable steps run once each`(client: BlockingKilnClient) {
        assertEquals("x-1 x-2 x-3", client.call(Steps::threeStep, "x"))
        assertEquals(listOf("x-1", "x-2", "x-3"), Files.readAllLines(log).filter { it.startsWith("x-") })
    }

    @Test
    fun `parallel steps keep their start order`(client: BlockingKilnClient) {
        assertEquals("p-a p-b p-c p-d", client.call(Steps::parallelSteps, "p"))
    }
}
