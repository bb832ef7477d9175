// The one context implementation: each command checks where it is issued, then is replayed from the
// journal or journaled at the next index (docs/protocol.md §3, §5).
package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.json.Json
import org.slf4j.Logger
import kotlin.random.Random
import kotlin.time.Duration

/** The context of one attempt; [writable] is false for shared handlers. */
internal class InvocationContext(private val inv: Invocation, private val writable: Boolean) : WorkflowContext {
    override val invocationId: String get() = inv.start.id
    override val key: String get() = inv.start.key
    override val logger: Logger = ReplayAwareLogger(inv.handler.logger) { inv.replaying }

    /** The endpoint's JSON: payloads and state values. */
    val json: Json get() = inv.json

    override fun random(): Random {
        inv.checkUsable("random")
        return inv.random ?: Random(inv.start.randomSeed).also { inv.random = it }
    }

    // Durable steps ---------------------------------------------------------------------------------

    override suspend fun <T> run(name: String, serializer: KSerializer<T>, block: suspend () -> T): T =
        awaitRun(inv.startRun("run", name, null, serializer, block))

    override suspend fun <T> run(
        name: String,
        retryPolicy: RetryPolicy,
        serializer: KSerializer<T>,
        block: suspend () -> T,
    ): T = awaitRun(inv.startRun("run", name, retryPolicy, serializer, block))

    override fun <T> runAsync(name: String, serializer: KSerializer<T>, block: suspend () -> T): DurableFuture<T> =
        inv.startRun("runAsync", name, null, serializer, block)

    override fun <T> runAsync(
        name: String,
        retryPolicy: RetryPolicy,
        serializer: KSerializer<T>,
        block: suspend () -> T,
    ): DurableFuture<T> = inv.startRun("runAsync", name, retryPolicy, serializer, block)

    /** `run`'s own wait for its durable result: never interrupted by a cancellation. */
    private suspend fun <T> awaitRun(f: FutureImpl<T>): T = f.decode(inv.awaits.uncancellable(f.index))

    // State -----------------------------------------------------------------------------------------

    override suspend fun <T> get(key: StateKey<T>): T? {
        inv.checkUsable("get")
        val replayed = inv.matchJournal(EntryKind.GET_STATE, key.name)
        val bytes = if (replayed != null) {
            replayed.value
        } else {
            val v = inv.state[key.name]
            inv.append(JournalEntry(inv.nextIndex, EntryKind.GET_STATE, key.name, value = v))
            v
        }
        return bytes?.let { inv.decode(key.serializerIn(json.serializersModule), it) }
    }

    override suspend fun stateKeys(): Set<String> {
        inv.checkUsable("stateKeys")
        val replayed = inv.matchJournal(EntryKind.GET_STATE_KEYS, null)
        if (replayed != null) return LinkedHashSet(replayed.keys ?: emptyList())
        val keys = inv.state.keys.sorted()
        inv.append(JournalEntry(inv.nextIndex, EntryKind.GET_STATE_KEYS, keys = keys))
        return LinkedHashSet(keys)
    }

    // Replayed writes are applied to the local view too: that is idempotent whether or not
    // START.state already contains them, so reads after the replay are right either way.

    override fun <T> set(key: StateKey<T>, value: T) {
        inv.checkUsable("set")
        inv.checkWritable(writable, key.name)
        val bytes = inv.encode(key.serializerIn(json.serializersModule), value)
        if (inv.matchJournal(EntryKind.SET_STATE, key.name) == null) {
            inv.append(JournalEntry(inv.nextIndex, EntryKind.SET_STATE, key.name, value = bytes))
        }
        inv.state[key.name] = bytes
    }

    override fun clear(key: StateKey<*>) {
        inv.checkUsable("clear")
        inv.checkWritable(writable, key.name)
        if (inv.matchJournal(EntryKind.CLEAR_STATE, key.name) == null) {
            inv.append(JournalEntry(inv.nextIndex, EntryKind.CLEAR_STATE, key.name))
        }
        inv.state.remove(key.name)
    }

    override fun clearAll() {
        inv.checkUsable("clearAll")
        inv.checkWritable(writable, "*")
        if (inv.matchJournal(EntryKind.CLEAR_ALL_STATE, null) == null) {
            inv.append(JournalEntry(inv.nextIndex, EntryKind.CLEAR_ALL_STATE))
        }
        inv.state.clear()
    }

    // Time ------------------------------------------------------------------------------------------

    override suspend fun sleep(duration: Duration) {
        timer(duration).await()
    }

    override fun timer(duration: Duration): DurableFuture<Unit> {
        if (duration.isNegative()) misuse("ctx.timer($duration): the duration must not be negative")
        inv.checkUsable("timer")
        val replayed = inv.matchJournal(EntryKind.SLEEP, null)
        val index = if (replayed != null) {
            replayed.index
        } else {
            val wake = inv.clock() + duration.inWholeMilliseconds
            inv.addTimer(inv.nextIndex, wake)
            inv.append(JournalEntry(inv.nextIndex, EntryKind.SLEEP, wakeUpAtMs = wake))
        }
        return FutureImpl(inv, index) { }
    }

    // Calls and sends -------------------------------------------------------------------------------

    override fun <O> call(
        service: String,
        handler: String,
        key: String,
        input: ByteArray,
        outputSerializer: KSerializer<O>,
    ): DurableFuture<O> = callEntry(service, handler, key, input) { decodePayload(json, outputSerializer, it) }

    fun <O> callTarget(target: HandlerTarget, key: String, input: ByteArray): DurableFuture<O> =
        callEntry(target.service, target.handler, key, input) { target.decodeOutput(json, it) }

