package dev.kiln.sdk

import org.slf4j.ILoggerFactory
import org.slf4j.IMarkerFactory
import org.slf4j.Logger
import org.slf4j.MDC
import org.slf4j.Marker
import org.slf4j.event.Level
import org.slf4j.helpers.BasicMDCAdapter
import org.slf4j.helpers.BasicMarkerFactory
import org.slf4j.helpers.LegacyAbstractLogger
import org.slf4j.helpers.MessageFormatter
import org.slf4j.spi.MDCAdapter
import org.slf4j.spi.SLF4JServiceProvider
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.ConcurrentLinkedQueue

/** One captured log line: logger name, level, formatted message, the MDC at the time, the throwable. */
internal data class LogLine(
    val logger: String,
    val level: Level,
    val message: String,
    val mdc: Map<String, String>,
    val throwable: Throwable?,
)

/** Every line logged through SLF4J in the test JVM (the tests' binding, see [CapturingLogProvider]). */
internal object CapturedLogs {
    val lines = ConcurrentLinkedQueue<LogLine>()

    /** The lines logged while the MDC named invocation [id] (handler code), in order. */
    fun ofInvocation(id: String): List<LogLine> = lines.filter { it.mdc[MdcKeys.INVOCATION_ID] == id }

    /** The lines of logger [name] whose message mentions [text]. */
    fun of(name: String, text: String): List<LogLine> = lines.filter { it.logger == name && text in it.message }
}

/** A logger that records every call, at every level. */
internal class CapturingLogger(name: String) : LegacyAbstractLogger() {
    init {
        this.name = name
    }

    override fun isTraceEnabled(): Boolean = true
    override fun isDebugEnabled(): Boolean = true
    override fun isInfoEnabled(): Boolean = true
    override fun isWarnEnabled(): Boolean = true
    override fun isErrorEnabled(): Boolean = true
    override fun getFullyQualifiedCallerName(): String? = null

    override fun handleNormalizedLoggingCall(
        level: Level,
        marker: Marker?,
        messagePattern: String?,
        arguments: Array<out Any?>?,
        throwable: Throwable?,
    ) {
        val text = MessageFormatter.basicArrayFormat(messagePattern, arguments?.let { arrayOf(*it) })
        CapturedLogs.lines.add(LogLine(name, level, text, MDC.getCopyOfContextMap().orEmpty(), throwable))
    }
}

/** The SLF4J binding of the tests (META-INF/services): captures into [CapturedLogs]. */
class CapturingLogProvider : SLF4JServiceProvider {
    private val loggers = ConcurrentHashMap<String, Logger>()
    private val factory = ILoggerFactory { name -> loggers.computeIfAbsent(name) { CapturingLogger(it) } }
    private val markers = BasicMarkerFactory()
    private val mdc = BasicMDCAdapter()

    override fun getLoggerFactory(): ILoggerFactory = factory
    override fun getMarkerFactory(): IMarkerFactory = markers
    override fun getMDCAdapter(): MDCAdapter = mdc
    override fun getRequestedApiVersion(): String = "2.0.99"
    override fun initialize() {}
}
