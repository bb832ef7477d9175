// Typed frame bodies of protocol v1 (docs/protocol.md §2, §3) and their MessagePack mapping.
package dev.kiln.sdk

/** Journal entry kinds (protocol §3). */
internal object EntryKind {
    const val INPUT = "input"
    const val GET_STATE = "get_state"
    const val GET_STATE_KEYS = "get_state_keys"
    const val SET_STATE = "set_state"
    const val CLEAR_STATE = "clear_state"
    const val CLEAR_ALL_STATE = "clear_all_state"
    const val RUN = "run"
    const val OUTPUT = "output"

    // Protocol §5: completable entries and journaled decisions.
    const val CALL = "call"
    const val SEND = "send"
    const val SLEEP = "sleep"
    const val AWAKEABLE = "awakeable"
    const val COMPLETE_AWAKEABLE = "complete_awakeable"
    const val GET_PROMISE = "get_promise"
    const val PEEK_PROMISE = "peek_promise"
    const val COMPLETE_PROMISE = "complete_promise"
    const val SELECT = "select"
    const val CANCELLED = "cancelled"

    /** Kinds whose entries carry a `name` that the determinism check compares. */
    val NAMED = setOf(GET_STATE, SET_STATE, CLEAR_STATE, RUN, GET_PROMISE, PEEK_PROMISE, COMPLETE_PROMISE)

    /**
     * Kinds whose target (`service`/`handler`) the determinism check compares as well; an SDK-side
     * strengthening of protocol rule 5 (the runtime does not check it).
     */
    val TARGETED = setOf(CALL, SEND)

    /**
     * Kinds whose ENTRY frame is flushed at once: the runtime must see them to act (dispatch a
     * call or message, arm a timer, complete something) and user code may wait on their result.
     * Others (state access) may wait in the buffer for the next flushed frame.
     */
    val FLUSHED = setOf(
        RUN, CALL, SEND, SLEEP, AWAKEABLE, COMPLETE_AWAKEABLE, GET_PROMISE, PEEK_PROMISE, COMPLETE_PROMISE,
        SELECT, CANCELLED,
    )
}

/** Error codes the SDK puts in ERROR frames. */
internal object ErrorCode {
    const val RETRYABLE = 500

    /** A terminal failure for a request the code cannot make right by retrying: undecodable input, a misused typed call. */
    const val BAD_REQUEST = 400
    const val STATE_WRITE_FROM_SHARED = 409
    const val TIMEOUT = 408
    const val CANCELLED = 409
    const val JOURNAL_MISMATCH = 570
    const val PROTOCOL_VIOLATION = 571

    /** A context command issued where its journal order would not be deterministic (inside a `run` block, off the handler's coroutines). */
    const val CONTEXT_MISUSE = 572
}

internal class Failure(val code: Int, val message: String) {
    fun toMap(): Map<String, Any?> = mapOf("code" to code, "message" to message)
    override fun toString(): String = "Failure($code, $message)"

    companion object {
        fun fromMap(m: Map<String, Any?>): Failure = Failure(m.reqLong("code").toInt(), m.str("message") ?: "")

        fun fromField(m: Map<String, Any?>, field: String): Failure? = when (val f = m[field]) {
            null -> null
            is Map<*, *> ->
                @Suppress("UNCHECKED_CAST")
                fromMap(f as Map<String, Any?>)
            else -> throw ProtocolException("'$field' must be a map")
        }
    }
}

/**
 * The result of a completable entry (protocol §5): `{value}`, `{failure}` or `{}` (done, no value;
 * both fields null).
 */
internal class EntryResult(val value: ByteArray? = null, val failure: Failure? = null) {
    fun toMap(): Map<String, Any?> = when {
        failure != null -> mapOf("failure" to failure.toMap())
        value != null -> mapOf("value" to value)
        else -> emptyMap()
    }

    override fun toString(): String = when {
        failure != null -> "EntryResult($failure)"
        value != null -> "EntryResult(${value.size} B)"
        else -> "EntryResult({})"
    }

    companion object {
        val EMPTY = EntryResult()

        fun fromMap(m: Map<String, Any?>): EntryResult = EntryResult(m.bytes("value"), Failure.fromField(m, "failure"))

        /** `null` when the field is absent or nil (not completed). */
        fun fromField(m: Map<String, Any?>, field: String): EntryResult? = when (val r = m[field]) {
            null -> null
            is Map<*, *> ->
                @Suppress("UNCHECKED_CAST")
                fromMap(r as Map<String, Any?>)
            else -> throw ProtocolException("'$field' must be a map")
        }
    }
}

