package dev.kiln.sdk

import kotlinx.coroutines.CoroutineScope
import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import org.jetbrains.kotlin.cli.common.ExitCode
import org.jetbrains.kotlin.cli.common.messages.CompilerMessageSeverity
import org.jetbrains.kotlin.cli.common.messages.CompilerMessageSourceLocation
import org.jetbrains.kotlin.cli.common.messages.MessageCollector
import org.jetbrains.kotlin.cli.jvm.K2JVMCompiler
import org.jetbrains.kotlin.config.Services
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.io.TempDir
import org.slf4j.Logger
import java.io.File
import java.nio.file.Path

/**
 * The compile test of typed calls: snippets are compiled (once, in one compiler run) against the
 * SDK's classes; the right forms must compile, each misuse must fail with the message of its
 * deprecated-at-ERROR overload (TypedCalls.kt).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class TypedCallCompileTest {
    /** Compiler messages by snippet file name (errors only). */
    private lateinit var errors: Map<String, List<String>>
    private var exitCode: ExitCode? = null

    private val defs = """
        package snippets
        import dev.kiln.sdk.*

        @Service
        class Transfer {
            @Handler suspend fun transfer(ctx: Context, req: String): String = req
            @Handler suspend fun ping(ctx: Context): String = "pong"
        }

        @VirtualObject
        class BankAccount {
            @Handler suspend fun deposit(ctx: ObjectContext, amount: Long): Long = amount
            @Shared suspend fun balance(ctx: SharedObjectContext): Long = 0L
            @Handler suspend fun close(ctx: ObjectContext) {}
        }

        @Workflow
        class Signup {
            @Workflow suspend fun run(ctx: WorkflowContext, email: String): String = email
            @Shared suspend fun confirm(ctx: SharedWorkflowContext, code: String) {}
            @Shared suspend fun status(ctx: SharedWorkflowContext): String = "pending"
        }
    """.trimIndent()

    /** Every right form: must compile without errors. */
    private val valid = """
        package snippets
        import dev.kiln.sdk.*
        import kotlin.time.Duration.Companion.seconds

        suspend fun valid(ctx: Context): String {
            val a: String = ctx.call(Transfer::transfer, "req").await()
            val b: String = ctx.call(Transfer::ping).await()
            val c: Long = ctx.call(BankAccount::deposit, "acct", 5L).await()
            val d: Long = ctx.call(BankAccount::balance, "acct").await()
            ctx.call(BankAccount::close, "acct").await()
            val e: String = ctx.call(Signup::run, "user", "a@b.c").await()
            val f: String = ctx.call(Signup::status, "user").await()
            ctx.send(Transfer::transfer, "req")
            ctx.send(Transfer::transfer, "req", delay = 5.seconds)
            ctx.send(Transfer::ping)
            ctx.send(Transfer::ping, 5.seconds)
            ctx.send(BankAccount::deposit, "acct", 5L)
            ctx.send(BankAccount::deposit, "acct", 5L, delay = 5.seconds)
            ctx.send(BankAccount::balance, "acct")
            ctx.send(BankAccount::close, "acct", delay = 5.seconds)
            ctx.send(Signup::confirm, "user", "1234")
            return a + b + c + d + e + f
        }

        // Calls from keyed contexts work the same way.
        suspend fun fromObject(ctx: ObjectContext): Long = ctx.call(BankAccount::deposit, ctx.key, 1L).await()
    """.trimIndent()

    /** One misuse per file, with (a part of) the compiler's message. */
    private val misuses = mapOf(
        "ServiceCallWithKey" to ("ctx.call(Transfer::transfer, \"key\", \"req\")" to NO_KEY),
        "ServiceCallWithKeyNoInput" to ("ctx.call(Transfer::ping, \"key\")" to NO_KEY),
        "ServiceSendWithKey" to ("ctx.send(Transfer::transfer, \"key\", \"req\")" to NO_KEY),
        "ServiceSendWithKeyNoInput" to ("ctx.send(Transfer::ping, \"key\")" to NO_KEY),
        "ObjectCallWithoutKey" to ("ctx.call(BankAccount::deposit, 5L)" to KEY_FIRST),
        "ObjectCallWithoutKeyNoInput" to ("ctx.call(BankAccount::balance)" to KEY_FIRST),
        "ObjectSendWithoutKey" to ("ctx.send(BankAccount::deposit, 5L)" to KEY_FIRST),
        "ObjectSendWithoutKeyNoInput" to ("ctx.send(BankAccount::close)" to KEY_FIRST),
        "WorkflowCallWithoutKey" to ("ctx.call(Signup::run, \"a@b.c\")" to KEY_FIRST),
        "WorkflowSendWithoutKey" to ("ctx.send(Signup::confirm, \"1234\")" to KEY_FIRST),
        // Not a key mistake: the input's type is checked as well.
        "WrongInputType" to ("ctx.call(BankAccount::deposit, \"acct\", \"five\")" to null),
        "WrongServiceInputType" to ("ctx.call(Transfer::transfer, 5)" to null),
        "WrongOutputType" to ("val n: Int = ctx.call(Transfer::transfer, \"x\").await()" to null),
    )

    @BeforeAll
    fun compile(@TempDir dir: Path) {
        val src = dir.resolve("src").toFile().apply { mkdirs() }
        File(src, "Defs.kt").writeText(defs)
        File(src, "Valid.kt").writeText(valid)
        for ((name, snippet) in misuses) {
            File(src, "$name.kt").writeText(
                "package snippets\nimport dev.kiln.sdk.*\n\nsuspend fun misuse$name(ctx: Context) {\n    ${snippet.first}\n}\n",
            )
        }
        val found = HashMap<String, MutableList<String>>()
        val collector = object : MessageCollector {
            private var failed = false
            override fun clear() {
                found.clear()
            }

            override fun hasErrors(): Boolean = failed

            override fun report(
                severity: CompilerMessageSeverity,
                message: String,
                location: CompilerMessageSourceLocation?,
            ) {
                if (!severity.isError) return
                failed = true
                val file = location?.path?.let { File(it).name } ?: "<no file>"
                found.getOrPut(file) { ArrayList() }.add(message)
            }
        }
        val compiler = K2JVMCompiler()
        val args = compiler.createArguments()
        compiler.parseArguments(
            arrayOf(
                "-d", dir.resolve("out").toString(),
                "-classpath", sdkClassPath(),
                "-no-stdlib", "-no-reflect",
                "-jvm-target", "17",
                "-module-name", "snippets",
                src.absolutePath,
            ),
            args,
        )
        exitCode = compiler.exec(collector, Services.EMPTY, args)
        errors = found
    }

    /** Where the classes the snippets need come from: the SDK and the libraries of its API. */
    private fun sdkClassPath(): String = listOf(
        Context::class.java, // target/classes
        Unit::class.java, // kotlin-stdlib
        KSerializer::class.java, // kotlinx-serialization-core
        Json::class.java, // kotlinx-serialization-json
        CoroutineScope::class.java, // kotlinx-coroutines-core
        Logger::class.java, // slf4j-api
    ).joinToString(File.pathSeparator) { File(it.protectionDomain.codeSource.location.toURI()).path }

    @Test
    fun `the right forms of typed calls and sends compile`() {
        assertEquals(null, errors["Defs.kt"], "errors in the snippets' services")
        assertEquals(null, errors["Valid.kt"], "errors in the right forms")
        assertEquals(
            emptySet<String>(),
            errors.keys - misuses.keys.map {
                "$it.kt"
            }.toSet(),
            "errors elsewhere: $errors",
        )
    }

    @Test
    fun `a key for a stateless service does not compile`() {
        for ((name, m) in misuses) if (m.second == NO_KEY) assertMisuse(name, NO_KEY)
    }

    @Test
    fun `a virtual object or workflow handler without a key does not compile`() {
        for ((name, m) in misuses) if (m.second == KEY_FIRST) assertMisuse(name, KEY_FIRST)
    }

    @Test
    fun `wrong input and output types do not compile`() {
        for (name in listOf("WrongInputType", "WrongServiceInputType", "WrongOutputType")) {
            assertTrue(!errors["$name.kt"].isNullOrEmpty(), "$name.kt (${misuses[name]!!.first}) compiled, it must not")
        }
        assertEquals(ExitCode.COMPILATION_ERROR, exitCode)
    }

    private fun assertMisuse(name: String, expected: String) {
        val messages = errors["$name.kt"]
        assertTrue(!messages.isNullOrEmpty(), "$name.kt (${misuses[name]!!.first}) compiled, it must not")
        assertTrue(messages!!.any { expected in it }, "$name.kt: expected an error saying '$expected', got $messages")
    }

    private companion object {
        const val NO_KEY = "stateless @Service, which has no key: call it without a key"
        const val KEY_FIRST = "belongs to a @VirtualObject or @Workflow: pass the key first"
    }
}
