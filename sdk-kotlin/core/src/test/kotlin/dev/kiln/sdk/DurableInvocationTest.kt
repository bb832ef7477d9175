package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Protocol §5 transcripts: calls, sends, timers, awakeables, promises, combinators, cancellation. */
class DurableInvocationTest {
    private fun input(v: String?) = JournalEntry(0, EntryKind.INPUT, value = v?.let(::json))
    private fun value(v: String) = EntryResult(value = json(v))
    private fun failure(code: Int, message: String) = EntryResult(failure = Failure(code, message))

    private fun assertCall(e: JournalEntry, index: Int, service: String, handler: String, key: String, input: String) {
        assertEquals(index, e.index, "index of $e")
        assertEquals(EntryKind.CALL, e.kind)
        assertEquals(service, e.service)
        assertEquals(handler, e.handler)
        assertEquals(key, e.key)
        assertEquals(input, e.value.text())
    }

    private fun assertOutput(e: JournalEntry, index: Int, value: String) {
        assertEquals(index, e.index, "index of $e")
        assertEquals(EntryKind.OUTPUT, e.kind)
        assertNull(e.failure, "failure of $e")
        assertEquals(value, e.value.text())
    }

    // Calls and sends -----------------------------------------------------------------------------

    @Test
    fun `call journals the entry and a COMPLETION delivers the callee's result`() =
        Transcript(Durable(), "callAdd").use { t ->
            t.start()
            t.input("5")
            assertCall(t.nextEntry(), 1, "TestCounter", "add", "k", "5")
            t.expectNoFrame(200)
            t.completeWith(1, "12")
            assertOutput(t.nextEntry(), 2, "12")
            t.expectEnd()
            t.ack(2)
            t.finish()
        }

