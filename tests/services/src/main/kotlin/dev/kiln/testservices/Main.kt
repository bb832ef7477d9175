package dev.kiln.testservices

import dev.kiln.sdk.KilnEndpoint

/** Serves Slowpoke, Shifty and Flaky on env `PORT` (default 9080), host env `BIND_HOST`. */
fun main() {
    KilnEndpoint().bind(Slowpoke()).bind(Shifty()).bind(Flaky()).listen()
}
