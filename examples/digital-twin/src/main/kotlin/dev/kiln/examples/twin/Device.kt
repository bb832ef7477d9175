package dev.kiln.examples.twin

import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.run
import dev.kiln.sdk.send
import dev.kiln.sdk.stateKey
import kotlinx.serialization.Serializable
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds

/** One telemetry reading; [atMs] is the device's timestamp (Unix ms), else the time of ingestion. */
@Serializable
data class Telemetry(val value: Double, val atMs: Long? = null)

/** An alert about a device: [kind] is `"threshold"` or `"heartbeat"`. */
@Serializable
data class Alert(val device: String, val kind: String, val message: String, val value: Double? = null, val atMs: Long? = null)

/** The twin's view of a device, as returned by [Device.status]. */
@Serializable
data class DeviceStatus(
    val device: String,
    val status: String,
    val lastValue: Double?,
    val count: Long,
    val lastSeenMs: Long?,
)

/**
 * The digital twin of one device (key: the device id). Every reading is ingested by the exclusive
 * [ingest]: the twin keeps the last value, the number of readings and when it was last seen. A
 * reading above [threshold] sends an alert, one-way, to `Alerts/{device}`. Each reading also
 * schedules a delayed message to itself, [checkHeartbeat], [heartbeatWindow] later, carrying the
 * reading's sequence number: if no newer reading arrived by then, the device is marked offline
 * and a heartbeat alert is raised. No timer thread, no polling: the delayed message is durable.
 *
 * @property threshold env `DEVICE_THRESHOLD`, default 100.0.
 * @property heartbeatWindow env `HEARTBEAT_WINDOW_MS`, default 10 000 ms.
 */
@VirtualObject
class Device(
    private val threshold: Double = System.getenv("DEVICE_THRESHOLD")?.trim()?.toDoubleOrNull() ?: 100.0,
    private val heartbeatWindow: Duration =
        (System.getenv("HEARTBEAT_WINDOW_MS")?.trim()?.toLongOrNull() ?: 10_000L).milliseconds,
) {
    /** Records [reading], alerts above the threshold, schedules the heartbeat check; returns the new status. */
    @Handler
    suspend fun ingest(ctx: ObjectContext, reading: Telemetry): DeviceStatus {
        val seq = (ctx.get(COUNT) ?: 0L) + 1
        val seenAt = reading.atMs ?: ctx.run("now") { System.currentTimeMillis() }
        ctx.set(COUNT, seq)
        ctx.set(LAST_VALUE, reading.value)
        ctx.set(LAST_SEEN, seenAt)
        ctx.set(STATUS, "online")
        if (reading.value > threshold) {
            val alert = Alert(ctx.key, "threshold", "value ${reading.value} above $threshold", reading.value, seenAt)
            ctx.send(Alerts::raise, ctx.key, alert)
        }
        ctx.send(Device::checkHeartbeat, ctx.key, seq, delay = heartbeatWindow)
        return DeviceStatus(ctx.key, "online", reading.value, seq, seenAt)
    }

    /**
     * Delivered [heartbeatWindow] after reading number [seq]: when no reading came since, marks
     * the device `offline` and raises a heartbeat alert. Returns the resulting status.
     */
    @Handler
    suspend fun checkHeartbeat(ctx: ObjectContext, seq: Long): String {
        val current = ctx.get(COUNT) ?: 0L
        if (seq != current) return "superseded"
        if (ctx.get(STATUS) == "offline") return "offline"
        ctx.set(STATUS, "offline")
        val alert = Alert(ctx.key, "heartbeat", "heartbeat missing: no reading for $heartbeatWindow after reading $seq")
        ctx.send(Alerts::raise, ctx.key, alert)
        return "offline"
    }

    /** The device's state as JSON; status `"unknown"` before the first reading. */
    @Shared
    suspend fun status(ctx: SharedObjectContext): DeviceStatus = DeviceStatus(
        device = ctx.key,
        status = ctx.get(STATUS) ?: "unknown",
        lastValue = ctx.get(LAST_VALUE),
        count = ctx.get(COUNT) ?: 0L,
        lastSeenMs = ctx.get(LAST_SEEN),
    )

    private companion object {
        val COUNT = stateKey<Long>("count")
        val LAST_VALUE = stateKey<Double>("lastValue")
        val LAST_SEEN = stateKey<Long>("lastSeenMs")
        val STATUS = stateKey<String>("status")
    }
}

/** The alerts raised for one device (key: the device id), oldest first. */
@VirtualObject
class Alerts {
    /** Appends [alert] (sent one-way by [Device]). */
    @Handler
    suspend fun raise(ctx: ObjectContext, alert: Alert) {
        ctx.set(ALERTS, (ctx.get(ALERTS) ?: emptyList()) + alert)
    }

    /** Every alert raised so far. */
    @Shared
    suspend fun list(ctx: SharedObjectContext): List<Alert> = ctx.get(ALERTS) ?: emptyList()

    private companion object {
        val ALERTS = stateKey<List<Alert>>("alerts")
    }
}
