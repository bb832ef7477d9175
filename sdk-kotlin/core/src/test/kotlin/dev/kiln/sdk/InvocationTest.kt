package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Test
import kotlin.random.Random

/** Protocol transcripts: frames in, frames out, no server. */
class InvocationTest {
    private fun run(name: String, value: String) = JournalEntry(0, EntryKind.RUN, name, value = json(value))
    private fun JournalEntry.at(i: Int) = copy(index = i)
    private fun input(v: String?) = JournalEntry(0, EntryKind.INPUT, value = v?.let(::json))

    private fun assertEntry(e: JournalEntry, index: Int, kind: String, name: String? = null, value: String? = null) {
        assertEquals(index, e.index, "index of $e")
        assertEquals(kind, e.kind, "kind of $e")
        assertEquals(name, e.name, "name of $e")
        assertEquals(value, e.value.text(), "value of $e")
    }

    @Test
    fun `counter add from scratch journals get_state, set_state, output`() = Transcript(TestCounter(), "add").use { t ->
        t.start(key = "k1")
        t.input("5")
        assertEntry(t.nextEntry(), 1, "get_state", "count", null)
        assertEntry(t.nextEntry(), 2, "set_state", "count", "5")
        assertEntry(t.nextEntry(), 3, "output", null, "5")
        t.expectEnd()
        t.ack(3)
        t.finish()
    }

    @Test
    fun `counter add reads the state snapshot`() = Transcript(TestCounter(), "add").use { t ->
        t.start(key = "k1", state = mapOf("count" to json("10")))
        t.input("5")
        assertEntry(t.nextEntry(), 1, "get_state", "count", "10")
        assertEntry(t.nextEntry(), 2, "set_state", "count", "15")
        assertEntry(t.nextEntry(), 3, "output", null, "15")
        t.expectEnd()
    }

    @Test
    fun `run result is returned only after its ACK`() {
        val svc = TestSteps()
        Transcript(svc, "threeStep").use { t ->
            t.start()
            t.input("\"x\"")
            assertEntry(t.nextEntry(), 1, "run", "step-1", "\"x-1\"")
            t.expectNoFrame(300)
            t.ack(1)
            assertEntry(t.nextEntry(), 2, "run", "step-2", "\"x-2\"")
            t.expectNoFrame(200)
            t.ack(2)
            assertEntry(t.nextEntry(), 3, "run", "step-3", "\"x-3\"")
            t.expectNoFrame(200)
            t.ack(3)
            assertEntry(t.nextEntry(), 4, "output", null, "\"x-1 x-2 x-3\"")
            t.expectEnd()
            t.ack(4)
            t.finish()
        }
        assertEquals(3, svc.executions.get())
    }

    @Test
    fun `ACKs after END, beyond the last entry, are harmless`() = Transcript(TestCounter(), "add").use { t ->
        t.start()
        t.input("1")
        t.nextEntry()
        t.nextEntry()
        t.nextEntry()
        t.expectEnd()
        t.ack(10)
        t.finish()
    }

    @Test
    fun `replay of a full journal returns recorded results without running blocks`() {
        val svc = TestSteps()
        Transcript(svc, "threeStep").use { t ->
            // values deliberately differ from what the blocks would compute
            t.replay(
                listOf(
                    input("\"x\""),
                    run("step-1", "\"r1\"").at(1),
                    run("step-2", "\"r2\"").at(2),
                    run("step-3", "\"r3\"").at(3),
                ),
            )
            assertEntry(t.nextEntry(), 4, "output", null, "\"r1 r2 r3\"")
            t.expectEnd()
            t.finish()
        }
        assertEquals(0, svc.executions.get(), "replayed run blocks must not execute")
    }

    @Test
    fun `partial replay continues processing at known_entries`() {
        val svc = TestSteps()
        Transcript(svc, "threeStep").use { t ->
            t.replay(listOf(input("\"x\""), run("step-1", "\"r1\"").at(1)))
            assertEntry(t.nextEntry(), 2, "run", "step-2", "\"x-2\"")
            t.ack(2)
            assertEntry(t.nextEntry(), 3, "run", "step-3", "\"x-3\"")
            t.ack(3)
            assertEntry(t.nextEntry(), 4, "output", null, "\"r1 x-2 x-3\"")
            t.expectEnd()
        }
        assertEquals(2, svc.executions.get())
    }

