package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * Concurrent coroutines of one handler: journal order fixed when commands are issued, `run`
 * entries sent in index order whatever order their blocks finish in, journaled resumption order,
 * replay, and the refusal of commands whose order could not be reproduced.
 */
class ParallelInvocationTest {
    private fun input() = JournalEntry(0, EntryKind.INPUT)
    private fun run(i: Int, name: String, value: String = name.uppercase()) =
        JournalEntry(i, EntryKind.RUN, name, value = json("\"$value\""))
    private fun describe(e: JournalEntry) = "${e.index} ${e.kind}" + (e.name?.let { " $it" } ?: "") +
        (e.winner?.let { " $it" } ?: "")

    /** The next [n] entries as "index kind [name|winner]". */
    private fun Transcript.entries(n: Int): List<String> = (1..n).map { describe(nextEntry()) }

    private fun Transcript.expectOutput(index: Int, value: String) {
        val out = nextEntry()
        assertEquals(listOf<Any?>(index, EntryKind.OUTPUT, value), listOf(out.index, out.kind, out.value.text()))
        expectEnd()
    }

    @Test
    fun `runAsync entries keep their start order when the blocks finish the other way round`() {
        val svc = Parallel(gated = setOf("a", "b"))
        Transcript(svc, "twoAsync").use { t ->
            t.start()
            t.input(null)
            svc.finish("b")
            t.expectNoFrame(300) // b is done but waits for a, which comes first in the journal
            svc.release("a")
            assertEquals(listOf("1 run a", "2 run b"), t.entries(2))
            t.expectNoFrame(200) // results are returned only once ACKed
            t.ack(2)
            t.expectOutput(3, "\"A B\"")
        }
        assertEquals(listOf("b", "a"), svc.executed.toList())
    }

    @Test
    fun `two runAsync and two runs in async coroutines journal in start order for every finishing order`() {
        val orders = listOf("abcd", "dcba", "badc", "cadb", "dbca", "bdac")
        for (order in orders) {
            val svc = Parallel(gated = setOf("a", "b", "c", "d"))
            Transcript(svc, "fourWays").use { t ->
                t.start()
                t.input(null)
                for (name in order) {
                    svc.finish(name.toString())
                }
                assertEquals(listOf("1 run a", "2 run b", "3 run c", "4 run d"), t.entries(4), "finishing order $order")
                t.ack(4)
                t.expectOutput(5, "\"A B C D\"")
            }
            assertEquals(order.map { it.toString() }, svc.executed.toList())
        }
    }

    @Test
    fun `replays of the four-way handler`() {
        // (journal after the input, entries the attempt must send, blocks that must run, error)
        data class Case(
            val journal: List<JournalEntry>,
            val sent: List<String>,
            val runs: Set<String>,
            val error: String?,
        )
        val cases = listOf(
            Case(listOf(run(1, "a"), run(2, "b"), run(3, "c"), run(4, "d")), listOf("5 output"), emptySet(), null),
            Case(listOf(run(1, "a"), run(2, "b")), listOf("3 run c", "4 run d", "5 output"), setOf("c", "d"), null),
            Case(listOf(run(1, "a")), listOf("2 run b", "3 run c", "4 run d", "5 output"), setOf("b", "c", "d"), null),
            // What the old SDK journaled: completion order. Refused before any block runs again.
            Case(
                listOf(run(1, "b"), run(2, "a")),
                emptyList(),
                emptySet(),
                "journal mismatch at index 1: journal has run 'b', handler issued run 'a'",
            ),
            Case(
                listOf(run(1, "a"), run(2, "b"), run(3, "d")),
                emptyList(),
                emptySet(),
                "journal mismatch at index 3: journal has run 'd', handler issued run 'c'",
            ),
        )
        for (case in cases) {
            val svc = Parallel()
            Transcript(svc, "fourWays").use { t ->
                t.replay(listOf(input()) + case.journal)
                if (case.error != null) {
                    val err = t.expectError()
                    assertEquals(
                        listOf<Any?>(570L, false, case.error),
                        listOf(err["code"], err["retryable"], err["message"]),
                    )
                } else {
                    val sent = case.sent.map {
                        val e = t.nextEntry()
                        if (e.kind == EntryKind.RUN) t.ack(e.index)
                        if (e.kind == EntryKind.OUTPUT) assertEquals("\"A B C D\"", e.value.text())
                        describe(e)
                    }
                    assertEquals(case.sent, sent, "replay of ${case.journal.map(::describe)}")
                    t.expectEnd()
                }
            }
            assertEquals(case.runs, svc.executed.toSet(), "blocks run in replay of ${case.journal.map(::describe)}")
        }
    }

