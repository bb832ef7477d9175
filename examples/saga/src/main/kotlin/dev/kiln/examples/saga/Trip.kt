package dev.kiln.examples.saga

import dev.kiln.sdk.Context
import dev.kiln.sdk.DurableFuture
import dev.kiln.sdk.Handler
import dev.kiln.sdk.Service
import dev.kiln.sdk.TerminalException
import dev.kiln.sdk.call
import kotlinx.serialization.Serializable

/**
 * A trip to book: one seat on [flight], a room in [hotel], the car [car] (each the key of its
 * object). [failAt] `"car"` makes the car reservation fail, to show the compensation path.
 */
@Serializable
data class TripRequest(
    val tripId: String,
    val flight: String,
    val hotel: String,
    val car: String,
    val failAt: String? = null,
)

/**
 * The saga: reserves flight, hotel and car in this order, each a durable call. When a step fails
 * terminally — the callee's [TerminalException], or a cancellation of this invocation (409 at the
 * next await) — the compensations of the steps done so far run in reverse order (a cancellation
 * of each), and the booking fails with the original code and `"trip <id> failed: <reason>"`.
 *
 * Every call is journaled, so a crash anywhere resumes the saga where it was: done reservations
 * are not repeated and compensations run exactly once per step (they are idempotent anyway).
 */
@Service
class Trip {
    /** Books the whole trip or nothing; returns `"booked <tripId>"`. */
    @Handler
    suspend fun book(ctx: Context, req: TripRequest): String {
        val compensations = ArrayList<suspend () -> Unit>()

        /**
         * Awaits one reservation. Its compensation is registered when it succeeded, and also when
         * the await was interrupted by a cancellation (409): the call may have gone through.
         */
        suspend fun step(reservation: DurableFuture<String>, compensation: suspend () -> Unit) {
            try {
                reservation.await()
                compensations += compensation
            } catch (e: TerminalException) {
                if (e.code == 409) compensations += compensation
                throw e
            }
        }

        try {
            step(ctx.call(Flights::reserve, req.flight, req.tripId)) {
                ctx.call(Flights::cancel, req.flight, req.tripId).await()
            }
            step(ctx.call(Hotels::reserve, req.hotel, req.tripId)) {
                ctx.call(Hotels::cancel, req.hotel, req.tripId).await()
            }
            step(ctx.call(Cars::reserve, req.car, CarRequest(req.tripId, fail = req.failAt == "car"))) {
                ctx.call(Cars::cancel, req.car, req.tripId).await()
            }
        } catch (e: TerminalException) {
            for (undo in compensations.asReversed()) undo()
            throw TerminalException(e.code, "trip ${req.tripId} failed: ${e.message}")
        }
        return "booked ${req.tripId}"
    }
}
