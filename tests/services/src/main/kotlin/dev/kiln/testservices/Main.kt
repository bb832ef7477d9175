package dev.kiln.testservices

import dev.kiln.sdk.KilnEndpoint

/**
 * Serves every test service (see tests/services/README.md) on env `PORT` (default 9080), host env
 * `BIND_HOST`.
 */
fun main() {
    KilnEndpoint()
        .bind(Slowpoke()).bind(Shifty()).bind(Flaky())
        .bind(Sleeper()).bind(Waiter()).bind(Signup())
        .bind(Sender()).bind(Receiver())
        .bind(CycleA()).bind(CycleB())
        .listen()
}
