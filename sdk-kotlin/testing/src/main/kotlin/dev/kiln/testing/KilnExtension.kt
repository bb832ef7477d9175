// The JUnit 5 extension behind @KilnTest: one KilnNode per test class, parameters, log on failure.
package dev.kiln.testing

import dev.kiln.client.BlockingKilnClient
import dev.kiln.client.KilnClient
import org.junit.jupiter.api.extension.AfterAllCallback
import org.junit.jupiter.api.extension.BeforeAllCallback
import org.junit.jupiter.api.extension.ExtensionConfigurationException
import org.junit.jupiter.api.extension.ExtensionContext
import org.junit.jupiter.api.extension.ParameterContext
import org.junit.jupiter.api.extension.ParameterResolver
import org.junit.jupiter.api.extension.TestWatcher
import org.junit.platform.commons.support.AnnotationSupport
import java.lang.reflect.Field
import java.lang.reflect.Modifier
import java.nio.file.Files
import kotlin.reflect.full.createInstance
import kotlin.time.Duration.Companion.seconds

/**
 * The extension [KilnTest] registers. Once per (outermost) test class it starts a [KilnNode] with
 * the class's services, resolves test method and constructor parameters of the types
 * [KilnClient], [BlockingKilnClient] and [KilnNode], prints the path of kiln's log when a test
 * fails, and closes the node after the class's last test.
 *
 * Usable on its own, `@ExtendWith(KilnExtension::class)`: it then serves only [BindService] fields.
 */
public class KilnExtension :
    BeforeAllCallback,
    AfterAllCallback,
    ParameterResolver,
    TestWatcher {

    /** Starts the node for the outermost test class (once; nested classes share it). */
    override fun beforeAll(context: ExtensionContext) {
        node(context)
    }

    /** Closes the node when the class that started it is done. */
    override fun afterAll(context: ExtensionContext) {
        val held = context.getStore(NAMESPACE).get(NODE, Held::class.java) ?: return
        if (held.owner == context.uniqueId) {
            context.getStore(NAMESPACE).remove(NODE)
            held.node.close()
        }
    }

    /** Supports parameters of type [KilnClient], [BlockingKilnClient] and [KilnNode]. */
    override fun supportsParameter(parameterContext: ParameterContext, extensionContext: ExtensionContext): Boolean =
        parameterContext.parameter.type in RESOLVED

    /** The node's [KilnNode.client], its blocking face, or the node itself. */
    override fun resolveParameter(parameterContext: ParameterContext, extensionContext: ExtensionContext): Any {
        val node = node(extensionContext)
        return when (parameterContext.parameter.type) {
            KilnClient::class.java -> node.client
            BlockingKilnClient::class.java -> node.client.blocking
            else -> node
        }
    }

    /** Prints where kiln's log is. */
    override fun testFailed(context: ExtensionContext, cause: Throwable?) {
        val held = context.getStore(NAMESPACE).get(NODE, Held::class.java) ?: return
        System.err.println("[kiln-testing] ${context.displayName} failed; kiln's log: ${held.node.logFile}")
    }

    private class Held(val owner: String, val node: KilnNode)

    /** The node of [context]'s outermost test class, started on first use. */
    private fun node(context: ExtensionContext): KilnNode {
        context.getStore(NAMESPACE).get(NODE, Held::class.java)?.let { return it.node }
        val root = outermostClassContext(context)
        val held = root.getStore(NAMESPACE).getOrComputeIfAbsent(NODE, {
            Held(root.uniqueId, start(root))
        }, Held::class.java)
        return held.node
    }

    private fun outermostClassContext(context: ExtensionContext): ExtensionContext {
        var c = context
        while (true) {
            val parent = c.parent.orElse(null)
            if (parent == null || !parent.testClass.isPresent) return c
            c = parent
        }
    }

    private fun start(context: ExtensionContext): KilnNode {
        val testClass = context.requiredTestClass
        val annotation = AnnotationSupport.findAnnotation(testClass, KilnTest::class.java).orElse(null)
        val services = (annotation?.services.orEmpty()).map { cls ->
            try {
                cls.createInstance()
            } catch (e: Exception) {
                throw ExtensionConfigurationException(
                    "@KilnTest(services = [${cls.simpleName}::class]): ${cls.qualifiedName} needs a constructor " +
                        "without arguments (or with defaults for all); serve an instance from a @BindService field instead",
                    e,
                )
            }
        } + boundFields(context)
        val log = KilnNode.defaultLogDir().resolve("${testClass.name}.log")
        Files.createDirectories(log.parent)
        Files.deleteIfExists(log)
        Files.createFile(log)
        return KilnNode.start(
            services = services,
            kilnArgs = annotation?.kilnArgs?.toList().orEmpty(),
            logFile = log,
            startupTimeout = (annotation?.startupTimeoutSeconds ?: DEFAULT_STARTUP_SECONDS).seconds,
        )
    }

    /** The values of the [BindService] fields of the test class and its superclasses. */
    private fun boundFields(context: ExtensionContext): List<Any> {
        val testClass = context.requiredTestClass
        val fields = generateSequence<Class<*>>(testClass) { it.superclass }
            .flatMap { it.declaredFields.asSequence() }
            .filter { it.isAnnotationPresent(BindService::class.java) }
            .toList()
        val instance = context.testInstance.orElse(null)
        return fields.map { field ->
            val static = Modifier.isStatic(field.modifiers)
            if (!static && instance == null) {
                throw ExtensionConfigurationException(
                    "@BindService ${testClass.simpleName}.${field.name} is an instance field, but the node starts " +
                        "before any instance exists: make it a property of the companion object (static in Java), " +
                        "or annotate the class @TestInstance(TestInstance.Lifecycle.PER_CLASS)",
                )
            }
            valueOf(field, if (static) null else instance)
        }
    }

    private fun valueOf(field: Field, instance: Any?): Any {
        field.isAccessible = true
        return field.get(instance)
            ?: throw ExtensionConfigurationException(
                "@BindService ${field.declaringClass.simpleName}.${field.name} is null",
            )
    }

    private companion object {
        val NAMESPACE: ExtensionContext.Namespace = ExtensionContext.Namespace.create(KilnExtension::class.java)
        const val NODE = "node"
        const val DEFAULT_STARTUP_SECONDS = 30L
        val RESOLVED = setOf(KilnClient::class.java, BlockingKilnClient::class.java, KilnNode::class.java)
    }
}
