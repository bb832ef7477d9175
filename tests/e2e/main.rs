//! End-to-end acceptance tests: the real `kiln` binary and the real Kotlin services (built jars),
//! on free ports with temp data dirs; processes are SIGKILLed and restarted mid-flight.
//!
//! Prerequisite: the Kotlin jars, built with `mvn -q -f examples/pom.xml install -DskipTests`.
//! Run: `cargo test --test e2e -- --nocapture` (tests run one at a time; see `harness::run`).
//! The cluster tests (`i4_cluster_*`) also need nginx (`/usr/sbin/nginx`, package nginx-light),
//! and `i4_cluster_ui` node, npm and chromium (it runs `npm ci` in tests/ui when node_modules is
//! missing); `.ci/run` installs them.
//! On failure, log tails are printed and full logs are kept in `test-artifacts/e2e/<test>/`.

mod harness;

// Fake SDK endpoints and a proxy before a real one, on the SDK side of protocol v1.
mod fake_endpoint;
mod relay_endpoint;
mod sdk_wire;
mod start_spy;

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

// The invocation core (issue 8): control racing completion, input ranges, restart cost.
mod j_control_races;
mod j_found_by_reading;
mod j_restart_cost;
mod k_answers;
mod k_hardening;
mod k_parallel_steps;
mod k_versions;

// Cluster (docs/cluster.md): nodes behind a real nginx, join/leave and SIGKILL under load,
// sagas across nodes, the web UI in a browser.
mod i4_cluster_concurrent_changes;
mod i4_cluster_join_leave;
mod i4_cluster_kill_any;
mod i4_cluster_load;
mod i4_cluster_node_crash;
mod i4_cluster_pause;
mod i4_cluster_rebalance_resumes;
mod i4_cluster_saga;
mod i4_cluster_ui;