internal class StartMessage(
    val id: String,
    val service: String,
    val handler: String,
    val key: String,
    val epoch: Long,
    val knownEntries: Int,
    val state: Map<String, ByteArray>,
    val randomSeed: Long,
    /** A cancellation was requested before this attempt (protocol §5). */
    val cancelled: Boolean = false,
    /** How long an await waits for a COMPLETION before suspending; `null` when absent. */
    val suspendAfterMs: Long? = null,
) {
    fun toMap(): Map<String, Any?> {
        val m: MutableMap<String, Any?> = linkedMapOf(
            "id" to id, "service" to service, "handler" to handler, "key" to key, "epoch" to epoch,
            "known_entries" to knownEntries, "state" to state, "random_seed" to randomSeed,
            "cancelled" to cancelled,
        )
        if (suspendAfterMs != null) m["suspend_after_ms"] = suspendAfterMs
        return m
    }

    companion object {
        fun decode(body: ByteArray): StartMessage {
            val m = Msgpack.decodeMap(body)
            val known = m.reqLong("known_entries")
            if (known < 0 || known > Int.MAX_VALUE) throw ProtocolException("known_entries out of range: $known")
            val state = LinkedHashMap<String, ByteArray>()
            when (val s = m["state"]) {
                null -> {}
                is Map<*, *> -> for ((k, v) in s) {
                    val value = when (v) {
                        is ByteArray -> v
                        is String -> v.encodeToByteArray()
                        else -> throw ProtocolException("state value of '$k' must be bin")
                    }
                    state[k as String] = value
                }
                else -> throw ProtocolException("field 'state' must be a map")
            }
            return StartMessage(
                id = m.reqStr("id"),
                service = m.reqStr("service"),
                handler = m.reqStr("handler"),
                key = m.str("key") ?: "",
                epoch = m.long("epoch") ?: 0,
                knownEntries = known.toInt(),
                state = state,
                randomSeed = m.long("random_seed") ?: 0,
                cancelled = m.bool("cancelled") ?: false,
                suspendAfterMs = m.long("suspend_after_ms")?.also {
                    if (it < 0) throw ProtocolException("suspend_after_ms out of range: $it")
                },
            )
        }
    }
}

/** One journal entry; which optional fields are set depends on [kind]. */
internal class JournalEntry(
    val index: Int,
    val kind: String,
    val name: String? = null,
    val value: ByteArray? = null,
    val failure: Failure? = null,
    val keys: List<String>? = null,
    /** `call`/`send`: the target. */
    val service: String? = null,
    val handler: String? = null,
    val key: String? = null,
    /** `send`: delivery delay. */
    val delayMs: Long? = null,
    /** `sleep`: absolute wake-up time, Unix ms. */
    val wakeUpAtMs: Long? = null,
    /** `complete_awakeable`: the awakeable's id. */
    val id: String? = null,
    /** `select`: index of the winning entry. */
    val winner: Int? = null,
    /** Completable entries: the result, when the runtime replays a completed entry. */
    val result: EntryResult? = null,
) {
    fun toMap(): Map<String, Any?> {
        val m = LinkedHashMap<String, Any?>(8)
        m["index"] = index
        m["kind"] = kind
        if (name != null) m["name"] = name
        if (service != null) m["service"] = service
        if (handler != null) m["handler"] = handler
        if (key != null) m["key"] = key
        if (id != null) m["id"] = id
        if (value != null) m["value"] = value
        if (failure != null) m["failure"] = failure.toMap()
        if (keys != null) m["keys"] = keys
        if (delayMs != null) m["delay_ms"] = delayMs
        if (wakeUpAtMs != null) m["wake_up_at_ms"] = wakeUpAtMs
        if (winner != null) m["winner"] = winner
        if (result != null) m["result"] = result.toMap()
        return m
    }

    /** This entry with another index (and optionally a result); for tests and replays. */
    fun copy(index: Int = this.index, result: EntryResult? = this.result): JournalEntry = JournalEntry(
        index, kind, name, value, failure, keys, service, handler, key, delayMs, wakeUpAtMs, id, winner, result,
    )

    fun encode(): ByteArray = Msgpack.encodeMap(toMap())

    /** `kind 'name'` or just `kind` for kinds without a name; used in mismatch messages. */
    fun describe(): String = describe(kind, name ?: target(service, handler))

    override fun toString(): String = "JournalEntry($index, ${describe()})"

    companion object {
        fun describe(kind: String, name: String?): String = if (name != null) "$kind '$name'" else kind

        /** `Service/handler` for call and send entries, else null. */
        fun target(service: String?, handler: String?): String? =
            if (service != null || handler != null) "${service ?: ""}/${handler ?: ""}" else null

        fun fromMap(m: Map<String, Any?>): JournalEntry {
            val index = m.reqLong("index")
            if (index < 0 || index > Int.MAX_VALUE) throw ProtocolException("entry index out of range: $index")
            val keys = when (val k = m["keys"]) {
                null -> null
                is List<*> -> k.map { it as? String ?: throw ProtocolException("'keys' must be a list of str") }
                else -> throw ProtocolException("'keys' must be a list of str")
            }
            val failure = Failure.fromField(m, "failure")
            val winner = m.long("winner")?.also {
                if (it < 0 || it > Int.MAX_VALUE) throw ProtocolException("'winner' out of range: $it")
            }
            return JournalEntry(
                index.toInt(), m.reqStr("kind"), m.str("name"), m.bytes("value"), failure, keys,
                service = m.str("service"), handler = m.str("handler"), key = m.str("key"),
                delayMs = m.long("delay_ms"), wakeUpAtMs = m.long("wake_up_at_ms"), id = m.str("id"),
                winner = winner?.toInt(), result = EntryResult.fromField(m, "result"),
            )
        }

        fun decode(body: ByteArray): JournalEntry = fromMap(Msgpack.decodeMap(body))
    }
}

