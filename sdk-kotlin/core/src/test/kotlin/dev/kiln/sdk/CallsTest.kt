package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test

/** Typed call targets (reflection over callable references) and workflow definitions. */
class CallsTest {
    @Test
    fun `targets resolve names from annotations and are cached`() {
        val add = HandlerTargets.of(TestCounter::add)
        assertEquals("TestCounter/add", add.qualifiedName)
        assertEquals(ServiceKind.VIRTUAL_OBJECT, add.serviceKind)
        assertEquals("5", add.encodeInput(5L).decodeToString())
        assertSame(add, HandlerTargets.of(TestCounter::add))

        val three = HandlerTargets.of(TestSteps::three)
        assertEquals("Stepper/threeStep", three.qualifiedName)
        assertEquals(ServiceKind.SERVICE, three.serviceKind)

        val nothing = HandlerTargets.of(TestSteps::nothing)
        assertNull(nothing.outputSerializer)
        assertEquals(0, nothing.encodeInput(null).size)
        assertEquals(Unit, decodeOutput<Unit>(nothing, ByteArray(0)))

        val run = HandlerTargets.of(TestSignup::run)
        assertEquals("TestSignup/run", run.qualifiedName)
        assertEquals(ServiceKind.WORKFLOW, run.serviceKind)
    }

    @Test
    fun `keys are required exactly for keyed targets`() {
        assertThrows(IllegalArgumentException::class.java) { HandlerTargets.of(TestSteps::three).checkKey("k") }
        assertThrows(IllegalArgumentException::class.java) { HandlerTargets.of(TestCounter::add).checkKey(null) }
        HandlerTargets.of(TestSteps::three).checkKey(null)
        HandlerTargets.of(TestCounter::add).checkKey("k")
    }

    @Test
    fun `bound references and unannotated functions are refused`() {
        val steps = TestSteps()
        assertThrows(IllegalArgumentException::class.java) { HandlerTargets.of(steps::three) }
        assertThrows(IllegalArgumentException::class.java) { HandlerTargets.of(NotAHandler::plain) }
    }

    class NotAHandler {
        suspend fun plain(ctx: Context, x: String): String = x
    }

    @Workflow
    class NoRun {
        @Shared
        suspend fun get(ctx: SharedWorkflowContext): String = "x"
    }

    @VirtualObject
    class RunInObject {
        @Workflow
        suspend fun run(ctx: ObjectContext): String = "x"
    }

    @Workflow
    class SharedWantsWorkflowContext {
        @Workflow
        suspend fun run(ctx: WorkflowContext): String = "x"

        @Shared
        suspend fun peek(ctx: WorkflowContext): String = "x"
    }

    @Test
    fun `workflow definitions are validated`() {
        assertThrows(IllegalArgumentException::class.java) { defineService(NoRun()) }
        assertThrows(IllegalArgumentException::class.java) { defineService(RunInObject()) }
        assertThrows(IllegalArgumentException::class.java) { defineService(SharedWantsWorkflowContext()) }
        val wf = defineService(TestSignup())
        assertEquals(ServiceKind.WORKFLOW, wf.kind)
        assertEquals(HandlerKind.WORKFLOW, wf.handlers["run"]!!.kind)
        assertEquals(false, wf.handlers["run"]!!.shared)
        assertEquals(true, wf.handlers["status"]!!.shared)
    }

    @Test
    fun `awakeable ids`() {
        assertEquals(
            "awk_0123456789abcdef0123456789abcdef0000000a",
            awakeableId("inv_0123456789abcdef0123456789abcdef", 10),
        )
    }
}
