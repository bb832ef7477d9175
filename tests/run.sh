#!/usr/bin/env bash
# The whole test suite: the kiln binary first (the Kotlin tests run against it), the packaging
# checks (packaging/check.sh: container recipe and systemd unit against that binary; it installs
# its linters itself and skips, saying why, what this machine cannot run), then via Maven
# the Kotlin SDK's unit tests (protocol transcripts), the client's, and the @KilnTest tests of
# kiln-testing and the examples (real kiln, services in the test JVM) plus the example jars, then
# the standalone template project against the installed SDK; then rustfmt and clippy (warnings
# are errors), then Rust unit, component and end-to-end tests (real kiln binary, real Kotlin
# services).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> kiln binary (debug; cargo test reuses it)"
cargo build --locked
# Read by kiln-testing (KilnBinary) in the test JVMs Maven forks.
export KILN_BINARY="$PWD/target/debug/kiln"
echo "==> Packaging (container recipe, systemd unit; skips what this machine cannot run)"
bash packaging/check.sh "$KILN_BINARY"
echo "==> Kotlin SDK, client and testing modules, examples (Maven)"
mvn -B -q -Dkotlin.compiler.daemon=false -f examples/pom.xml install
echo "==> Template project (standalone; uses the SDK installed above)"
mvn -B -q -Dkotlin.compiler.daemon=false -f examples/template/pom.xml verify
echo "==> Rust format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
echo "==> Rust tests"
cargo test --locked
