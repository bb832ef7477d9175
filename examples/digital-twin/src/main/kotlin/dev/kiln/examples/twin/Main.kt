package dev.kiln.examples.twin

import dev.kiln.sdk.KilnEndpoint

/** Serves Device and Alerts on env `PORT` (default 9080), host env `BIND_HOST` (default 127.0.0.1). */
fun main() {
    KilnEndpoint().bind(Device()).bind(Alerts()).listen()
}
