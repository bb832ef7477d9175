package dev.kiln.client

import dev.kiln.sdk.TerminalException
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

/** The client's requests and its reading of the answers, against a fake ingress (no runtime). */
class KilnClientTest {
    private val ingress = FakeIngress()
    private val client = KilnClient(ingress.url + "/", headers = mapOf("x-team" to "core"))

    @AfterEach
    fun stop() = ingress.close()

    @Test
    fun `a keyed call posts JSON to the object's key and decodes the output`() = runBlocking {
        ingress.reply = { Reply(200, "7") }
        val total: Long = client.call(Tally::add, "a b/c", 5L)
        assertEquals(7L, total)
        with(ingress.last) {
            assertEquals("POST", method)
            assertEquals("/Tally/a%20b%2Fc/add", target)
            assertEquals("5", body)
            assertEquals("application/json", headers["content-type"])
            assertEquals("core", headers["x-team"])
            assertNull(headers["idempotency-key"])
        }
    }

    @Test
    fun `a handler without input sends an empty body and a Unit output is an empty body`() = runBlocking {
        ingress.reply = { Reply(200, "41") }
        assertEquals(41L, client.call(Tally::get, "k"))
        assertEquals("/Tally/k/get", ingress.last.target)
        assertEquals("", ingress.last.body)
        ingress.reply = { Reply(200) }
        assertEquals(Unit, client.call(Tally::reset, "k"))
    }

    @Test
    fun `a service call has no key and uses the annotated names and serializable classes`() = runBlocking {
        ingress.reply = { it -> Reply(200, it.body) }
        val back: Greeting = client.call(Greetings::greet, Greeting("ada", 2))
        assertEquals(Greeting("ada", 2), back)
        assertEquals("/Greeter/hi", ingress.last.target)
        assertEquals("""{"name":"ada","times":2}""", ingress.last.body)
        ingress.reply = { Reply(200, "12") }
        assertEquals(12L, client.call(Greetings::now))
        assertEquals("/Greeter/now", ingress.last.target)
    }

    @Test
    fun `a nullable output may be an empty body`() = runBlocking {
        ingress.reply = { Reply(200) }
        assertNull(client.call(Greetings::maybe, null))
        assertEquals("null", ingress.last.body)
    }

    @Test
    fun `options add the idempotency key and headers`() = runBlocking {
        ingress.reply = { Reply(200, "1") }
        client.call(
            Tally::add,
            "k",
            1L,
            InvocationOptions(idempotencyKey = "order-7", headers = mapOf("x-team" to "ops")),
        )
        assertEquals("order-7", ingress.last.headers["idempotency-key"])
        assertEquals("ops", ingress.last.headers["x-team"])
    }

    @Test
    fun `send returns the invocation id and passes the delay`() = runBlocking {
        ingress.reply = { Reply(202, """{"invocationId":"inv_0123","status":"Accepted"}""") }
        val sent = client.send(Tally::add, "k", 2L, delay = 1500.milliseconds)
        assertEquals("inv_0123", sent.invocationId)
        assertFalse(sent.alreadyAccepted)
        assertEquals("/Tally/k/add/send?delay=1500ms", ingress.last.target)
        assertEquals("2", ingress.last.body)

        ingress.reply = { Reply(202, """{"invocationId":"inv_0123","status":"PreviouslyAccepted"}""") }
        val again = client.send(Greetings::now, options = InvocationOptions(idempotencyKey = "x"))
        assertTrue(again.alreadyAccepted)
        assertEquals("/Greeter/now/send", ingress.last.target)
        assertThrows<IllegalArgumentException> { client.send(Tally::reset, "k", delay = (-1).seconds) }
        Unit
    }

    @Test
    fun `attach and output read an invocation by id, typed by the send`() = runBlocking {
        ingress.reply = { Reply(202, """{"invocationId":"inv_9","status":"Accepted"}""") }
        val sent = client.send(Tally::add, "k", 3L)
        ingress.reply = { Reply(200, "3", mapOf("x-kiln-invocation-id" to "inv_9")) }
        val total: Long = client.attach(sent)
        assertEquals(3L, total)
        assertEquals("GET", ingress.last.method)
        assertEquals("/invocations/inv_9/attach", ingress.last.target)
        assertEquals(InvocationOutput.Ready(3L), client.output(sent))
        assertEquals("/invocations/inv_9/output", ingress.last.target)
        ingress.reply = { Reply(470, """{"code":470,"message":"not completed yet"}""") }
        assertEquals(InvocationOutput.Pending, client.output<Long>("inv_9"))
        ingress.reply = { Reply(200, "\"s\"") }
        assertEquals("s", client.attach<String>("inv_9"))
    }

    @Test
    fun `an invocation's failure is a TerminalException with its code and message`() {
        ingress.reply = {
            Reply(422, """{"code":422,"message":"no such item"}""", mapOf("x-kiln-invocation-id" to "inv_1"))
        }
        val e = assertThrows<TerminalException> { runBlocking { client.call(Tally::add, "k", 1L) } }
        assertEquals(422, e.code)
        assertEquals("no such item", e.message)
        ingress.reply = {
            Reply(500, """{"code":7,"message":"app code"}""", mapOf("x-kiln-invocation-id" to "inv_1"))
        }
        assertEquals(7, assertThrows<TerminalException> { client.blocking.attach<Long>("inv_1") }.code)
    }

    @Test
    fun `a refusal by the ingress is a KilnRequestException`() {
        ingress.reply = { Reply(404, """{"code":404,"message":"service \"Tally\" not found"}""") }
        val e = assertThrows<KilnRequestException> { runBlocking { client.call(Tally::add, "k", 1L) } }
        assertEquals(404, e.status)
        assertEquals(404, e.code)
        assertFalse(e.retryable)
        assertTrue("service \"Tally\" not found" in e.message!!, e.message)
        ingress.reply = { Reply(503, "<html>busy</html>") }
        val busy = assertThrows<KilnRequestException> { client.blocking.call(Tally::get, "k") }
        assertTrue(busy.retryable)
        assertNull(busy.code)
        assertTrue("busy" in busy.message!!, busy.message)
    }

    @Test
    fun `the blocking client sends the same requests`() {
        ingress.reply = { Reply(200, "9") }
        assertEquals(9L, client.blocking.call(Tally::add, "k", 9L))
        assertEquals("/Tally/k/add", ingress.last.target)
        ingress.reply = { Reply(202, """{"invocationId":"inv_2","status":"Accepted"}""") }
        val sent = client.blocking.send(Greetings::greet, Greeting("x"), delay = 2.seconds)
        assertEquals("/Greeter/hi/send?delay=2000ms", ingress.last.target)
        ingress.reply = { Reply(200, """{"name":"x"}""") }
        assertEquals(Greeting("x"), client.blocking.attach(sent))
    }

    @Test
    fun `misused targets are refused before any request`() {
        val notAnnotated = assertThrows<IllegalArgumentException> { client.blocking.call(NotAService::echo, "x") }
        assertTrue("not annotated @Service" in notAnnotated.message!!, notAnnotated.message)
        val unkeyed = assertThrows<IllegalArgumentException> { client.blocking.call(Tally::plain, 1) }
        assertTrue("pass the key" in unkeyed.message!!, unkeyed.message)
        assertTrue(ingress.received.isEmpty())
        assertThrows<IllegalArgumentException> { KilnClient("localhost:8080") }
        Unit
    }
}
