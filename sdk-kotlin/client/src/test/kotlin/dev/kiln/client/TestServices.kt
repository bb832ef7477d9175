package dev.kiln.client

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Service
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.VirtualObject
import kotlinx.serialization.Serializable

// Targets for the client's tests: only their names and signatures matter (no runtime runs them).

@Serializable
data class Greeting(val name: String, val times: Int = 1)

@VirtualObject
class Tally {
    @Handler
    suspend fun add(ctx: ObjectContext, n: Long): Long = n

    @Shared
    suspend fun get(ctx: SharedObjectContext): Long = 0

    @Handler
    suspend fun reset(ctx: ObjectContext) = Unit

    /** An object's handler declared with a plain Context: compiles unkeyed, refused at run time. */
    @Handler
    suspend fun plain(ctx: Context, n: Int): Int = n
}

@Service(name = "Greeter")
class Greetings {
    @Handler(name = "hi")
    suspend fun greet(ctx: Context, g: Greeting): Greeting = g

    @Handler
    suspend fun now(ctx: Context): Long = 0

    @Handler
    suspend fun maybe(ctx: Context, s: String?): String? = s
}

class NotAService {
    @Handler
    suspend fun echo(ctx: Context, s: String): String = s
}
