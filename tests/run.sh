#!/usr/bin/env bash
# The whole test suite: Kotlin SDK unit tests (protocol transcripts) and example jars via
# Maven, then rustfmt and clippy (warnings are errors), then Rust unit, component and
# end-to-end tests (real kiln binary, real Kotlin services).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> Kotlin SDK tests and example jars"
mvn -B -q -Dkotlin.compiler.daemon=false -f examples/pom.xml install
echo "==> Rust format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
echo "==> Rust tests"
cargo test --locked
