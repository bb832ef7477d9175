package dev.kiln.examples.steps

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.Service
import dev.kiln.sdk.awaitAll
import dev.kiln.sdk.run
import dev.kiln.sdk.runAsync
import kotlinx.coroutines.async
import kotlinx.coroutines.coroutineScope
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.StandardOpenOption
import kotlin.random.Random

/**
 * A stateless service with a three-step handler. Each step is a durable `ctx.run`: after a crash
 * the finished steps are replayed from the journal, not executed again.
 *
 * Test hooks (env): `STEPS_LOG=<file>` appends one line `<input>-<k>` per executed step;
 * `STEP_DELAY_MS=<ms>` makes every step sleep that long (a random share of it in `parallelSteps`);
 * `STEPS_DIR=<dir>` makes every executed step of `parallelSteps` create a new file there.
 */
@Service
class Steps(
    private val log: Path? = System.getenv("STEPS_LOG")?.takeIf { it.isNotBlank() }?.let { Path.of(it) },
    private val stepDelayMs: Long = System.getenv("STEP_DELAY_MS")?.trim()?.toLongOrNull() ?: 0L,
    private val dir: Path? = System.getenv("STEPS_DIR")?.takeIf { it.isNotBlank() }?.let { Path.of(it) },
) {
    /** Runs steps 1..3 (step k returns "<input>-k") and returns their results joined by spaces. */
    @Handler
    suspend fun threeStep(ctx: Context, input: String): String {
        val results = (1..3).map { k ->
            ctx.run("step-$k") { step(input, k) }
        }
        return results.joinToString(" ")
    }

    /**
     * Four durable steps at once: two `ctx.runAsync` and two `ctx.run` in `async` coroutines. Each
     * returns `"<input>-<name>"`; the result is the four joined by spaces, in start order
     * (`"x-a x-b x-c x-d"`), whichever step finishes first.
     */
    @Handler
    suspend fun parallelSteps(ctx: Context, input: String): String = coroutineScope {
        val a = ctx.runAsync("a") { parallelStep(input, "a") }
        val b = ctx.runAsync("b") { parallelStep(input, "b") }
        val c = async { ctx.run("c") { parallelStep(input, "c") } }
        val d = async { ctx.run("d") { parallelStep(input, "d") } }
        (awaitAll(a, b) + c.await() + d.await()).joinToString(" ")
    }

    private fun parallelStep(input: String, name: String): String {
        // A random share of the delay, so that the steps finish in every order.
        if (stepDelayMs > 0) Thread.sleep(Random.nextLong(stepDelayMs + 1))
        val result = "$input-$name"
        // A new file per execution (never overwritten), so a test counts how often each step ran.
        dir?.let { Files.createTempFile(it, "$result.", ".done") }
        return result
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
