package dev.kiln.sdk

import kotlinx.coroutines.async
import kotlinx.coroutines.coroutineScope
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.slf4j.event.Level

/** `ctx.logger` (silent on replay, MDC) and the SDK's own log lines, captured by the tests' SLF4J binding. */
class LoggingTest {
    @Service
    class Chatty {
        @Handler
        suspend fun talk(ctx: Context, who: String): String {
            ctx.logger.info("before the step, for {}", who)
            val r = ctx.run("step") {
                ctx.logger.debug("inside the step")
                "done"
            }
            ctx.logger.info("after the step: {}", r)
            return r
        }

        /** Two coroutines, each logging before and after its own step. */
        @Handler
        suspend fun pair(ctx: Context): String = coroutineScope {
            val a = async {
                ctx.logger.info("a before")
                val v = ctx.run("a") { "A" }
                ctx.logger.info("a after")
                v
            }
            val b = async {
                ctx.logger.info("b before")
                val v = ctx.run("b") { "B" }
                ctx.logger.info("b after")
                v
            }
            a.await() + b.await()
        }

        @Handler
        suspend fun fail(ctx: Context, msg: String): String = throw IllegalStateException(msg)
    }

    private val loggerName = Chatty::class.java.name
    private fun handlerLines(id: String) = CapturedLogs.ofInvocation(id).filter { it.logger == loggerName }
    private fun run(index: Int, name: String, value: String) =
        JournalEntry(index, EntryKind.RUN, name, value = json(value))
    private fun input(v: String?) = JournalEntry(0, EntryKind.INPUT, value = v?.let(::json))

    @Test
    fun `a first attempt logs every line, with the invocation in the MDC`() = Transcript(Chatty(), "talk").use { t ->
        t.start(id = "inv-log-first")
        t.input("\"ann\"")
        assertEquals("run", t.nextEntry().kind)
        t.ack(1)
        assertEquals("output", t.nextEntry().kind)
        t.expectEnd()
        t.finish()
        val lines = handlerLines("inv-log-first")
        assertEquals(
            listOf("before the step, for ann", "inside the step", "after the step: done"),
            lines.map {
                it.message
            },
        )
        for (l in lines) {
            assertEquals("Chatty", l.mdc[MdcKeys.SERVICE], "MDC of '${l.message}'")
            assertEquals("talk", l.mdc[MdcKeys.HANDLER], "MDC of '${l.message}'")
        }
        assertEquals(Level.DEBUG, lines[1].level)
    }

    @Test
    fun `the logger is silent on replay`() = Transcript(Chatty(), "talk").use { t ->
        t.replay(listOf(input("\"ann\""), run(1, "step", "\"done\"")), id = "inv-log-replay")
        assertEquals("output", t.nextEntry().kind)
        t.expectEnd()
        t.finish()
        // "before" and the step's own line ran (and logged) in the earlier attempt.
        assertEquals(listOf("after the step: done"), handlerLines("inv-log-replay").map { it.message })
    }

    @Test
    fun `replaying is a property of the invocation, not of a coroutine`() = Transcript(Chatty(), "pair").use { t ->
        // Both steps are journaled: "b before" runs after "a"'s step was replayed, but the journal
        // shows that code already ran (b's step follows), so it is silent too.
        t.replay(listOf(input(null), run(1, "a", "\"A\""), run(2, "b", "\"B\"")), id = "inv-log-pair")
        assertEquals("output", t.nextEntry().kind)
        t.expectEnd()
        t.finish()
        assertEquals(setOf("a after", "b after"), handlerLines("inv-log-pair").map { it.message }.toSet())
        assertEquals(2, handlerLines("inv-log-pair").size)
    }

    @Test
    fun `a partial replay logs from the first new entry on`() = Transcript(Chatty(), "pair").use { t ->
        t.replay(listOf(input(null), run(1, "a", "\"A\"")), id = "inv-log-partial")
        assertEquals("run", t.nextEntry().kind) // b's step, new in this attempt
        t.ack(2)
        assertEquals("output", t.nextEntry().kind)
        t.expectEnd()
        t.finish()
        assertEquals(
            setOf("b before", "a after", "b after"),
            handlerLines("inv-log-partial").map {
                it.message
            }.toSet(),
        )
    }

    @Test
    fun `the SDK logs attempt starts and ends at debug and failures at warn`() {
        Transcript(Chatty(), "talk").use { t ->
            t.start(id = "inv-log-sdk")
            t.input("\"x\"")
            t.nextEntry()
            t.ack(1)
            t.nextEntry()
            t.expectEnd()
            t.finish()
        }
        val started = CapturedLogs.of(
            "dev.kiln.sdk.Invocation",
            "invocation inv-log-sdk (Chatty/talk) attempt 1 started",
        )
        assertEquals(Level.DEBUG, started.single().level)
        val ended = CapturedLogs.of("dev.kiln.sdk.Invocation", "invocation inv-log-sdk (Chatty/talk) attempt 1 ended")
        assertEquals(Level.DEBUG, ended.single().level)

        Transcript(Chatty(), "fail").use { t ->
            t.start(id = "inv-log-fail")
            t.input("\"broken\"")
            assertEquals(500L, t.expectError()["code"])
        }
        val failed = CapturedLogs.of(
            "dev.kiln.sdk.Invocation",
            "invocation inv-log-fail (Chatty/fail) attempt 1 failed",
        )
        assertEquals(Level.WARN, failed.single().level)
        assertTrue(failed.single().throwable is IllegalStateException, "the warning carries the exception")
    }
}
