package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.time.Duration.Companion.seconds

/** Failures: stack traces in ERROR frames, terminal 400s for bad input and for misused calls. */
class FailuresTest {
    @Service
    class Misuses {
        /** Compiles (the reference takes Context), but the class is not a service: refused when called. */
        @Handler
        suspend fun callUnannotated(ctx: Context): String = ctx.call(NotAService::h, "x").await()

        /** An untyped call whose target is not a pair of names. */
        @Handler
        suspend fun callBadName(ctx: Context): String = ctx.call<String>("Counter/add", "x", "k", ByteArray(0)).await()

        @Handler
        suspend fun negativeTimer(ctx: Context) {
            ctx.sleep((-1).seconds)
        }

        @Handler
        suspend fun deep(ctx: Context, depth: Int): String = if (depth == 0) error("bottom") else deep(ctx, depth - 1)

        @Handler
        suspend fun failInRun(ctx: Context): String =
            ctx.run<String>("step") { throw IllegalArgumentException("in a step") }
    }

    class NotAService {
        @Handler
        suspend fun h(ctx: Context, x: String): String = x
    }

    @Test
    fun `a non-terminal exception sends its full stack trace beside the short message`() =
        Transcript(TestSteps(), "boom").use { t ->
            t.start()
            t.input("\"kaput\"")
            val err = t.expectError()
            assertEquals(500L, err["code"])
            assertEquals(true, err["retryable"])
            assertEquals("IllegalStateException: kaput", err["message"])
            val trace = err["stacktrace"] as String
            assertTrue(trace.startsWith("java.lang.IllegalStateException: kaput\n"), trace)
            assertTrue("at dev.kiln.sdk.TestSteps.boom(" in trace, trace)
        }

    @Test
    fun `a failing run block sends the block's stack trace`() = Transcript(Misuses(), "failInRun").use { t ->
        t.start()
        t.input(null)
        val err = t.expectError()
        assertEquals("run 'step' failed: IllegalArgumentException: in a step", err["message"])
        assertTrue((err["stacktrace"] as String).startsWith("java.lang.IllegalArgumentException: in a step\n"))
    }

    @Test
    fun `the stack trace is cut to 16 KiB`() = Transcript(Misuses(), "deep").use { t ->
        t.start()
        t.input("2000")
        val err = t.expectError()
        val trace = err["stacktrace"] as String
        assertTrue(trace.encodeToByteArray().size <= 16 * 1024, "${trace.encodeToByteArray().size} bytes")
        assertTrue(trace.endsWith("... (truncated to 16384 bytes)"), trace.takeLast(100))
        assertEquals("IllegalStateException: bottom", err["message"])
    }

    @Test
    fun `truncation never splits a character`() {
        val s = "é".repeat(100) // 2 bytes each
        assertEquals(s, truncateUtf8(s, 200))
        val cut = truncateUtf8(s + "€€€", 200)
        assertTrue(cut.encodeToByteArray().size <= 200)
        assertTrue(cut.endsWith("... (truncated to 200 bytes)"))
        assertTrue(cut.substringBefore("\n").all { it == 'é' })
        assertEquals("x".repeat(50), truncateUtf8("x".repeat(50), 50))
    }

    @Test
    fun `an undecodable input is a terminal 400 naming the expected type`() =
        Transcript(TestSteps(), "greet").use { t ->
            t.start()
            t.input("{\"nom\": 3}")
            val out = t.nextEntry()
            assertEquals("output", out.kind)
            assertEquals(400, out.failure!!.code)
            assertTrue(
                out.failure!!.message.startsWith("handler Stepper/greet expects dev.kiln.sdk.Greeting: "),
                out.failure!!.message,
            )
            t.expectEnd()
        }

    @Test
    fun `an empty body for a handler that needs an input is a terminal 400`() =
        Transcript(TestSteps(), "greet").use { t ->
            t.start()
            t.input(null)
            val out = t.nextEntry()
            assertEquals(400, out.failure!!.code)
            assertEquals(
                "handler Stepper/greet expects dev.kiln.sdk.Greeting, got an empty body",
                out.failure!!.message,
            )
        }

    @Test
    fun `an input for a handler that takes none is a terminal 400, an empty body or null is fine`() {
        Transcript(TestSteps(), "nothing").use { t ->
            t.start()
            t.input("{\"x\":1}")
            val out = t.nextEntry()
            assertEquals(400, out.failure!!.code)
            assertEquals(
                "handler Stepper/nothing takes no input, got a body of 7 bytes: send an empty body",
                out.failure!!.message,
            )
        }
        Transcript(TestSteps(), "nothing").use { t ->
            t.start()
            t.input("null")
            assertEquals(null, t.nextEntry().failure)
        }
    }

    @Test
    fun `a typed call to an unannotated class is a terminal 400, not retried`() =
        Transcript(Misuses(), "callUnannotated").use { t ->
            t.start()
            t.input(null)
            val out = t.nextEntry()
            assertEquals("output", out.kind, "no call entry is journaled")
            assertEquals(400, out.failure!!.code)
            assertTrue(
                "is not annotated @Service, @VirtualObject or @Workflow" in out.failure!!.message,
                out.failure!!.message,
            )
            assertTrue("annotate the class" in out.failure!!.message, out.failure!!.message)
        }

    @Test
    fun `an untyped call to a malformed name is a terminal 400`() = Transcript(Misuses(), "callBadName").use { t ->
        t.start()
        t.input(null)
        val out = t.nextEntry()
        assertEquals("output", out.kind)
        assertEquals(400, out.failure!!.code)
        assertTrue(out.failure!!.message.startsWith("ctx.call(\"Counter/add\", \"x\", …): service and handler"))
    }

    @Test
    fun `a negative timer is a terminal 400`() = Transcript(Misuses(), "negativeTimer").use { t ->
        t.start()
        t.input(null)
        val out = t.nextEntry()
        assertEquals(400, out.failure!!.code)
        assertEquals("ctx.timer(-1s): the duration must not be negative", out.failure!!.message)
    }
}
