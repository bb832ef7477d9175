package dev.kiln.testing

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path

/** KilnNode without JUnit's extension, and where the binary comes from. */
class KilnNodeTest {
    @Test
    fun `a node serves, and close stops kiln and deletes its data but keeps the log`() {
        val node = KilnNode.start(services = listOf(Tally()))
        val dataDir = node.dataDir
        node.use {
            assertEquals(4L, it.client.blocking.call(Tally::add, "node", 4L))
            assertTrue(Files.isDirectory(dataDir))
        }
        assertFalse(node.isRunning)
        assertFalse(Files.exists(dataDir))
        assertTrue(Files.readString(node.logFile).contains("serve --data-dir"))
        node.close() // idempotent
    }

    @Test
    fun `kiln flags from the caller are passed and a failed start names the log`() {
        val e = assertThrows<IllegalStateException> { KilnNode.start(kilnArgs = listOf("--no-such-flag")) }
        assertTrue("kiln exited during start-up" in e.message!!, e.message)
        assertTrue("kiln's log: " in e.message!!, e.message)
        assertTrue("no-such-flag" in e.message!!, e.message)
    }

    @Test
    fun `no binary anywhere is an error naming every way to give one`() {
        val e = assertThrows<IllegalStateException> { KilnBinary.locate(null, null, "/nonexistent") }
        for (hint in listOf("kiln.binary", "KILN_BINARY", "PATH", "cargo build --release")) {
            assertTrue(hint in e.message!!, e.message)
        }
    }

    @Test
    fun `the property wins over the environment and PATH, and must be an executable`(@TempDir dir: Path) {
        val bin = Files.createDirectories(dir.resolve("bin")).resolve("kiln")
        Files.writeString(bin, "#!/bin/sh\n")
        bin.toFile().setExecutable(true)
        assertEquals(bin, KilnBinary.locate(null, null, dir.resolve("bin").toString()))
        assertEquals(bin, KilnBinary.locate(null, bin.toString(), null))
        val other = dir.resolve("other")
        val e = assertThrows<IllegalStateException> { KilnBinary.locate(other.toString(), bin.toString(), null) }
        assertTrue("system property kiln.binary" in e.message!!, e.message)
    }
}
