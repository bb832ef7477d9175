package com.example.shop

import dev.kiln.sdk.KilnEndpoint

/** Serves Cart and Greeter on env PORT (default 9080), host env BIND_HOST (default 127.0.0.1). */
fun main() {
    KilnEndpoint().bind(Cart()).bind(Greeter()).listen()
}
