package dev.kiln.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Typed call targets (reflection over callable references) and workflow definitions. */
class CallsTest {
    @Test
    fun `targets resolve names from annotations and are cached`() {
        val add = HandlerTargets.of(TestCounter::add)
        assertEquals("TestCounter/add", add.qualifiedName)
        assertEquals(ServiceKind.VIRTUAL_OBJECT, add.serviceKind)
        assertEquals("5", add.encodeInput(KilnJson, 5L).decodeToString())
        assertSame(add, HandlerTargets.of(TestCounter::add))

        val three = HandlerTargets.of(TestSteps::three)
        assertEquals("Stepper/threeStep", three.qualifiedName)
        assertEquals(ServiceKind.SERVICE, three.serviceKind)

        val nothing = HandlerTargets.of(TestSteps::nothing)
        assertNull(nothing.codec(KilnJson).output)
        assertEquals(0, nothing.encodeInput(KilnJson, null).size)
        assertEquals(Unit, nothing.decodeOutput<Unit>(KilnJson, ByteArray(0)))

        val run = HandlerTargets.of(TestSignup::run)
        assertEquals("TestSignup/run", run.qualifiedName)
        assertEquals(ServiceKind.WORKFLOW, run.serviceKind)
    }

    @Test
    fun `keys are required exactly for keyed targets, else a terminal 400`() {
        val withKey = assertThrows(TerminalException::class.java) { HandlerTargets.of(TestSteps::three).checkKey("k") }
        assertEquals(400, withKey.code)
        assertEquals(
            "Stepper/threeStep is a stateless service: call it without a key, as ctx.call(TestSteps::three, input)",
            withKey.message,
        )
        val without = assertThrows(TerminalException::class.java) { HandlerTargets.of(TestCounter::add).checkKey(null) }
        assertEquals(400, without.code)
        assertEquals(
            "TestCounter/add is a virtual_object: pass the key of the instance to call first, as ctx.call(TestCounter::add, key, input)",
            without.message,
        )
        HandlerTargets.of(TestSteps::three).checkKey(null)
        HandlerTargets.of(TestCounter::add).checkKey("k")
    }

    @Test
    fun `bound references, unannotated classes and functions are a terminal 400 naming the fix`() {
        val steps = TestSteps()
        val bound = assertThrows(TerminalException::class.java) { HandlerTargets.of(steps::three) }
        assertEquals(400, bound.code)
        assertTrue("use an unbound reference (TestSteps::three)" in bound.message!!, bound.message)
        val plainClass = assertThrows(TerminalException::class.java) { HandlerTargets.of(NotAService::plain) }
        assertEquals(400, plainClass.code)
        assertTrue("annotate the class" in plainClass.message!!, plainClass.message)
        val plainFunction = assertThrows(TerminalException::class.java) { HandlerTargets.of(NotAHandler::plain) }
        assertTrue(
            "not annotated @Handler, @Shared or @Workflow; annotate it" in plainFunction.message!!,
            plainFunction.message,
        )
        val wrongContext = assertThrows(TerminalException::class.java) { HandlerTargets.of(ObjectTakingContext::h) }
        assertTrue("not Context (which is for stateless services)" in wrongContext.message!!, wrongContext.message)
    }

    class NotAService {
        @Handler
        suspend fun plain(ctx: Context, x: String): String = x
    }

    @Service
    class NotAHandler {
        suspend fun plain(ctx: Context, x: String): String = x
    }

    @VirtualObject
    class ObjectTakingContext {
        @Handler
        suspend fun h(ctx: Context, x: String): String = x
    }

    @Test
    fun `object and workflow handlers must take a keyed context, service handlers Context`() {
        val e = assertThrows(IllegalArgumentException::class.java) { defineService(ObjectTakingContext()) }
        assertTrue("not Context (which is for stateless services)" in e.message!!, e.message)
        assertThrows(IllegalArgumentException::class.java) { defineService(ServiceTakingObjectContext()) }
    }

    @Service
    class ServiceTakingObjectContext {
        @Handler
        suspend fun h(ctx: ObjectContext): String = "x"
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
