package dev.kiln.sdk

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.withContext
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.ConcurrentLinkedQueue
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread

/**
 * Handlers running durable operations from concurrent coroutines. A step named in [gated] waits
 * until the test [release]s it, so tests choose the order in which blocks finish.
 */
@Service
class Parallel(private val gated: Set<String> = emptySet()) {
    /** Names of the steps whose blocks really executed, in the order they finished. */
    val executed = ConcurrentLinkedQueue<String>()
    private val gates = ConcurrentHashMap<String, CountDownLatch>()

    private fun gate(name: String) = gates.computeIfAbsent(name) { CountDownLatch(1) }

    fun release(name: String) = gate(name).countDown()

    /** Releases [name] and waits until its block has finished: fixes the finishing order. */
    fun finish(name: String) {
        release(name)
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10)
        while (name !in executed) {
            check(System.nanoTime() < deadline) { "step $name did not finish" }
            Thread.sleep(1)
        }
    }

    private fun step(name: String): String {
        if (name in gated) check(gate(name).await(10, TimeUnit.SECONDS)) { "step $name was never released" }
        executed.add(name)
        return name.uppercase()
    }

    @Handler
    suspend fun twoAsync(ctx: Context): String {
        val a = ctx.runAsync("a") { step("a") }
        val b = ctx.runAsync("b") { step("b") }
        return awaitAll(a, b).joinToString(" ")
    }

    /** The acceptance shape: two runAsync and two ctx.run in async coroutines. */
    @Handler
    suspend fun fourWays(ctx: Context): String = coroutineScope {
        val a = ctx.runAsync("a") { step("a") }
        val b = ctx.runAsync("b") { step("b") }
        val c = async { ctx.run("c") { step("c") } }
        val d = async { ctx.run("d") { step("d") } }
        (awaitAll(a, b) + c.await() + d.await()).joinToString(" ")
    }

    /** Two coroutines with two steps each: the second steps' order must not depend on timing. */
    @Handler
    suspend fun chains(ctx: Context): String = coroutineScope {
        val x = async { ctx.run("x1") { step("x1") } + ctx.run("x2") { step("x2") } }
        val y = async { ctx.run("y1") { step("y1") } + ctx.run("y2") { step("y2") } }
        "${x.await()} ${y.await()}"
    }

    /** Coroutines waiting on a call and an awakeable: whichever completes first goes on first. */
    @Handler
    suspend fun mixed(ctx: Context): String = coroutineScope {
        val a = async {
            val n = ctx.call(TestCounter::add, "k", 1L).await()
            ctx.run("after-call") { "call $n" }
        }
        val b = async {
            val v = ctx.awakeable<String>().await()
            ctx.run("after-awakeable") { "awakeable $v" }
        }
        "${a.await()}, ${b.await()}"
    }

    @Handler
    suspend fun cancelBoth(ctx: Context): String = coroutineScope {
        val first = async { awaitOrCancelled(ctx, "first") }
        val second = async { awaitOrCancelled(ctx, "second") }
        "${first.await()} / ${second.await()}"
    }

    private suspend fun awaitOrCancelled(ctx: Context, who: String): String = try {
        ctx.awakeable<String>().await()
    } catch (e: TerminalException) {
        "$who ${e.code}"
    }

    @Handler
    suspend fun cancelRuns(ctx: Context): String = coroutineScope {
        val a = ctx.runAsync("a") { step("a") }
        val b = ctx.runAsync("b") { step("b") }
        val x = async { awaitOrCancelled(a, "a") }
        val y = async { awaitOrCancelled(b, "b") }
        "${x.await()} / ${y.await()}"
    }

    private suspend fun awaitOrCancelled(f: DurableFuture<String>, who: String): String = try {
        f.await()
    } catch (e: TerminalException) {
        "$who ${e.code}"
    }

    /** After a step without a journaled decision, an awaitAny of an earlier future journals its select. */
    @Handler
    suspend fun anyAfterRuns(ctx: Context): String = coroutineScope {
        val w = ctx.awakeable<String>()
        val x = async {
            ctx.run("x") { step("x") }
            "x won ${awaitAny(w)}"
        }
        val y = async { ctx.run("y") { step("y") } }
        "${x.await()} ${y.await()}"
    }

    @Handler
    suspend fun fireAndForget(ctx: Context): String {
        ctx.runAsync("bg") { step("bg") }
        return "started"
    }

    @Handler
    suspend fun slowThenAwakeable(ctx: Context): String {
        val slow = ctx.runAsync("slow") { step("slow") }
        val w = ctx.awakeable<String>()
        return awaitAll(slow, w).joinToString(" ")
    }

    @Handler
    suspend fun failingAsync(ctx: Context): String = ctx.runAsync<String>("bad") { error("nope") }.await()

    // Misuse: each must end the invocation with ERROR 572 at once ---------------------------------

    @Handler
    suspend fun nestedRun(ctx: Context): String = ctx.run("outer") { ctx.run("inner") { "x" } }

    @Handler
    suspend fun asyncInsideRun(ctx: Context): String = ctx.run("outer") { ctx.runAsync("inner") { "x" }.await() }

    @Handler
    suspend fun randomInsideRun(ctx: Context): Long = ctx.run("outer") { ctx.random().nextLong() }

    @Handler
    suspend fun otherDispatcher(ctx: Context): String = withContext(Dispatchers.IO) { ctx.run("io") { "x" } }

    @Handler
    suspend fun otherThread(ctx: Context): String {
        val t = thread {
            try {
                ctx.send(TestSteps::nothing)
            } catch (_: Throwable) {}
        }
        t.join()
        return "sent?"
    }
}
