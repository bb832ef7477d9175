package dev.kiln.examples.steps

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.Service
import dev.kiln.sdk.run
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.StandardOpenOption

/**
 * A stateless service with a three-step handler. Each step is a durable `ctx.run`: after a crash
 * the finished steps are replayed from the journal, not executed again.
 *
 * Test hooks (env): `STEPS_LOG=<file>` appends one line `<input>-<k>` per executed step;
 * `STEP_DELAY_MS=<ms>` makes every step sleep that long.
 */
@Service
class Steps(
    private val log: Path? = System.getenv("STEPS_LOG")?.takeIf { it.isNotBlank() }?.let { Path.of(it) },
    private val stepDelayMs: Long = System.getenv("STEP_DELAY_MS")?.trim()?.toLongOrNull() ?: 0L,
) {
    /** Runs steps 1..3 (step k returns "<input>-k") and returns their results joined by spaces. */
    @Handler
    suspend fun threeStep(ctx: Context, input: String): String {
        val results = (1..3).map { k ->
            ctx.run("step-$k") { step(input, k) }
        }
        return results.joinToString(" ")
    }

    private fun step(input: String, k: Int): String {
        if (stepDelayMs > 0) Thread.sleep(stepDelayMs)
        val result = "$input-$k"
        log?.let { appendLine(it, result) }
        return result
    }

    private companion object {
        private val logLock = Any()

        fun appendLine(file: Path, line: String) = synchronized(logLock) {
            // One unbuffered write with O_APPEND: the line is in the file (page cache) when this returns,
            // so a kill -9 right after loses nothing.
            Files.newByteChannel(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.APPEND).use {
                it.write(java.nio.ByteBuffer.wrap("$line\n".encodeToByteArray()))
            }
        }
    }
}
