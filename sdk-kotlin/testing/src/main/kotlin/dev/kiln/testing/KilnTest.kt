// The annotations a test class uses: @KilnTest on the class, @BindService on service fields.
package dev.kiln.testing

import org.junit.jupiter.api.extension.ExtendWith
import java.lang.annotation.Inherited
import kotlin.reflect.KClass

/**
 * Runs the annotated JUnit 5 test class against a real Kiln node, started once for the class (see
 * [KilnExtension]):
 *
 * ```
 * @KilnTest(services = [Counter::class])
 * class CounterTest {
 *     @Test
 *     fun adds(client: KilnClient) = runBlocking {
 *         assertEquals(5L, client.call(Counter::add, "k", 5L))
 *     }
 * }
 * ```
 *
 * Before the first test, the extension starts the `kiln` binary (see [KilnBinary]) on free ports
 * with a temporary data directory, serves [services] (instantiated with their no-argument
 * constructors) and every [BindService] field from this JVM with a `KilnEndpoint` on a free port,
 * and registers that endpoint. Test methods and constructors get a [dev.kiln.client.KilnClient],
 * a [dev.kiln.client.BlockingKilnClient] or the [KilnNode] (URLs, log file) as parameters. After
 * the last test it stops kiln and deletes the data directory. kiln's output goes to a log file
 * ([KilnNode.defaultLogDir]) whose path is printed when a test fails. `@Nested` classes share the
 * node of their outermost class.
 *
 * @property services service classes to instantiate and serve.
 * @property kilnArgs extra flags for `kiln serve`, e.g. `["--retry-max-attempts", "3"]`.
 * @property startupTimeoutSeconds how long kiln may take to answer its health check.
 */
@Target(AnnotationTarget.CLASS)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
@Inherited
@ExtendWith(KilnExtension::class)
public annotation class KilnTest(
    val services: Array<KClass<*>> = [],
    val kilnArgs: Array<String> = [],
    val startupTimeoutSeconds: Long = 30,
)

/**
 * Marks a field of a [KilnTest] class whose value (an instance of an annotated service class) is
 * served and registered with the node, for services that need constructor arguments:
 *
 * ```
 * companion object {
 *     @BindService val steps = Steps(log = tempFile)
 * }
 * ```
 *
 * The field must be static (in Kotlin: a property of the `companion object`, or `@JvmField` there),
 * or an instance field of a class annotated `@TestInstance(PER_CLASS)`: the node starts before the
 * first test and serves what these fields hold then.
 */
@Target(AnnotationTarget.FIELD)
@Retention(AnnotationRetention.RUNTIME)
@MustBeDocumented
public annotation class BindService