internal object Bodies {
    val EMPTY_MAP: ByteArray = Msgpack.encodeMap(emptyMap())

    fun ack(index: Int): ByteArray = Msgpack.encodeMap(mapOf("index" to index))

    fun ackIndex(body: ByteArray): Long = Msgpack.decodeMap(body).reqLong("index")

    fun completion(index: Int, result: EntryResult): ByteArray =
        Msgpack.encodeMap(mapOf("index" to index, "result" to result.toMap()))

    /** Decodes a COMPLETION body: its index and result (a missing `result` is `{}`). */
    fun decodeCompletion(body: ByteArray): Pair<Int, EntryResult> {
        val m = Msgpack.decodeMap(body)
        val index = m.reqLong("index")
        if (index < 0 || index > Int.MAX_VALUE) throw ProtocolException("COMPLETION index out of range: $index")
        return index.toInt() to (EntryResult.fromField(m, "result") ?: EntryResult.EMPTY)
    }

    fun suspend(waitingOn: Collection<Int>): ByteArray = Msgpack.encodeMap(mapOf("waiting_on" to waitingOn.sorted()))

    fun error(
        code: Int,
        message: String,
        retryable: Boolean,
        index: Int? = null,
        stacktrace: String? = null,
    ): ByteArray {
        val m = LinkedHashMap<String, Any?>()
        m["code"] = code
        m["message"] = message
        m["retryable"] = retryable
        if (index != null) m["index"] = index
        if (stacktrace != null) m["stacktrace"] = truncateUtf8(stacktrace, STACKTRACE_BYTES_MAX)
        return Msgpack.encodeMap(m)
    }

    /** The limit of an ERROR frame's `stacktrace` (protocol §2), in UTF-8 bytes. */
    const val STACKTRACE_BYTES_MAX = 16 * 1024
}

/** [s] cut to at most [maxBytes] UTF-8 bytes, never inside a character; a cut ends with a marker line. */
internal fun truncateUtf8(s: String, maxBytes: Int): String {
    if (s.length * 3 <= maxBytes || s.encodeToByteArray().size <= maxBytes) return s
    val marker = "\n\t... (truncated to $maxBytes bytes)"
    val budget = maxBytes - marker.encodeToByteArray().size
    var bytes = 0
    var i = 0
    while (i < s.length) {
        val cp = s.codePointAt(i)
        val n = when {
            cp < 0x80 -> 1
            cp < 0x800 -> 2
            cp < 0x10000 -> 3
            else -> 4
        }
        if (bytes + n > budget) break
        bytes += n
        i += Character.charCount(cp)
    }
    return s.substring(0, i) + marker
}
