//! End-to-end acceptance tests: the real `kiln` binary and the real Kotlin services (built jars),
//! on free ports with temp data dirs; processes are SIGKILLed and restarted mid-flight.
//!
//! Prerequisite: the Kotlin jars, built with `mvn -q -f examples/pom.xml install -DskipTests`.
//! Run: `cargo test --test e2e -- --nocapture` (tests run one at a time; see `harness::run`).
//! On failure, log tails are printed and full logs are kept in `test-artifacts/e2e/<test>/`.

mod harness;

mod fake_endpoint;

mod a_counter;
mod b_runtime_crash;
mod c_service_crash;
mod d_idempotency;
mod e_shared_handlers;
mod f_errors;

// Durable communication, time and workflows (protocol §5).
mod i3_callbacks;
mod i3_control;
mod i3_sagas;
mod i3_time;
mod i3_twin;