    @Test
    fun `steps after a first parallel step are journaled in the same order whatever order the ACKs come in`() {
        for (ackBoth in listOf(true, false)) {
            val svc = Parallel()
            Transcript(svc, "chains").use { t ->
                t.start()
                t.input(null)
                assertEquals(listOf("1 run x1", "2 run y1"), t.entries(2))
                if (ackBoth) t.ack(2) else t.ack(1)
                // x's coroutine holds the lower index: it goes on first, also when both results are there
                assertEquals(listOf("3 run x2"), t.entries(1))
                t.ack(3)
                assertEquals(listOf("4 run y2"), t.entries(1))
                t.ack(4)
                t.expectOutput(5, "\"X1X2 Y1Y2\"")
            }
        }
        val replayed = Parallel()
        Transcript(replayed, "chains").use { t ->
            t.replay(listOf(input(), run(1, "x1"), run(2, "y1"), run(3, "x2"), run(4, "y2")))
            t.expectOutput(5, "\"X1X2 Y1Y2\"")
        }
        assertTrue(replayed.executed.isEmpty())
    }

    @Test
    fun `which coroutine goes on first is journaled as a select and replayed`() {
        val call =
            JournalEntry(1, EntryKind.CALL, service = "TestCounter", handler = "add", key = "k", value = json("1"))
        val awakeable = JournalEntry(2, EntryKind.AWAKEABLE)
        Transcript(Parallel(), "mixed").use { t ->
            t.start()
            t.input(null)
            assertEquals(listOf("1 call", "2 awakeable"), t.entries(2))
            t.completeWith(2, "\"w\"") // the awakeable first: its coroutine goes on first
            assertEquals(listOf("3 select 2", "4 run after-awakeable"), t.entries(2))
            t.ack(4)
            assertEquals(listOf("5 select 4"), t.entries(1)) // the call's coroutine still waits
            t.completeWith(1, "7")
            assertEquals(listOf("6 run after-call"), t.entries(1))
            t.ack(6)
            t.expectOutput(7, "\"call 7, awakeable w\"")
        }
        // (the journal of a first execution, what its replay must send): both orders replay as recorded
        val cases = listOf(
            listOf(
                call.copy(result = EntryResult(json("7"))),
                awakeable.copy(index = 2, result = EntryResult(json("\"w\""))),
                JournalEntry(3, EntryKind.SELECT, winner = 2),
                run(4, "after-awakeable", "awakeable w"),
                JournalEntry(5, EntryKind.SELECT, winner = 4),
                run(6, "after-call", "call 7"),
            ),
            listOf(
                call.copy(result = EntryResult(json("7"))),
                awakeable.copy(index = 2, result = EntryResult(json("\"w\""))),
                JournalEntry(3, EntryKind.SELECT, winner = 1),
                run(4, "after-call", "call 7"),
                JournalEntry(5, EntryKind.SELECT, winner = 2),
                run(6, "after-awakeable", "awakeable w"),
            ),
        )
        for (journal in cases) {
            val svc = Parallel()
            Transcript(svc, "mixed").use { t ->
                t.replay(listOf(input()) + journal)
                t.expectOutput(7, "\"call 7, awakeable w\"")
            }
            assertTrue(svc.executed.isEmpty())
        }
        // A select naming an entry no coroutine awaits is a mismatch.
        Transcript(Parallel(), "mixed").use { t ->
            t.replay(listOf(input(), call, awakeable, JournalEntry(3, EntryKind.SELECT, winner = 9)))
            val err = t.expectError()
            assertEquals(570L, err["code"])
            assertEquals(
                "journal mismatch at index 3: journal has select of entry 9, handler's coroutines await entries [1], [2]",
                err["message"],
            )
        }
    }

    @Test
    fun `a cancellation surfaces in the first waiting coroutine, once, and is replayed there`() {
        Transcript(Parallel(), "cancelBoth").use { t ->
            t.start()
            t.input(null)
            assertEquals(listOf("1 awakeable", "2 awakeable"), t.entries(2))
            t.cancel()
            assertEquals(listOf("3 select 1", "4 cancelled"), t.entries(2))
            t.expectNoFrame(200)
            t.completeWith(2, "\"v\"")
            t.expectOutput(5, "\"first 409 / v\"")
        }
        Transcript(Parallel(), "cancelBoth").use { t ->
            t.replay(
                listOf(
                    input(),
                    JournalEntry(1, EntryKind.AWAKEABLE),
                    JournalEntry(2, EntryKind.AWAKEABLE, result = EntryResult(json("\"v\""))),
                    JournalEntry(3, EntryKind.SELECT, winner = 1),
                    JournalEntry(4, EntryKind.CANCELLED),
                ),
                cancelled = true,
            )
            t.expectOutput(5, "\"first 409 / v\"")
        }
    }