    @Test
    fun `replayed call returns the journaled result without waiting`() = Transcript(Durable(), "callAdd").use { t ->
        val call =
            JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "add", key = "k", value = json("5"))
        t.replay(listOf(input("5"), call.copy(result = value("40"))))
        assertOutput(t.nextEntry(), 2, "40")
        t.expectEnd()
    }

    @Test
    fun `COMPLETION during replay completes an entry the journal has without a result`() =
        Transcript(Durable(), "callAdd").use { t ->
            val call =
                JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "add", key = "k", value = json("5"))
            t.replay(listOf(input("5"), call))
            t.expectNoFrame(200)
            t.completeWith(1, "41")
            assertOutput(t.nextEntry(), 2, "41")
            t.expectEnd()
        }

    @Test
    fun `calls without input and to services resolve names from annotations`() =
        Transcript(Durable(), "callGetAndSteps").use { t ->
            t.start()
            t.input(null)
            assertCall(t.nextEntry(), 1, "TestCounter", "get", "k", "")
            t.completeWith(1, "3")
            assertCall(t.nextEntry(), 2, "Stepper", "threeStep", "", "\"x\"")
            t.completeWith(2, "\"a b c\"")
            assertOutput(t.nextEntry(), 3, "\"3 a b c\"")
            t.expectEnd()
        }

    @Test
    fun `untyped call`() = Transcript(Durable(), "callUntyped").use { t ->
        t.start()
        t.input(null)
        assertCall(t.nextEntry(), 1, "Other", "h", "key1", "\"in\"")
        t.completeWith(1, "\"out\"")
        assertOutput(t.nextEntry(), 2, "\"out\"")
        t.expectEnd()
    }

    @Test
    fun `terminal failure of a callee is thrown from await and can be caught`() =
        Transcript(Durable(), "callTeapot").use { t ->
            t.start()
            t.input("\"tea\"")
            assertCall(t.nextEntry(), 1, "Stepper", "teapot", "", "\"tea\"")
            t.completion(1, failure(418, "short and stout"))
            assertOutput(t.nextEntry(), 2, "\"caught 418: short and stout\"")
            t.expectEnd()
        }

    @Test
    fun `replay with a call to another target is a journal mismatch`() = Transcript(Durable(), "callAdd").use { t ->
        val call =
            JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "get", key = "k", value = json("5"))
        t.replay(listOf(input("5"), call))
        val err = t.expectError()
        assertEquals(570L, err["code"])
        assertEquals(
            "journal mismatch at index 1: journal has call 'TestCounter/get', handler issued call 'TestCounter/add'",
            err["message"],
        )
    }

    @Test
    fun `sends are one-way, with an optional delay`() = Transcript(Durable(), "sendLater").use { t ->
        t.start()
        t.input("5")
        val s1 = t.nextEntry()
        assertEquals(EntryKind.SEND, s1.kind)
        assertEquals("TestCounter", s1.service)
        assertEquals("add", s1.handler)
        assertEquals("k", s1.key)
        assertEquals("5", s1.value.text())
        assertEquals(10_000L, s1.delayMs)
        val s2 = t.nextEntry()
        assertEquals(
            listOf("send", "TestCounter", "reset", "k", ""),
            listOf(s2.kind, s2.service, s2.handler, s2.key, s2.value.text()),
        )
        assertNull(s2.delayMs)
        val s3 = t.nextEntry()
        assertEquals(listOf("send", "Stepper", "nothing", ""), listOf(s3.kind, s3.service, s3.handler, s3.key))
        assertOutput(t.nextEntry(), 4, "\"sent\"")
        t.expectEnd()
    }

    // Timers and suspension -----------------------------------------------------------------------

    @Test
    fun `a sleep further away than suspend_after suspends at once`() = Transcript(Durable(), "nap").use { t ->
        val before = System.currentTimeMillis()
        t.start(suspendAfterMs = 1000)
        t.input("60000")
        val sleep = t.nextEntry()
        assertEquals(EntryKind.SLEEP, sleep.kind)
        assertTrue(
            sleep.wakeUpAtMs!! in before + 60_000..System.currentTimeMillis() + 60_000,
            "wake_up_at_ms ${sleep.wakeUpAtMs}",
        )
        assertEquals(listOf(1L), t.expectSuspend(500))
        t.expectNoFrame(300)
        t.finish()
    }

    @Test
    fun `a near sleep waits for its COMPLETION`() = Transcript(Durable(), "nap").use { t ->
        t.start(suspendAfterMs = 5000)
        t.input("50")
        assertEquals(EntryKind.SLEEP, t.nextEntry().kind)
        t.expectNoFrame(200)
        t.completion(1, EntryResult.EMPTY)
        assertOutput(t.nextEntry(), 2, "\"slept\"")
        t.expectEnd()
    }

    @Test
    fun `replayed sleep uses the journaled wake-up and its result`() = Transcript(Durable(), "nap").use { t ->
        val sleep = JournalEntry(1, EntryKind.SLEEP, wakeUpAtMs = 1234)
        t.replay(listOf(input("60000"), sleep.copy(result = EntryResult.EMPTY)), suspendAfterMs = 1000)
        assertOutput(t.nextEntry(), 2, "\"slept\"")
        t.expectEnd()
    }

    @Test
    fun `replayed pending sleep whose wake-up is due waits for the COMPLETION`() =
        Transcript(Durable(), "nap").use { t ->
            t.replay(listOf(input("60000"), JournalEntry(1, EntryKind.SLEEP, wakeUpAtMs = 1234)), suspendAfterMs = 5000)
            t.expectNoFrame(200)
            t.completion(1, EntryResult.EMPTY)
            assertOutput(t.nextEntry(), 2, "\"slept\"")
            t.expectEnd()
        }

    @Test
    fun `a completion arriving before suspend_after is used`() = Transcript(Durable(), "callAdd").use { t ->
        t.start(suspendAfterMs = 2000)
        t.input("1")
        assertCall(t.nextEntry(), 1, "TestCounter", "add", "k", "1")
        Thread.sleep(300)
        t.completeWith(1, "2")
        assertOutput(t.nextEntry(), 2, "2")
        t.expectEnd()
    }

    @Test
    fun `no completion within suspend_after suspends on the awaited index`() =
        Transcript(Durable(), "callAdd").use { t ->
            t.start(suspendAfterMs = 200)
            t.input("1")
            assertCall(t.nextEntry(), 1, "TestCounter", "add", "k", "1")
            val started = System.currentTimeMillis()
            assertEquals(listOf(1L), t.expectSuspend())
            assertTrue(System.currentTimeMillis() - started >= 150, "suspended too early")
            t.completeWith(1, "2") // too late: the attempt is over
            t.expectNoFrame(300)
            t.finish()
        }

    // Awakeables ----------------------------------------------------------------------------------

    @Test
    fun `awakeable id is derived from the invocation id and index, and a COMPLETION resolves it`() =
        Transcript(Durable(), "awake").use { t ->
            t.start(id = "inv_0123456789abcdef0123456789abcdef")
            t.input(null)
            val a = t.nextEntry()
            assertEquals(1, a.index)
            assertEquals(EntryKind.AWAKEABLE, a.kind)
            val publish = t.nextEntry()
            assertEquals("run", publish.kind)
            assertEquals("\"awk_0123456789abcdef0123456789abcdef00000001\"", publish.value.text())
            t.ack(2)
            t.expectNoFrame(200)
            t.completeWith(1, """{"a":"y","b":2}""")
            assertOutput(t.nextEntry(), 3, "\"y2\"")
            t.expectEnd()
        }

    @Test
    fun `rejected awakeable throws a TerminalException`() = Transcript(Durable(), "awake").use { t ->
        t.start(id = "inv_0123456789abcdef0123456789abcdef")
        t.input(null)
        t.nextEntry()
        t.nextEntry()
        t.ack(2)
        t.completion(1, failure(499, "nope"))
        val out = t.nextEntry()
        assertEquals(499, out.failure!!.code)
        assertEquals("nope", out.failure.message)
        t.expectEnd()
    }

    @Test
    fun `complete_awakeable journals value or failure`() = Transcript(Durable(), "complete").use { t ->
        t.start()
        t.input("\"awk_x\"")
        val r = t.nextEntry()
        assertEquals(
            listOf<Any?>("complete_awakeable", "awk_x", """{"a":"x","b":1}"""),
            listOf(r.kind, r.id, r.value.text()),
        )
        val f = t.nextEntry()
        assertEquals("complete_awakeable", f.kind)
        assertEquals("awk_x", f.id)
        assertEquals(499, f.failure!!.code)
        assertEquals("no", f.failure.message)
        assertOutput(t.nextEntry(), 3, "\"done\"")
        t.expectEnd()
    }

    // Combinators ---------------------------------------------------------------------------------

    @Test
    fun `awaitAny journals the winner`() = Transcript(Durable(), "race").use { t ->
        t.start()
        t.input(null)
        assertEquals(EntryKind.AWAKEABLE, t.nextEntry().kind)
        assertEquals(EntryKind.AWAKEABLE, t.nextEntry().kind)
        t.expectNoFrame(200)
        t.completeWith(2, "\"b\"")
        val select = t.nextEntry()
        assertEquals(EntryKind.SELECT, select.kind)
        assertEquals(3, select.index)
        assertEquals(2, select.winner)
        assertOutput(t.nextEntry(), 4, "\"winner 1: b\"")
        t.expectEnd()
    }

    @Test
    fun `replayed select returns the journaled winner even if another completed too`() =
        Transcript(Durable(), "race").use { t ->
            t.replay(
                listOf(
                    input(null),
                    JournalEntry(1, EntryKind.AWAKEABLE, result = value("\"a\"")),
                    JournalEntry(2, EntryKind.AWAKEABLE, result = value("\"b\"")),
                    JournalEntry(3, EntryKind.SELECT, winner = 2),
                ),
            )
            assertOutput(t.nextEntry(), 4, "\"winner 1: b\"")
            t.expectEnd()
        }

    @Test
    fun `awaitAny suspends on all pending futures`() = Transcript(Durable(), "race").use { t ->
        t.start(suspendAfterMs = 100)
        t.input(null)
        t.nextEntry()
        t.nextEntry()
        assertEquals(listOf(1L, 2L), t.expectSuspend())
    }

    @Test
    fun `awaitAll waits for each and suspends on all still pending`() {
        Transcript(Durable(), "all").use { t ->
            t.start(suspendAfterMs = 300)
            t.input(null)
            t.nextEntry()
            t.nextEntry()
            t.completeWith(2, "\"b\"")
            assertEquals(listOf(1L), t.expectSuspend())
        }
        Transcript(Durable(), "all").use { t ->
            t.start(suspendAfterMs = 300)
            t.input(null)
            t.nextEntry()
            t.nextEntry()
            assertEquals(listOf(1L, 2L), t.expectSuspend())
        }
        Transcript(Durable(), "all").use { t ->
            t.start()
            t.input(null)
            t.nextEntry()
            t.nextEntry()
            t.completeWith(2, "\"b\"")
            t.completeWith(1, "\"a\"")
            assertOutput(t.nextEntry(), 3, "\"a+b\"")
            t.expectEnd()
        }
    }

    @Test
    fun `await with a timeout fails with 408 when the timer wins`() = Transcript(Durable(), "withTimeout").use { t ->
        val before = System.currentTimeMillis()
        t.start()
        t.input(null)
        assertEquals(EntryKind.AWAKEABLE, t.nextEntry().kind)
        val sleep = t.nextEntry()
        assertEquals(EntryKind.SLEEP, sleep.kind)
        assertTrue(sleep.wakeUpAtMs!! >= before + 5000)
        t.completion(2, EntryResult.EMPTY)
        val select = t.nextEntry()
        assertEquals(EntryKind.SELECT, select.kind)
        assertEquals(2, select.winner)
        assertOutput(t.nextEntry(), 4, "\"timeout 408\"")
        t.expectEnd()
    }

    @Test
    fun `await with a timeout returns the value when the future wins`() =
        Transcript(Durable(), "withTimeout").use { t ->
            t.start()
            t.input(null)
            t.nextEntry()
            t.nextEntry()
            t.completeWith(1, "\"in time\"")
            assertEquals(1, t.nextEntry().winner)
            assertOutput(t.nextEntry(), 4, "\"in time\"")
            t.expectEnd()
        }

    // Workflows and promises ----------------------------------------------------------------------

    @Test
    fun `workflow run awaits a durable promise`() = Transcript(TestSignup(), "run").use { t ->
        t.start(key = "wf-1")
        t.input("\"a@b\"")
        assertEquals("set_state", t.nextEntry().kind)
        val get = t.nextEntry()
        assertEquals(listOf<Any?>(2, "get_promise", "confirmed"), listOf(get.index, get.kind, get.name))
        t.expectNoFrame(200)
        t.completeWith(2, "\"c0de\"")
        assertEquals("set_state", t.nextEntry().kind)
        assertOutput(t.nextEntry(), 4, "\"welcome a@b c0de\"")
        t.expectEnd()
    }

    @Test
    fun `resolving a promise journals complete_promise and reports a second completion`() {
        Transcript(TestSignup(), "confirm").use { t ->
            t.start(key = "wf-1")
            t.input("\"c0de\"")
            val c = t.nextEntry()
            assertEquals(
                listOf<Any?>("complete_promise", "confirmed", "\"c0de\""),
                listOf(c.kind, c.name, c.value.text()),
            )
            t.completion(1, EntryResult.EMPTY)
            assertOutput(t.nextEntry(), 2, "\"confirmed\"")
            t.expectEnd()
        }
        Transcript(TestSignup(), "confirm").use { t ->
            t.start(key = "wf-1")
            t.input("\"c0de\"")
            t.nextEntry()
            t.completion(1, failure(409, "promise 'confirmed' already completed"))
            assertOutput(t.nextEntry(), 2, "\"already 409\"")
            t.expectEnd()
        }
    }

    @Test
    fun `rejecting a promise journals a failure`() = Transcript(TestSignup(), "refuse").use { t ->
        t.start(key = "wf-1")
        t.input(null)
        val c = t.nextEntry()
        assertEquals("complete_promise", c.kind)
        assertEquals(403, c.failure!!.code)
        assertEquals("refused", c.failure.message)
        t.completion(1, EntryResult.EMPTY)
        assertOutput(t.nextEntry(), 2, "\"refused\"")
        t.expectEnd()
    }

    @Test
    fun `peek returns null before completion, the value after, and throws a rejection`() {
        for ((result, expected) in listOf(EntryResult.EMPTY to "\"pending\"", value("\"c0de\"") to "\"c0de\"")) {
            Transcript(TestSignup(), "status").use { t ->
                t.start(key = "wf-1")
                t.input(null)
                val p = t.nextEntry()
                assertEquals(listOf<Any?>("peek_promise", "confirmed"), listOf(p.kind, p.name))
                t.completion(1, result)
                assertOutput(t.nextEntry(), 2, expected)
                t.expectEnd()
            }
        }
        Transcript(TestSignup(), "status").use { t ->
            t.replay(
                listOf(
                    input(null),
                    JournalEntry(1, EntryKind.PEEK_PROMISE, "confirmed", result = failure(403, "refused")),
                ),
                key = "wf-1",
            )
            val out = t.nextEntry()
            assertEquals(403, out.failure!!.code)
            t.expectEnd()
        }
    }

    // Cancellation --------------------------------------------------------------------------------

    @Test
    fun `cancelled flag in START surfaces at the first await, journaled, and compensation runs`() {
        val svc = Durable()
        Transcript(svc, "compensate").use { t ->
            t.start(cancelled = true)
            t.input(null)
            assertCall(t.nextEntry(), 1, "TestCounter", "add", "k", "1")
            val c = t.nextEntry()
            assertEquals(listOf<Any?>(2, "cancelled"), listOf(c.index, c.kind))
            val undo = t.nextEntry()
            assertEquals(listOf<Any?>(3, "run", "undo"), listOf(undo.index, undo.kind, undo.name))
            t.ack(3)
            val out = t.nextEntry()
            assertEquals(409, out.failure!!.code)
            assertEquals("compensated after cancelled", out.failure.message)
            t.expectEnd()
        }
        assertEquals(1, svc.compensations.get())
    }

    @Test
    fun `a CANCEL frame wakes a waiting await`() = Transcript(Durable(), "compensate").use { t ->
        t.start()
        t.input(null)
        assertCall(t.nextEntry(), 1, "TestCounter", "add", "k", "1")
        t.expectNoFrame(200)
        t.cancel()
        assertEquals("cancelled", t.nextEntry().kind)
        assertEquals("run", t.nextEntry().kind)
        t.ack(3)
        assertEquals(409, t.nextEntry().failure!!.code)
        t.expectEnd()
    }

    @Test
    fun `a completed future is returned even when cancelled`() = Transcript(Durable(), "compensate").use { t ->
        t.start()
        t.input(null)
        t.nextEntry()
        t.completeWith(1, "1")
        assertOutput(t.nextEntry(), 2, "\"not cancelled\"")
        t.expectEnd()
    }

    @Test
    fun `replayed cancelled entry throws at the same await, even if the call completed since`() {
        val svc = Durable()
        Transcript(svc, "compensate").use { t ->
            val call =
                JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "add", key = "k", value = json("1"))
            t.replay(
                listOf(
                    input(null),
                    call.copy(result = failure(409, "callee cancelled")),
                    JournalEntry(2, EntryKind.CANCELLED),
                ),
                cancelled = true,
            )
            val undo = t.nextEntry()
            assertEquals(listOf<Any?>(3, "run", "undo"), listOf(undo.index, undo.kind, undo.name))
            t.ack(3)
            val out = t.nextEntry()
            assertEquals(409, out.failure!!.code)
            assertEquals("compensated after cancelled", out.failure.message)
            t.expectEnd()
        }
        assertEquals(1, svc.compensations.get())
    }

    @Test
    fun `cancellation surfaces once`() = Transcript(Durable(), "compensate").use { t ->
        t.replay(
            listOf(
                input(null),
                JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "add", key = "k", value = json("1")),
                JournalEntry(2, EntryKind.CANCELLED),
                JournalEntry(3, EntryKind.RUN, "undo", value = json("\"undone\"")),
            ),
            cancelled = true,
        )
        t.cancel() // a repeated cancellation is not surfaced again
        val out = t.nextEntry()
        assertEquals(4, out.index)
        assertEquals("compensated after cancelled", out.failure!!.message)
        t.expectEnd()
    }

    // Run retry policies and discovery ------------------------------------------------------------

    @Test
    fun `run with a retry policy retries in process, then journals a terminal 500`() {
        val svc = Durable()
        Transcript(svc, "flakyRun").use { t ->
            t.start()
            t.input(null)
            val r = t.nextEntry()
            assertEquals("run", r.kind)
            assertEquals(500, r.failure!!.code)
            assertEquals("nope 3", r.failure.message)
            t.ack(1)
            assertOutput(t.nextEntry(), 2, "\"gave up: 500 nope 3\"")
            t.expectEnd()
        }
        assertEquals(3, svc.executions.get())
    }

    @Test
    fun `suspension ends the attempt without ERROR, and user code stops`() {
        val svc = Durable()
        Transcript(svc, "compensate").use { t ->
            t.start(suspendAfterMs = 0)
            t.input(null)
            t.nextEntry()
            assertEquals(listOf(1L), t.expectSuspend())
            t.expectNoFrame(300)
            t.finish()
            assertFalse(t.isRunning())
        }
        assertEquals(0, svc.compensations.get())
    }

    @Test
    fun `discovery lists workflow kinds and retry policies`() {
        val json = discoveryJson(listOf(defineService(TestSignup()), defineService(Durable())))
        assertTrue(
            json.startsWith(
                """{"protocolVersion":1,"services":[{"name":"TestSignup","kind":"workflow","handlers":[""" +
                    """{"name":"confirm","kind":"shared"},{"name":"refuse","kind":"shared"},""" +
                    """{"name":"run","kind":"workflow"},{"name":"status","kind":"shared"}]},""" +
                    """{"name":"Durable","kind":"service","handlers":[""",
            ),
            json,
        )
        assertTrue(
            json.contains(
                """{"name":"retried","kind":"shared","retryPolicy":{"initialIntervalMs":250,"maxAttempts":7}}""",
            ),
            json,
        )
        assertTrue(json.contains("""{"name":"nap","kind":"shared"}"""), json)
    }
}
