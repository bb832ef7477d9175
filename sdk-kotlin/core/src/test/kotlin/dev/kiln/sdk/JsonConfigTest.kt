package dev.kiln.sdk

import kotlinx.serialization.KSerializer
import kotlinx.serialization.Serializable
import kotlinx.serialization.descriptors.PrimitiveKind
import kotlinx.serialization.descriptors.PrimitiveSerialDescriptor
import kotlinx.serialization.descriptors.SerialDescriptor
import kotlinx.serialization.encoding.Decoder
import kotlinx.serialization.encoding.Encoder
import kotlinx.serialization.json.Json
import kotlinx.serialization.modules.SerializersModule
import kotlinx.serialization.modules.contextual
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** A type without a kotlinx serializer of its own: only the endpoint's module knows how to encode it. */
class Money(val cents: Long)

/** Money as a decimal string, `"1.45"`. */
object MoneyAsText : KSerializer<Money> {
    override val descriptor: SerialDescriptor = PrimitiveSerialDescriptor("test.Money", PrimitiveKind.STRING)

    override fun serialize(encoder: Encoder, value: Money) =
        encoder.encodeString("${value.cents / 100}.${(value.cents % 100).toString().padStart(2, '0')}")

    override fun deserialize(decoder: Decoder): Money {
        val (units, hundredths) = decoder.decodeString().split('.')
        return Money(units.toLong() * 100 + hundredths.toLong())
    }
}

@VirtualObject
class Wallet {
    companion object {
        val BALANCE = stateKey<Money>("balance")
    }

    @Handler
    suspend fun deposit(ctx: ObjectContext, amount: Money): Money {
        val before = ctx.get(BALANCE)?.cents ?: 0
        val fee = ctx.run<Money>("fee") { Money(5) }
        val after = Money(before + amount.cents - fee.cents)
        ctx.set(BALANCE, after)
        return after
    }
}

@Service
class Payer {
    @Handler
    suspend fun pay(ctx: Context, amount: Money): Money = ctx.call(Wallet::deposit, "w1", amount).await()
}

@Serializable
data class Account(val id: String, val closed: Boolean = false, val tags: List<String> = emptyList())

@Service
class Accounts {
    @Handler
    suspend fun open(ctx: Context, a: Account): Account = a
}

/** `KilnEndpoint(json = …)`: one JSON for every payload and state value of the endpoint's services. */
class JsonConfigTest {
    private val moneyJson = Json(KilnEndpoint.defaultJson) {
        serializersModule =
            SerializersModule { contextual(MoneyAsText) }
    }

    @Test
    fun `the endpoint's serializers encode inputs, outputs, state and run results`() =
        Transcript(Wallet(), "deposit", moneyJson).use { t ->
            t.start(key = "w1", state = mapOf("balance" to json("\"0.50\"")))
            t.input("\"1.00\"")
            val read = t.nextEntry()
            assertEquals("get_state" to "\"0.50\"", read.kind to read.value.text())
            val fee = t.nextEntry()
            assertEquals("run" to "\"0.05\"", fee.kind to fee.value.text())
            t.ack(2)
            val write = t.nextEntry()
            assertEquals("set_state" to "\"1.45\"", write.kind to write.value.text())
            val out = t.nextEntry()
            assertEquals("output" to "\"1.45\"", out.kind to out.value.text())
            t.expectEnd()
        }

    @Test
    fun `typed calls encode with the calling endpoint's JSON`() = Transcript(Payer(), "pay", moneyJson).use { t ->
        t.start()
        t.input("\"2.50\"")
        val call = t.nextEntry()
        assertEquals(EntryKind.CALL, call.kind)
        assertEquals("Wallet/deposit w1 \"2.50\"", "${call.service}/${call.handler} ${call.key} ${call.value.text()}")
        t.completeWith(1, "\"3.00\"")
        assertEquals("\"3.00\"", t.nextEntry().value.text())
        t.expectEnd()
    }

    @Test
    fun `without the module the types are refused when binding`() {
        val e = assertThrows(IllegalArgumentException::class.java) { defineService(Wallet()) }
        assertTrue("dev.kiln.sdk.Money is not serializable" in e.message!!, e.message)
    }

    @Test
    fun `the default JSON encodes default values and ignores unknown keys`() = Transcript(Accounts(), "open").use { t ->
        t.start()
        t.input("{\"id\":\"a1\",\"owner\":\"someone newer\"}")
        assertEquals("{\"id\":\"a1\",\"closed\":false,\"tags\":[]}", t.nextEntry().value.text())
        t.expectEnd()
    }

    @Test
    fun `an endpoint keeps the JSON it is given`() {
        assertSame(moneyJson, KilnEndpoint(moneyJson).json)
        assertSame(KilnEndpoint.defaultJson, KilnEndpoint().json)
        assertTrue(KilnEndpoint.defaultJson.configuration.encodeDefaults)
        assertTrue(KilnEndpoint.defaultJson.configuration.ignoreUnknownKeys)
    }
}
