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

    /** Kinds whose entries carry a `name` that the determinism check compares. */
    val NAMED = setOf(GET_STATE, SET_STATE, CLEAR_STATE, RUN)
}

/** Error codes the SDK puts in ERROR frames. */
internal object ErrorCode {
    const val RETRYABLE = 500
    const val STATE_WRITE_FROM_SHARED = 409
    const val JOURNAL_MISMATCH = 570
    const val PROTOCOL_VIOLATION = 571
}

internal class Failure(val code: Int, val message: String) {
    fun toMap(): Map<String, Any?> = mapOf("code" to code, "message" to message)
    override fun toString(): String = "Failure($code, $message)"

    companion object {
        fun fromMap(m: Map<String, Any?>): Failure =
            Failure(m.reqLong("code").toInt(), m.str("message") ?: "")
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
) {
    fun toMap(): Map<String, Any?> = mapOf(
        "id" to id, "service" to service, "handler" to handler, "key" to key, "epoch" to epoch,
        "known_entries" to knownEntries, "state" to state, "random_seed" to randomSeed,
    )

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
) {
    fun toMap(): Map<String, Any?> {
        val m = LinkedHashMap<String, Any?>(8)
        m["index"] = index
        m["kind"] = kind
        if (name != null) m["name"] = name
        if (value != null) m["value"] = value
        if (failure != null) m["failure"] = failure.toMap()
        if (keys != null) m["keys"] = keys
        return m
    }

    fun encode(): ByteArray = Msgpack.encodeMap(toMap())

    /** `kind 'name'` or just `kind` for kinds without a name; used in mismatch messages. */
    fun describe(): String = describe(kind, name)

    override fun toString(): String = "JournalEntry($index, ${describe()})"

    companion object {
        fun describe(kind: String, name: String?): String = if (name != null) "$kind '$name'" else kind

        fun fromMap(m: Map<String, Any?>): JournalEntry {
            val index = m.reqLong("index")
            if (index < 0 || index > Int.MAX_VALUE) throw ProtocolException("entry index out of range: $index")
            val keys = when (val k = m["keys"]) {
                null -> null
                is List<*> -> k.map { it as? String ?: throw ProtocolException("'keys' must be a list of str") }
                else -> throw ProtocolException("'keys' must be a list of str")
            }
            val failure = when (val f = m["failure"]) {
                null -> null
                is Map<*, *> -> @Suppress("UNCHECKED_CAST") Failure.fromMap(f as Map<String, Any?>)
                else -> throw ProtocolException("'failure' must be a map")
            }
            return JournalEntry(index.toInt(), m.reqStr("kind"), m.str("name"), m.bytes("value"), failure, keys)
        }

        fun decode(body: ByteArray): JournalEntry = fromMap(Msgpack.decodeMap(body))
    }
}

internal object Bodies {
    val EMPTY_MAP: ByteArray = Msgpack.encodeMap(emptyMap())

    fun ack(index: Int): ByteArray = Msgpack.encodeMap(mapOf("index" to index))

    fun ackIndex(body: ByteArray): Long = Msgpack.decodeMap(body).reqLong("index")

    fun error(code: Int, message: String, retryable: Boolean, index: Int? = null): ByteArray {
        val m = LinkedHashMap<String, Any?>()
        m["code"] = code
        m["message"] = message
        m["retryable"] = retryable
        if (index != null) m["index"] = index
        return Msgpack.encodeMap(m)
    }
}
