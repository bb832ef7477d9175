package dev.kiln.sdk

import kotlinx.serialization.Serializable
import java.util.concurrent.atomic.AtomicInteger

@VirtualObject
class TestCounter {
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

    @Shared
    suspend fun sneakySet(ctx: SharedObjectContext): String {
        (ctx as ObjectContext).set(COUNT, 42L)
        return "wrote"
    }

    @Handler
    suspend fun reset(ctx: ObjectContext): List<String> {
        val before = ctx.stateKeys()
        ctx.clear(COUNT)
        ctx.clearAll()
        return before.toList()
    }
}

@Serializable
data class Greeting(val name: String, val times: Int = 1)

@Service(name = "Stepper")
class TestSteps {
    /** How many times a run block really executed (not replayed). */
    val executions = AtomicInteger()

    @Handler(name = "threeStep")
    suspend fun three(ctx: Context, input: String): String = (1..3).map { k ->
        ctx.run("step-$k") {
            executions.incrementAndGet()
            "$input-$k"
        }
    }.joinToString(" ")

    @Handler
    suspend fun failingStep(ctx: Context, input: String): String = try {
        ctx.run<String>("check") {
            executions.incrementAndGet()
            throw TerminalException(422, "bad $input")
        }
    } catch (e: TerminalException) {
        throw TerminalException(e.code, "step failed: ${e.message}")
    }

    @Handler
    suspend fun randomStep(ctx: Context): Long {
        val r = ctx.random().nextLong()
        val recorded = ctx.run("r") {
            executions.incrementAndGet()
            r
        }
        check(recorded == r) { "random differs from the recorded one: $r vs $recorded" }
        return ctx.random().nextLong()
    }

    @Handler
    suspend fun greet(ctx: Context, g: Greeting): String = "hello ${g.name} x${g.times}"

    @Handler
    suspend fun nothing(ctx: Context) {}

    @Handler
    suspend fun teapot(ctx: Context, msg: String): String = throw TerminalException(418, msg)

    @Handler
    suspend fun boom(ctx: Context, msg: String): String = throw IllegalStateException(msg)
}
