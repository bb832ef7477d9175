package dev.kiln.testservices

import dev.kiln.sdk.KilnEndpoint

/**
 * Serves every test service (see tests/services/README.md) on env `PORT` (default 9080), host env
 * `BIND_HOST`; env `SERVICE_VERSION` (default "v1") picks the code version of [Release], and any
 * version but "v1" also serves [ReleaseNotes].
 */
fun main() {
    val endpoint = KilnEndpoint()
        .bind(Slowpoke()).bind(Shifty()).bind(Flaky())
        .bind(Sleeper()).bind(Waiter()).bind(Signup())
        .bind(Sender()).bind(Receiver())
        .bind(CycleA()).bind(CycleB())
        .bind(Release())
    if (SERVICE_VERSION != "v1") endpoint.bind(ReleaseNotes())
    endpoint.listen()
}
