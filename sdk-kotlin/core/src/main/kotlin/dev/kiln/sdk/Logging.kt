// Logging: the replay-aware logger behind `ctx.logger`, the MDC of an invocation's coroutines, and
// the SDK's own loggers (names under dev.kiln.sdk). Everything goes through SLF4J: without a
// binding on the class path it is silent.
package dev.kiln.sdk

import kotlinx.coroutines.ThreadContextElement
import org.slf4j.Logger
import org.slf4j.LoggerFactory
import org.slf4j.MDC
import org.slf4j.Marker
import org.slf4j.event.Level
import org.slf4j.helpers.AbstractLogger
import org.slf4j.spi.LocationAwareLogger
import kotlin.coroutines.AbstractCoroutineContextElement
import kotlin.coroutines.CoroutineContext

/** MDC keys set while an invocation's code runs (handler coroutines and `run` blocks). */
internal object MdcKeys {
    const val INVOCATION_ID = "kiln.invocationId"
    const val SERVICE = "kiln.service"
    const val HANDLER = "kiln.handler"
}

/** The SDK's logger for attempts (`dev.kiln.sdk.Invocation`): starts and ends at debug, failures at warn. */
internal val invocationLog: Logger = LoggerFactory.getLogger("dev.kiln.sdk.Invocation")

/** The SDK's logger for the HTTP endpoint (`dev.kiln.sdk.KilnEndpoint`). */
internal val endpointLog: Logger = LoggerFactory.getLogger("dev.kiln.sdk.KilnEndpoint")

/**
 * [delegate], silenced while [replaying]: code before the last journaled command already ran (and
 * logged) in an earlier attempt, so its lines would be duplicates. Replaying is a property of the
 * invocation (entries known at attempt start not yet consumed), not of a thread or coroutine: all
 * of an invocation's coroutines issue commands in one journal order, so a line is silent exactly
 * when the journal shows the code after it already ran. Every `isXxxEnabled` answers `false` while
 * replaying, so guarded and fluent (`atInfo()`) calls are silent too.
 */
internal class ReplayAwareLogger(private val delegate: Logger, private val replaying: () -> Boolean) :
    AbstractLogger() {
    init {
        name = delegate.name
    }

    private fun on(): Boolean = !replaying()

    override fun isTraceEnabled(): Boolean = on() && delegate.isTraceEnabled
    override fun isTraceEnabled(marker: Marker?): Boolean = on() && delegate.isTraceEnabled(marker)
    override fun isDebugEnabled(): Boolean = on() && delegate.isDebugEnabled
    override fun isDebugEnabled(marker: Marker?): Boolean = on() && delegate.isDebugEnabled(marker)
    override fun isInfoEnabled(): Boolean = on() && delegate.isInfoEnabled
    override fun isInfoEnabled(marker: Marker?): Boolean = on() && delegate.isInfoEnabled(marker)
    override fun isWarnEnabled(): Boolean = on() && delegate.isWarnEnabled
    override fun isWarnEnabled(marker: Marker?): Boolean = on() && delegate.isWarnEnabled(marker)
    override fun isErrorEnabled(): Boolean = on() && delegate.isErrorEnabled
    override fun isErrorEnabled(marker: Marker?): Boolean = on() && delegate.isErrorEnabled(marker)

    // The methods of AbstractLogger are the frames just above the caller: bindings that find the
    // caller's location (logback's %caller, %line) skip them.
    override fun getFullyQualifiedCallerName(): String = AbstractLogger::class.java.name

    override fun handleNormalizedLoggingCall(
        level: Level,
        marker: Marker?,
        messagePattern: String?,
        arguments: Array<out Any?>?,
        throwable: Throwable?,
    ) {
        val d = delegate
        if (d is LocationAwareLogger) {
            d.log(marker, fullyQualifiedCallerName, level.toInt(), messagePattern, arguments, throwable)
            return
        }
        val event = d.makeLoggingEventBuilder(level)
        marker?.let { event.addMarker(it) }
        arguments?.forEach { event.addArgument(it) }
        throwable?.let { event.setCause(it) }
        event.log(messagePattern)
    }
}

/**
 * Sets [values] in the MDC of whichever thread runs a coroutine of the invocation, and restores
 * that thread's MDC when it stops running it (MDC is per thread; coroutines move between threads).
 */
internal class MdcElement(private val values: Map<String, String>) :
    AbstractCoroutineContextElement(Key),
    ThreadContextElement<Map<String, String>?> {
    companion object Key : CoroutineContext.Key<MdcElement>

    override fun updateThreadContext(context: CoroutineContext): Map<String, String>? {
        val old = MDC.getCopyOfContextMap()
        values.forEach { (k, v) -> MDC.put(k, v) }
        return old
    }

    override fun restoreThreadContext(context: CoroutineContext, oldState: Map<String, String>?) {
        if (oldState == null) MDC.clear() else MDC.setContextMap(oldState)
    }
}
