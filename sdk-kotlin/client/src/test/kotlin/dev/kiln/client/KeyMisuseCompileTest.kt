package dev.kiln.client

import org.jetbrains.kotlin.cli.common.ExitCode
import org.jetbrains.kotlin.cli.jvm.K2JVMCompiler
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.ByteArrayOutputStream
import java.io.PrintStream
import java.nio.file.Files
import java.nio.file.Path

/**
 * Object-vs-service key misuse does not compile: snippets using the test services are compiled
 * with the Kotlin compiler against the client (two compilations: every valid form, then every
 * misuse, each of which must fail on its own line with the deprecation's message).
 */
class KeyMisuseCompileTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `every valid form compiles`() {
        val (code, messages) = compile(
            """
            suspend fun valid(c: KilnClient) {
                val a: Long = c.call(Tally::add, "k", 1L)
                val b: Long = c.call(Tally::get, "k")
                val g: Greeting = c.call(Greetings::greet, Greeting("x"))
                val n: Long = c.call(Greetings::now)
                val s1: SentInvocation<Long> = c.send(Tally::add, "k", 1L, delay = 1.seconds)
                val s2: SentInvocation<Unit> = c.send(Tally::reset, "k")
                val s3: SentInvocation<Greeting> = c.send(Greetings::greet, Greeting("x"))
                val s4: SentInvocation<Long> = c.send(Greetings::now, options = InvocationOptions("i"))
                val x: Long = c.blocking.call(Tally::add, "k", 1L, InvocationOptions(idempotencyKey = "i"))
                val y: Long = c.attach(s1)
                println(listOf(a, b, g, n, s1, s2, s3, s4, x, y))
            }
            """,
        )
        assertEquals(ExitCode.OK, code, messages)
    }

    @Test
    fun `a key for a service and none for an object do not compile`() {
        val misuses = listOf(
            "c.call(Greetings::greet, \"key\", Greeting(\"x\"))" to "stateless @Service",
            "c.call(Greetings::now, \"key\")" to "stateless @Service",
            "c.send(Greetings::greet, \"key\", Greeting(\"x\"))" to "stateless @Service",
            "c.send(Greetings::now, \"key\")" to "stateless @Service",
            "c.call(Tally::add, 1L)" to "@VirtualObject or @Workflow",
            "c.call(Tally::get)" to "@VirtualObject or @Workflow",
            "c.send(Tally::add, 1L)" to "@VirtualObject or @Workflow",
            "c.send(Tally::reset)" to "@VirtualObject or @Workflow",
            "c.blocking.call(Greetings::now, \"key\")" to "stateless @Service",
            "c.blocking.send(Tally::add, 1L, 2.seconds)" to "@VirtualObject or @Workflow",
        )
        val body = misuses.joinToString("\n") { "    ${it.first}" }
        val (code, messages) = compile("suspend fun misuse(c: KilnClient) {\n$body\n}")
        assertEquals(ExitCode.COMPILATION_ERROR, code, messages)
        val errors = messages.lines().filter { ": error: " in it }
        misuses.forEachIndexed { i, (snippet, expected) ->
            val line = FIRST_LINE + 1 + i
            val own = errors.filter { it.contains("Snippet.kt:$line:") }
            assertEquals(1, own.size, "$snippet: expected one error on line $line; got:\n$messages")
            assertTrue(expected in own.single(), "$snippet: expected '$expected' in ${own.single()}")
        }
        assertEquals(misuses.size, errors.size, messages)
    }

    private fun compile(code: String): Pair<ExitCode, String> {
        val source = dir.resolve("Snippet.kt")
        Files.writeString(source, HEADER + code.trimIndent() + "\n")
        val classpath = System.getProperty("surefire.test.class.path") ?: System.getProperty("java.class.path")
        val out = ByteArrayOutputStream()
        val exit = K2JVMCompiler().exec(
            PrintStream(out),
            source.toString(),
            "-d", dir.resolve("out").toString(),
            "-classpath", classpath,
            "-no-stdlib",
            "-no-reflect",
            "-jvm-target", "17",
        )
        return exit to out.toString()
    }

    private companion object {
        const val HEADER = "package dev.kiln.client\n\nimport kotlin.time.Duration.Companion.seconds\n\n"

        /** The line of the snippet's first line (after [HEADER]). */
        val FIRST_LINE = HEADER.count { it == '\n' } + 1
    }
}
