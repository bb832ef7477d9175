package com.example.shop

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.Service
import dev.kiln.sdk.TerminalException

/** A stateless service (`POST /Greeter/greet`): no key, no state. */
@Service
class Greeter {
    @Handler
    suspend fun greet(ctx: Context, name: String): String {
        if (name.isBlank()) throw TerminalException(400, "name must not be blank")
        return "Hello, $name!"
    }
}
