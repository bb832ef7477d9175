// Test-only services for protocol §5 (calls, sends, timers, awakeables, workflows, call cycles),
// used by the end-to-end tests of the Kiln runtime.
package dev.kiln.testservices

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Service
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.SharedWorkflowContext
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.Workflow
import dev.kiln.sdk.WorkflowContext
import dev.kiln.sdk.awakeable
import dev.kiln.sdk.call
import dev.kiln.sdk.promise
import dev.kiln.sdk.run
import dev.kiln.sdk.send
import dev.kiln.sdk.stateKey
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonPrimitive
import java.io.File
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import kotlin.time.Duration.Companion.milliseconds

/** Durable timers: the invocation suspends while it sleeps. */
@Service
class Sleeper {
    /** Sleeps [ms] durably, then returns "slept". */
    @Handler
    suspend fun nap(ctx: Context, ms: Long): String {
        ctx.sleep(ms.milliseconds)
        return "slept"
    }
}

/** Awakeables completed from outside (over the ingress). */
@Service
class Waiter {
    /**
     * Creates an awakeable, writes its id to the file `$AWAKEABLE_DIR/<x>` (default dir: the
     * system temp dir) inside `run("publish")`, then awaits it and returns `"got <value>"` (a JSON
     * string value is shown without quotes, any other JSON as its text).
     */
    @Handler
    suspend fun waitFor(ctx: Context, x: String): String {
        val awakeable = ctx.awakeable<JsonElement>()
        ctx.run("publish") {
            val dir = File(System.getenv("AWAKEABLE_DIR") ?: System.getProperty("java.io.tmpdir"))
            dir.mkdirs()
            val tmp = File(dir, ".$x.tmp")
            tmp.writeText(awakeable.id)
            Files.move(tmp.toPath(), File(dir, x).toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
            awakeable.id
        }
        val value = awakeable.await()
        val text = if (value is JsonPrimitive && value.isString) value.content else value.toString()
        return "got $text"
    }
}

/** A workflow: `run` waits for the durable promise "confirmed", which `confirm` resolves. */
@Workflow
class Signup {
    /** Runs once per workflow key: awaits promise "confirmed" and returns `"welcome <value>"`. */
    @Workflow
    suspend fun run(ctx: WorkflowContext, email: String): String {
        ctx.set(EMAIL, email)
        val code = ctx.promise<String>("confirmed").await()
        return "welcome $code"
    }

    /** Resolves promise "confirmed" with [code]; a second completion fails with 409. */
    @Shared
    suspend fun confirm(ctx: SharedWorkflowContext, code: String): String {
        ctx.promise<String>("confirmed").resolve(code)
        return "confirmed"
    }

    /** Peeks promise "confirmed": its value, or "pending". */
    @Shared
    suspend fun status(ctx: SharedWorkflowContext): String = ctx.promise<String>("confirmed").peek() ?: "pending"

    companion object {
        val EMAIL = stateKey<String>("email")
    }
}

/** One-way messages from one invocation to one receiver keep their order. */
@VirtualObject
class Sender {
    /** Sends `Receiver/{same key}.record(i)` for i in 0 until [n], one-way; returns n. */
    @Handler
    suspend fun sendMany(ctx: ObjectContext, n: Int): Int {
        for (i in 0 until n) ctx.send(Receiver::record, ctx.key, i)
        return n
    }
}

/** Records what [Sender] sends, in arrival order. */
@VirtualObject
class Receiver {
    /** Appends [i] to state "received". */
    @Handler
    suspend fun record(ctx: ObjectContext, i: Int) {
        ctx.set(RECEIVED, (ctx.get(RECEIVED) ?: emptyList()) + i)
    }

    /** State "received" (empty when unset). */
    @Shared
    suspend fun received(ctx: SharedObjectContext): List<Int> = ctx.get(RECEIVED) ?: emptyList()

    companion object {
        val RECEIVED = stateKey<List<Int>>("received")
    }
}

/**
 * A call cycle: `CycleA/{k}.ping` (exclusive, holds A/k's lock) calls `CycleB/{k}.pong`, which
 * calls the exclusive `CycleA/{k}.ping2`: the runtime must detect it and fail with 508.
 */
@VirtualObject
class CycleA {
    /** Calls `CycleB/{key}.pong(key)`, where key is the input or else this object's key. */
    @Handler
    suspend fun ping(ctx: ObjectContext, key: String?): String {
        val k = key ?: ctx.key
        return "ping>" + ctx.call(CycleB::pong, k, k).await()
    }

    /** Exclusive; returns "ping2". */
    @Handler
    suspend fun ping2(ctx: ObjectContext): String = "ping2"
}

/** See [CycleA]. */
@VirtualObject
class CycleB {
    /** Calls `CycleA/{key}.ping2()`, where key is the input or else this object's key. */
    @Handler
    suspend fun pong(ctx: ObjectContext, key: String?): String =
        "pong>" + ctx.call(CycleA::ping2, key ?: ctx.key).await()
}
