package dev.kiln.sdk

import kotlinx.serialization.Serializable
import java.util.concurrent.atomic.AtomicInteger
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

@Serializable
data class Pair2(val a: String, val b: Int)

/** Handlers exercising protocol §5 (calls, timers, awakeables, combinators, cancellation). */
@Service
class Durable {
    val executions = AtomicInteger()
    val compensations = AtomicInteger()

    @Handler
    suspend fun callAdd(ctx: Context, n: Long): Long = ctx.call(TestCounter::add, "k", n).await()

    @Handler
    suspend fun callGetAndSteps(ctx: Context): String {
        val total = ctx.call(TestCounter::get, "k").await()
        val steps = ctx.call(TestSteps::three, "x").await()
        return "$total $steps"
    }

    @Handler
    suspend fun callTeapot(ctx: Context, msg: String): String = try {
        ctx.call(TestSteps::teapot, msg).await()
    } catch (e: TerminalException) {
        "caught ${e.code}: ${e.message}"
    }

    @Handler
    suspend fun callUntyped(ctx: Context): String =
        ctx.call<String>("Other", "h", "key1", "\"in\"".encodeToByteArray()).await()

    @Handler
    suspend fun sendLater(ctx: Context, n: Long): String {
        ctx.send(TestCounter::add, "k", n, delay = 10.seconds)
        ctx.send(TestCounter::reset, "k")
        ctx.send(TestSteps::nothing)
        return "sent"
    }

    @Handler
    suspend fun nap(ctx: Context, ms: Long): String {
        ctx.sleep(ms.milliseconds)
        return "slept"
    }

    @Handler
    suspend fun awake(ctx: Context): String {
        val a = ctx.awakeable<Pair2>()
        ctx.run("publish") { a.id }
        val v = a.await()
        return "${v.a}${v.b}"
    }

    @Handler
    suspend fun complete(ctx: Context, id: String): String {
        ctx.resolveAwakeable(id, Pair2("x", 1))
        ctx.rejectAwakeable(id, "no", code = 499)
        return "done"
    }

    @Handler
    suspend fun race(ctx: Context): String {
        val a = ctx.awakeable<String>()
        val b = ctx.awakeable<String>()
        val w = awaitAny(a, b)
        return "winner $w: " + (if (w == 0) a.await() else b.await())
    }

    @Handler
    suspend fun withTimeout(ctx: Context): String {
        val a = ctx.awakeable<String>()
        return try {
            a.await(5.seconds)
        } catch (e: TerminalException) {
            "timeout ${e.code}"
        }
    }

    @Handler
    suspend fun all(ctx: Context): String {
        val a = ctx.awakeable<String>()
        val b = ctx.awakeable<String>()
        return awaitAll(a, b).joinToString("+")
    }

    @Handler
    suspend fun compensate(ctx: Context): String = try {
        ctx.call(TestCounter::add, "k", 1L).await()
        "not cancelled"
    } catch (e: TerminalException) {
        ctx.run("undo") {
            compensations.incrementAndGet()
            "undone"
        }
        throw TerminalException(e.code, "compensated after ${e.message}")
    }

    @Handler
    suspend fun flakyRun(ctx: Context): String = try {
        ctx.run("flaky", RetryPolicy(1.milliseconds, 2.milliseconds, maxAttempts = 3)) {
            throw IllegalStateException("nope ${executions.incrementAndGet()}")
        }
    } catch (e: TerminalException) {
        "gave up: ${e.code} ${e.message}"
    }

    @Handler
    @Retry(initialIntervalMs = 250, maxAttempts = 7)
    suspend fun retried(ctx: Context): String = "ok"
}

@Workflow
class TestSignup {
    @Workflow
    suspend fun run(ctx: WorkflowContext, email: String): String {
        ctx.set(STATUS, "waiting")
        val code = ctx.promise<String>("confirmed").await()
        ctx.set(STATUS, "done")
        return "welcome $email $code"
    }

    @Shared
    suspend fun confirm(ctx: SharedWorkflowContext, code: String): String = try {
        ctx.promise<String>("confirmed").resolve(code)
        "confirmed"
    } catch (e: TerminalException) {
        "already ${e.code}"
    }

    @Handler
    suspend fun status(ctx: SharedWorkflowContext): String = ctx.promise<String>("confirmed").peek() ?: "pending"

    @Handler
    suspend fun refuse(ctx: SharedWorkflowContext): String {
        ctx.promise<String>("confirmed").reject("refused", 403)
        return "refused"
    }

    companion object {
        val STATUS = stateKey<String>("status")
    }
}
