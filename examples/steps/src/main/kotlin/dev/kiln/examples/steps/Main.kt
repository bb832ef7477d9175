package dev.kiln.examples.steps

import dev.kiln.sdk.KilnEndpoint

/** Serves [Steps] on env `PORT` (default 9080), bound to env `BIND_HOST` (default 127.0.0.1). */
fun main() {
    KilnEndpoint().bind(Steps()).listen()
}