    private fun <O> callEntry(
        service: String,
        handler: String,
        key: String,
        input: ByteArray,
        decode: (ByteArray) -> O,
    ): FutureImpl<O> {
        checkTarget("call", service, handler)
        inv.checkUsable("call")
        val replayed = inv.matchJournal(EntryKind.CALL, null, target = "$service/$handler")
        val index = replayed?.index
            ?: inv.append(
                JournalEntry(
                    inv.nextIndex,
                    EntryKind.CALL,
                    service = service,
                    handler = handler,
                    key = key,
                    value = input,
                ),
            )
        return FutureImpl(inv, index, decode)
    }

    override fun send(service: String, handler: String, key: String, input: ByteArray, delay: Duration) {
        checkTarget("send", service, handler)
        if (delay.isNegative()) {
            misuse(
                "ctx.send to $service/$handler with delay $delay: the delay must not be negative",
            )
        }
        inv.checkUsable("send")
        if (inv.matchJournal(EntryKind.SEND, null, target = "$service/$handler") == null) {
            inv.append(
                JournalEntry(
                    inv.nextIndex,
                    EntryKind.SEND,
                    service = service,
                    handler = handler,
                    key = key,
                    value = input,
                    delayMs = delay.inWholeMilliseconds.takeIf { it > 0 },
                ),
            )
        }
    }

    // Awakeables ------------------------------------------------------------------------------------

    override fun <T> awakeable(serializer: KSerializer<T>): Awakeable<T> {
        inv.checkUsable("awakeable")
        val index = inv.matchJournal(EntryKind.AWAKEABLE, null)?.index
            ?: inv.append(JournalEntry(inv.nextIndex, EntryKind.AWAKEABLE))
        return AwakeableImpl(inv, index, awakeableId(inv.start.id, index)) { decodePayload(json, serializer, it) }
    }

    override fun <T> resolveAwakeable(id: String, serializer: KSerializer<T>, value: T) {
        completeAwakeable(id, encodePayload(json, serializer, value), null)
    }

    override fun rejectAwakeable(id: String, message: String, code: Int) {
        if (code !in 0..65535) misuse("rejecting with code $code: a failure code must be in 0..65535")
        completeAwakeable(id, null, Failure(code, message))
    }

    private fun completeAwakeable(id: String, value: ByteArray?, failure: Failure?) {
        inv.checkUsable("completeAwakeable")
        if (inv.matchJournal(EntryKind.COMPLETE_AWAKEABLE, null) == null) {
            inv.append(
                JournalEntry(inv.nextIndex, EntryKind.COMPLETE_AWAKEABLE, id = id, value = value, failure = failure),
            )
        }
    }

    // Durable promises ------------------------------------------------------------------------------

    override fun <T> promise(name: String, serializer: KSerializer<T>): DurablePromise<T> {
        if (inv.handler.serviceKind != ServiceKind.WORKFLOW) {
            misuse(
                "ctx.promise(\"$name\"): durable promises exist only in workflows; ${inv.handler.qualifiedName} is not one",
            )
        }
        return PromiseImpl(name, serializer)
    }

    private inner class PromiseImpl<T>(override val name: String, private val serializer: KSerializer<T>) :
        DurablePromise<T> {
        override fun future(): DurableFuture<T> {
            inv.checkUsable("promise.future")
            val index = inv.matchJournal(EntryKind.GET_PROMISE, name)?.index
                ?: inv.append(JournalEntry(inv.nextIndex, EntryKind.GET_PROMISE, name))
            return FutureImpl(inv, index) { decodePayload(json, serializer, it) }
        }

        override suspend fun await(): T = future().await()

        override suspend fun await(timeout: Duration): T = future().await(timeout)

        override suspend fun peek(): T? {
            inv.checkUsable("promise.peek")
            val index = inv.matchJournal(EntryKind.PEEK_PROMISE, name)?.index
                ?: inv.append(JournalEntry(inv.nextIndex, EntryKind.PEEK_PROMISE, name))
            val r = inv.awaits.uncancellable(index)
            r.failure?.let { throw TerminalException(it.code, it.message) }
            return r.value?.let { decodePayload(json, serializer, it) }
        }

        override suspend fun resolve(value: T) = complete(encodePayload(json, serializer, value), null)

        override suspend fun reject(message: String, code: Int) {
            if (code !in 0..65535) misuse("rejecting with code $code: a failure code must be in 0..65535")
            complete(null, Failure(code, message))
        }

        private suspend fun complete(value: ByteArray?, failure: Failure?) {
            inv.checkUsable("promise.complete")
            val index = inv.matchJournal(EntryKind.COMPLETE_PROMISE, name)?.index
                ?: inv.append(
                    JournalEntry(inv.nextIndex, EntryKind.COMPLETE_PROMISE, name, value = value, failure = failure),
                )
            inv.awaits.uncancellable(index).failure?.let { throw TerminalException(it.code, it.message) }
        }

        override fun toString(): String = "DurablePromise($name)"
    }

    /** The names of an untyped call's target must be names (not `"Counter/add"`): nothing else can be checked here. */
    private fun checkTarget(op: String, service: String, handler: String) {
        if (!NAME_PATTERN.matches(service) || !NAME_PATTERN.matches(handler)) {
            misuse(
                "ctx.$op(\"$service\", \"$handler\", …): service and handler must be names matching " +
                    "${NAME_PATTERN.pattern}; pass the key separately",
            )
        }
    }

    /** A mistake in the handler's code that a retry would repeat: a terminal 400, not a retryable exception. */
    private fun misuse(message: String): Nothing = throw TerminalException(ErrorCode.BAD_REQUEST, message)
}
