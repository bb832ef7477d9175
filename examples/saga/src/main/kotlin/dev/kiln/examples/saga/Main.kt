package dev.kiln.examples.saga

import dev.kiln.sdk.KilnEndpoint

/** Serves Trip, Flights, Hotels and Cars on env `PORT` (default 9080), host env `BIND_HOST` (default 127.0.0.1). */
fun main() {
    KilnEndpoint().bind(Trip()).bind(Flights()).bind(Hotels()).bind(Cars()).listen()
}