    @Test
    fun `journal mismatch on name is ERROR 570, not retryable`() {
        val svc = TestSteps()
        Transcript(svc, "threeStep").use { t ->
            t.replay(listOf(input("\"x\""), run("first", "\"a\"").at(1)))
            val err = t.expectError()
            assertEquals(570L, err["code"])
            assertEquals(false, err["retryable"])
            assertEquals(1L, err["index"])
            assertEquals(
                "journal mismatch at index 1: journal has run 'first', handler issued run 'step-1'",
                err["message"],
            )
            t.expectNoFrame(200)
            t.finish()
        }
        assertEquals(0, svc.executions.get())
    }

    @Test
    fun `journal mismatch on kind is ERROR 570`() = Transcript(TestCounter(), "add").use { t ->
        t.replay(listOf(input("1"), run("step", "1").at(1)), key = "k")
        val err = t.expectError()
        assertEquals(570L, err["code"])
        assertEquals(false, err["retryable"])
        assertEquals(
            "journal mismatch at index 1: journal has run 'step', handler issued get_state 'count'",
            err["message"],
        )
    }

    @Test
    fun `journal with more entries than the handler issues is a mismatch`() =
        Transcript(TestSteps(), "threeStep").use { t ->
            t.replay(
                listOf(
                    input("\"x\""),
                    run("step-1", "\"a\"").at(1),
                    run("step-2", "\"b\"").at(2),
                    run("step-3", "\"c\"").at(3),
                    run("step-4", "\"d\"").at(4),
                ),
            )
            val err = t.expectError()
            assertEquals("journal mismatch at index 4: journal has run 'step-4', handler issued output", err["message"])
        }

    @Test
    fun `TerminalException from a handler becomes an output failure`() = Transcript(TestSteps(), "teapot").use { t ->
        t.start()
        t.input("\"short and stout\"")
        val out = t.nextEntry()
        assertEquals("output", out.kind)
        assertNull(out.value)
        assertEquals(418, out.failure!!.code)
        assertEquals("short and stout", out.failure.message)
        t.expectEnd()
    }

    @Test
    fun `TerminalException inside run is journaled as a run failure and rethrown`() {
        val svc = TestSteps()
        Transcript(svc, "failingStep").use { t ->
            t.start()
            t.input("\"in\"")
            val r = t.nextEntry()
            assertEquals("run", r.kind)
            assertEquals(422, r.failure!!.code)
            assertEquals("bad in", r.failure.message)
            t.expectNoFrame(200)
            t.ack(1)
            val out = t.nextEntry()
            assertEquals(422, out.failure!!.code)
            assertEquals("step failed: bad in", out.failure.message)
            t.expectEnd()
        }
        assertEquals(1, svc.executions.get())
    }

    @Test
    fun `replayed run failure is rethrown without running the block`() {
        val svc = TestSteps()
        Transcript(svc, "failingStep").use { t ->
            t.replay(
                listOf(input("\"in\""), JournalEntry(1, EntryKind.RUN, "check", failure = Failure(409, "recorded"))),
            )
            val out = t.nextEntry()
            assertEquals(2, out.index)
            assertEquals(409, out.failure!!.code)
            assertEquals("step failed: recorded", out.failure.message)
            t.expectEnd()
        }
        assertEquals(0, svc.executions.get())
    }

    @Test
    fun `other exceptions are ERROR 500 retryable`() = Transcript(TestSteps(), "boom").use { t ->
        t.start()
        t.input("\"kaput\"")
        val err = t.expectError()
        assertEquals(500L, err["code"])
        assertEquals(true, err["retryable"])
        assertEquals("IllegalStateException: kaput", err["message"])
        t.expectNoFrame(200)
    }

