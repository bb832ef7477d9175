// Where the `kiln` binary that tests run against comes from.
package dev.kiln.testing

import java.io.File
import java.nio.file.Files
import java.nio.file.Path

/**
 * Finds the `kiln` binary for [KilnNode] and [KilnTest]: the system property [PROPERTY]
 * (`-Dkiln.binary=/path/to/kiln`; Maven passes `-D` options of its command line on to the test
 * JVM), else the environment variable [ENV], else `kiln` on `PATH`.
 */
public object KilnBinary {
    /** The system property naming the binary: `kiln.binary`. */
    public const val PROPERTY: String = "kiln.binary"

    /** The environment variable naming the binary: `KILN_BINARY`. */
    public const val ENV: String = "KILN_BINARY"

    /**
     * Returns the binary to run.
     *
     * @throws IllegalStateException when none is found (the message says where it looked and how
     *   to build one), or when [PROPERTY] or [ENV] names a file that is not an executable.
     */
    public fun locate(): Path = locate(System.getProperty(PROPERTY), System.getenv(ENV), System.getenv("PATH"))

    internal fun locate(property: String?, env: String?, path: String?): Path {
        property?.takeIf { it.isNotBlank() }?.let { return executable(it, "system property $PROPERTY") }
        env?.takeIf { it.isNotBlank() }?.let { return executable(it, "environment variable $ENV") }
        val onPath = path.orEmpty().split(File.pathSeparator).filter { it.isNotEmpty() }
            .map { Path.of(it, "kiln") }
            .firstOrNull { Files.isRegularFile(it) && Files.isExecutable(it) }
        return onPath?.toAbsolutePath() ?: throw IllegalStateException(
            "no kiln binary found: set the system property $PROPERTY (e.g. mvn -D$PROPERTY=/path/to/kiln verify) " +
                "or the environment variable $ENV to the path of the kiln binary, or put kiln on PATH. " +
                "Build it in the Kiln repository with `cargo build --release` (target/release/kiln).",
        )
    }

    private fun executable(value: String, source: String): Path {
        val p = Path.of(value).toAbsolutePath()
        check(Files.isRegularFile(p) && Files.isExecutable(p)) {
            "$source names $value, which is not an executable file " +
                "(build kiln with `cargo build --release` in the Kiln repository: target/release/kiln)"
        }
        return p
    }
}