    @Test
    fun `a cancellation while only run steps are awaited goes to the lowest one, journaled alone`() {
        val svc = Parallel(gated = setOf("a", "b"))
        Transcript(svc, "cancelRuns").use { t ->
            t.start()
            t.input(null)
            t.cancel()
            t.expectNoFrame(200) // `cancelled` (index 3) waits behind the two running blocks
            svc.release("b")
            svc.release("a")
            assertEquals(listOf("1 run a", "2 run b", "3 cancelled"), t.entries(3))
            t.ack(3)
            t.expectOutput(4, "\"a 409 / B\"")
        }
        Transcript(Parallel(), "cancelRuns").use { t ->
            t.replay(listOf(input(), run(1, "a"), run(2, "b"), JournalEntry(3, EntryKind.CANCELLED)), cancelled = true)
            t.expectOutput(4, "\"a 409 / B\"")
        }
    }

    @Test
    fun `a select right after a step resumed without a journaled decision is replayed at its own await`() {
        val awakeable = JournalEntry(1, EntryKind.AWAKEABLE)
        Transcript(Parallel(), "anyAfterRuns").use { t ->
            t.start()
            t.input(null)
            assertEquals(listOf("1 awakeable", "2 run x", "3 run y"), t.entries(3))
            t.completeWith(1, "\"v\"")
            t.ack(2)
            assertEquals(listOf("4 select 1"), t.entries(1))
            t.ack(3)
            t.expectOutput(5, "\"x won 0 Y\"")
        }
        val svc = Parallel()
        Transcript(svc, "anyAfterRuns").use { t ->
            val journal = listOf(
                input(),
                awakeable.copy(result = EntryResult(json("\"v\""))),
                run(2, "x"),
                run(3, "y"),
                JournalEntry(4, EntryKind.SELECT, winner = 1),
            )
            t.replay(journal)
            t.expectOutput(5, "\"x won 0 Y\"")
        }
        assertTrue(svc.executed.isEmpty())
    }

    @Test
    fun `a runAsync nobody awaits still ends before the output`() {
        val svc = Parallel(gated = setOf("bg"))
        Transcript(svc, "fireAndForget").use { t ->
            t.start()
            t.input(null)
            t.expectNoFrame(300)
            svc.release("bg")
            assertEquals(listOf("1 run bg"), t.entries(1))
            t.expectOutput(2, "\"started\"")
        }
    }

    @Test
    fun `no suspension while a run block executes or awaits its ACK`() {
        val svc = Parallel(gated = setOf("slow"))
        Transcript(svc, "slowThenAwakeable").use { t ->
            t.start(suspendAfterMs = 100)
            t.input(null)
            t.expectNoFrame(400) // the awakeable's entry waits behind the running block
            svc.release("slow")
            assertEquals(listOf("1 run slow", "2 awakeable"), t.entries(2))
            t.expectNoFrame(300)
            t.ack(2)
            assertEquals(listOf(2L), t.expectSuspend())
        }
    }

    @Test
    fun `a run block failing with another exception fails the attempt, retryable`() =
        Transcript(Parallel(), "failingAsync").use { t ->
            t.start()
            t.input(null)
            val err = t.expectError()
            assertEquals(
                listOf<Any?>(500L, true, "run 'bad' failed: IllegalStateException: nope"),
                listOf(err["code"], err["retryable"], err["message"]),
            )
        }

    @Test
    fun `context commands from inside a run block or off the handler's coroutines are refused at once`() {
        val cases = mapOf(
            "nestedRun" to "ctx.run was called inside the run block 'outer' of Parallel/nestedRun.",
            "asyncInsideRun" to "ctx.runAsync was called inside the run block 'outer' of Parallel/asyncInsideRun.",
            "randomInsideRun" to "ctx.random was called inside the run block 'outer' of Parallel/randomInsideRun.",
            "otherDispatcher" to "ctx.run was called on thread 'DefaultDispatcher-worker-",
            "otherThread" to "ctx.send was called on thread 'Thread-",
        )
        for ((handler, start) in cases) {
            val svc = Parallel()
            Transcript(svc, handler).use { t ->
                t.start()
                t.input(null)
                val err = t.expectError()
                val message = err["message"] as String
                assertEquals(listOf<Any?>(572L, false), listOf(err["code"], err["retryable"]), message)
                assertTrue(message.startsWith(start), "$handler: $message")
                val fix = if ("inside the run block" in message) "ctx.runAsync" else "coroutineScope"
                assertTrue(fix in message, "$handler: the message names the fix: $message")
                t.expectNoFrame(200)
            }
            assertTrue(svc.executed.isEmpty())
        }
    }
}