    @Test
    fun `shared handler writing state is ERROR 409`() = Transcript(TestCounter(), "sneakySet").use { t ->
        t.start(key = "k")
        t.input(null)
        val err = t.expectError()
        assertEquals(409L, err["code"])
        assertEquals(false, err["retryable"])
        assertEquals(
            "shared handler TestCounter/sneakySet cannot write state ('count'): state writes are only allowed in exclusive handlers",
            err["message"],
        )
        t.expectNoFrame(200)
    }

    @Test
    fun `shared handler may read state`() = Transcript(TestCounter(), "get").use { t ->
        t.start(key = "k", state = mapOf("count" to json("7")))
        t.input(null)
        assertEntry(t.nextEntry(), 1, "get_state", "count", "7")
        assertEntry(t.nextEntry(), 2, "output", null, "7")
        t.expectEnd()
    }

    @Test
    fun `state keys, clear and clear all are journaled`() = Transcript(TestCounter(), "reset").use { t ->
        t.start(key = "k", state = mapOf("count" to json("1"), "a" to json("2")))
        t.input(null)
        val keys = t.nextEntry()
        assertEquals("get_state_keys", keys.kind)
        assertEquals(listOf("a", "count"), keys.keys)
        assertEntry(t.nextEntry(), 2, "clear_state", "count")
        assertEntry(t.nextEntry(), 3, "clear_all_state")
        assertEntry(t.nextEntry(), 4, "output", null, "[\"a\",\"count\"]")
        t.expectEnd()
    }

    @Test
    fun `random is deterministic across replay`() {
        val first = TestSteps()
        val recorded: String
        val output: String
        Transcript(first, "randomStep").use { t ->
            t.start(seed = 1234)
            t.input(null)
            val r = t.nextEntry()
            recorded = r.value.text()!!
            t.ack(1)
            output = t.nextEntry().value.text()!!
            t.expectEnd()
        }
        val expected = Random(1234)
        assertEquals(expected.nextLong().toString(), recorded)
        assertEquals(expected.nextLong().toString(), output)

        val second = TestSteps()
        Transcript(second, "randomStep").use { t ->
            t.replay(listOf(input(null), run("r", recorded).at(1)), seed = 1234)
            assertEntry(t.nextEntry(), 2, "output", null, output)
            t.expectEnd()
        }
        assertEquals(0, second.executions.get())
    }

    @Test
    fun `serializable classes and Unit results`() {
        Transcript(TestSteps(), "greet").use { t ->
            t.start()
            t.input("""{"name":"kiln","times":2}""")
            assertEntry(t.nextEntry(), 1, "output", null, "\"hello kiln x2\"")
            t.expectEnd()
        }
        Transcript(TestSteps(), "nothing").use { t ->
            t.start()
            t.input(null)
            assertEntry(t.nextEntry(), 1, "output", null, "")
            t.expectEnd()
        }
    }

    @Test
    fun `undecodable input is a terminal 400`() = Transcript(TestSteps(), "greet").use { t ->
        t.start()
        t.input("not json")
        val out = t.nextEntry()
        assertEquals(400, out.failure!!.code)
        t.expectEnd()
    }

    @Test
    fun `stream ending while waiting for an ACK cancels the handler`() {
        val svc = TestSteps()
        Transcript(svc, "threeStep").use { t ->
            t.start()
            t.input("\"x\"")
            assertEntry(t.nextEntry(), 1, "run", "step-1", "\"x-1\"")
            t.finish()
            t.expectNoFrame(300)
            assertFalse(t.isRunning())
        }
        assertEquals(1, svc.executions.get())
    }

    @Test
    fun `a first frame other than START is a protocol violation`() = Transcript(TestSteps(), "threeStep").use { t ->
        t.ack(0)
        val err = t.expectError()
        assertEquals(571L, err["code"])
        assertEquals(false, err["retryable"])
    }

    @Test
    fun `journal indices out of order are a protocol violation`() = Transcript(TestSteps(), "threeStep").use { t ->
        t.start(knownEntries = 2)
        t.input("\"x\"")
        t.entry(run("step-1", "\"a\"").at(5))
        val err = t.expectError()
        assertEquals(571L, err["code"])
    }
}
