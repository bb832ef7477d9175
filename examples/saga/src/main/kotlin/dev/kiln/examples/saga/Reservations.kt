package dev.kiln.examples.saga

import dev.kiln.sdk.Handler
import dev.kiln.sdk.ObjectContext
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedObjectContext
import dev.kiln.sdk.TerminalException
import dev.kiln.sdk.VirtualObject
import dev.kiln.sdk.stateKey
import kotlinx.serialization.Serializable

/** What a reservation object holds: the trips it holds a reservation for, and every change applied. */
@Serializable
data class ReservationStatus(val held: List<String>, val log: List<String>)

/** Input of [Cars.reserve]: [fail] makes the reservation fail terminally (the saga's failure trigger). */
@Serializable
data class CarRequest(val tripId: String, val fail: Boolean = false)

/**
 * The state logic shared by [Flights], [Hotels] and [Cars] (one object per flight, hotel or car,
 * keyed by its id). State: `held`, the trip ids holding a reservation, and `log`, an append-only
 * list of the changes applied (`"reserve:<tripId>"`, `"cancel:<tripId>"`). Both operations are
 * idempotent per trip id: repeating one changes nothing and logs nothing.
 */
internal object Reservations {
    private val HELD = stateKey<List<String>>("held")
    private val LOG = stateKey<List<String>>("log")

    suspend fun reserve(ctx: ObjectContext, tripId: String): String {
        val held = ctx.get(HELD) ?: emptyList()
        if (tripId in held) return "already reserved for $tripId"
        ctx.set(HELD, held + tripId)
        ctx.set(LOG, (ctx.get(LOG) ?: emptyList()) + "reserve:$tripId")
        return "reserved for $tripId"
    }

    suspend fun cancel(ctx: ObjectContext, tripId: String): String {
        val held = ctx.get(HELD) ?: emptyList()
        if (tripId !in held) return "nothing held for $tripId"
        ctx.set(HELD, held - tripId)
        ctx.set(LOG, (ctx.get(LOG) ?: emptyList()) + "cancel:$tripId")
        return "cancelled for $tripId"
    }

    suspend fun status(ctx: SharedObjectContext): ReservationStatus =
        ReservationStatus(ctx.get(HELD) ?: emptyList(), ctx.get(LOG) ?: emptyList())
}

/** Seats on one flight (key: the flight id). */
@VirtualObject
class Flights {
    /** Reserves a seat for [tripId]; idempotent. */
    @Handler
    suspend fun reserve(ctx: ObjectContext, tripId: String): String = Reservations.reserve(ctx, tripId)

    /** Releases [tripId]'s seat, if held; idempotent. */
    @Handler
    suspend fun cancel(ctx: ObjectContext, tripId: String): String = Reservations.cancel(ctx, tripId)

    /** Held trip ids and the log of applied changes. */
    @Shared
    suspend fun status(ctx: SharedObjectContext): ReservationStatus = Reservations.status(ctx)
}

/** Rooms of one hotel (key: the hotel id). */
@VirtualObject
class Hotels {
    /** Reserves a room for [tripId]; idempotent. */
    @Handler
    suspend fun reserve(ctx: ObjectContext, tripId: String): String = Reservations.reserve(ctx, tripId)

    /** Releases [tripId]'s room, if held; idempotent. */
    @Handler
    suspend fun cancel(ctx: ObjectContext, tripId: String): String = Reservations.cancel(ctx, tripId)

    /** Held trip ids and the log of applied changes. */
    @Shared
    suspend fun status(ctx: SharedObjectContext): ReservationStatus = Reservations.status(ctx)
}

/** One rental car (key: the car id). */
@VirtualObject
class Cars {
    /**
     * Reserves the car for the request's trip; idempotent. With `fail = true` it fails terminally
     * (code 422, no state change): the trigger for the saga's compensation path.
     */
    @Handler
    suspend fun reserve(ctx: ObjectContext, req: CarRequest): String {
        if (req.fail) throw TerminalException(422, "car ${ctx.key} is not available for ${req.tripId}")
        return Reservations.reserve(ctx, req.tripId)
    }

    /** Releases the car for [tripId], if held; idempotent. */
    @Handler
    suspend fun cancel(ctx: ObjectContext, tripId: String): String = Reservations.cancel(ctx, tripId)

    /** Held trip ids and the log of applied changes. */
    @Shared
    suspend fun status(ctx: SharedObjectContext): ReservationStatus = Reservations.status(ctx)
}
