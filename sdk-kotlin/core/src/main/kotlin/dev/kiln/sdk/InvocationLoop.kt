// The single-threaded, deterministic dispatcher of one invocation attempt.
package dev.kiln.sdk

import kotlinx.coroutines.CoroutineDispatcher
import java.util.concurrent.TimeUnit
import java.util.concurrent.locks.ReentrantLock
import kotlin.concurrent.withLock
import kotlin.coroutines.CoroutineContext
import kotlin.coroutines.EmptyCoroutineContext

/**
 * Runs every coroutine of one attempt's handler on one thread, one task at a time, first
 * dispatched first run. Tasks dispatched by the handler's own coroutines (an `async` started, a
 * `Deferred` completed, a `Mutex` released) therefore run in program order, the same on every
 * replay. Results from the runtime never resume a coroutine directly: when no task is left, [run]
 * calls its `idle` callback, which resumes one await at a time in an order the journal fixes.
 */
internal class InvocationLoop(
    /** Where tasks go once the loop has stopped, so that leftover coroutines can still end. */
    private val fallback: CoroutineDispatcher,
) : CoroutineDispatcher() {
    private val lock = ReentrantLock()
    private val wake = lock.newCondition()
    private val tasks = ArrayDeque<Runnable>()
    private var signalled = false
    private var stopped = false

    @Volatile private var thread: Thread? = null

    /** True on the thread running the loop: only there may context commands be issued. */
    val onLoopThread: Boolean get() = Thread.currentThread() === thread

    override fun dispatch(context: CoroutineContext, block: Runnable) {
        lock.withLock {
            if (!stopped) {
                tasks.addLast(block)
                wake.signal()
                return
            }
        }
        fallback.dispatch(context, block)
    }

    /** Wakes an idle [run]: something its `idle` callback looks at has changed (an ACK, a result). */
    fun signal() {
        lock.withLock {
            signalled = true
            wake.signal()
        }
    }

    /**
     * Runs tasks on the calling thread until [done] holds while no task is queued. With no task
     * queued, calls [idle]: it returns 0 after making progress (e.g. resuming an await), otherwise
     * how many ms to wait at most for a task or a [signal].
     */
    fun run(done: () -> Boolean, idle: () -> Long) {
        thread = Thread.currentThread()
        try {
            while (true) {
                val task = lock.withLock { tasks.removeFirstOrNull().also { if (it == null) signalled = false } }
                if (task != null) {
                    task.run()
                    continue
                }
                if (done()) return
                val waitMs = idle()
                if (waitMs <= 0) continue
                lock.withLock { if (tasks.isEmpty() && !signalled) wake.await(waitMs, TimeUnit.MILLISECONDS) }
            }
        } catch (_: InterruptedException) {
            // the pool is shutting down (KilnServer.stop): the attempt's stream is closed too
        } finally {
            val left = lock.withLock {
                stopped = true
                tasks.toList().also { tasks.clear() }
            }
            thread = null
            left.forEach { fallback.dispatch(EmptyCoroutineContext, it) }
        }
    }

    override fun toString(): String = "InvocationLoop"
}
