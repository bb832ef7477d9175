// Services used only by the end-to-end tests of the Kiln runtime (tests/*.rs).
package dev.kiln.testservices

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Service
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.TerminalException
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.run
import dev.kiln.sdk.stateKey

/** A virtual object whose exclusive handler holds the key's lock for a while. */
@VirtualObject
class Slowpoke {
    companion object {
        val HOLDS = stateKey<Long>("holds")
    }

    /** Increments state "holds", then sleeps [ms] inside a durable step; returns "held". */
    @Handler
    suspend fun hold(ctx: ObjectContext, ms: Long): String {
        ctx.set(HOLDS, (ctx.get(HOLDS) ?: 0L) + 1)
        ctx.run("hold") { Thread.sleep(ms); "held" }
        return "held"
    }

    /** Returns state "holds" (0 when unset); shared, so it runs while `hold` holds the lock. */
    @Shared
    suspend fun peek(ctx: SharedObjectContext): Long = ctx.get(HOLDS) ?: 0L

    /** A shared handler that tries to write state: the SDK must refuse with ERROR 409. */
    @Shared
    suspend fun sneakySet(ctx: SharedObjectContext): String {
        (ctx as ObjectContext).set(HOLDS, 42L)
        return "wrote"
    }
}

/**
 * A service whose first step's name comes from env `SHIFTY_STEP` (default "first"): restarting the
 * process with another name while an invocation is in flight makes its replay mismatch (570).
 */
@Service
class Shifty {
    @Handler
    suspend fun decide(ctx: Context, ms: Long): String {
        val a = ctx.run(System.getenv("SHIFTY_STEP") ?: "first") { "a" }
        val b = ctx.run("slow") { Thread.sleep(ms); "b" }
        return a + b
    }
}

/** Failures: a terminal one (not retried) and a retryable one that never stops failing. */
@Service
class Flaky {
    /** Always fails terminally with code 418 and [msg]. */
    @Handler
    suspend fun fail(ctx: Context, msg: String): String = throw TerminalException(418, msg)

    /** Always fails terminally with code 422 and [msg] (answered as HTTP 422). */
    @Handler
    suspend fun unprocessable(ctx: Context, msg: String): String = throw TerminalException(422, msg)

    /** Always throws IllegalStateException([msg]): a retryable failure. */
    @Handler
    suspend fun boom(ctx: Context, msg: String): String = throw IllegalStateException(msg)
}
