//! The simulation over many seeds, and proof that it can fail: the same runs with the
//! creation dedup check skipped find the duplicate.

use super::{Apply, Sim};
use crate::core::transition::Command;

const STEPS: usize = 400;

/// Seeds to run: `KILN_SIM_SEED=<n>` runs one, `KILN_SIM_SEEDS=<n>` that many (CI runs 1,000).
fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("KILN_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n = std::env::var("KILN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (0..n).collect()
}

/// Runs every seed with `apply`; returns the first failing seed with its report.
fn first_failure(apply: Apply) -> Option<(u64, String)> {
    seeds().into_iter().find_map(|seed| {
        let mut sim = Sim::new(seed, apply);
        sim.run(STEPS);
        (!sim.violations.is_empty()).then(|| {
            let report = format!(
                "seed {seed} (rerun: KILN_SIM_SEED={seed} cargo test --lib core::sim):\n  {}\nlast events:\n{}",
                sim.violations.join("\n  "),
                sim.trace_tail(40)
            );
            (seed, report)
        })
    })
}

#[test]
fn the_core_keeps_its_invariants_under_crashes_and_lost_answers() {
    if let Some((_, report)) = first_failure(crate::core::apply) {
        panic!("simulation found a violation, {report}");
    }
}

#[test]
fn the_same_schedule_gives_the_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(seed, crate::core::apply);
        sim.run(STEPS);
        sim.trace_tail(usize::MAX)
    };
    assert_eq!(run(7), run(7));
}

/// The bug the simulation must catch: deliveries applied as first deliveries, so a message
/// sent again after a lost answer creates its invocation a second time.
fn apply_without_dedup(
    read: &dyn crate::core::PartitionRead,
    command: Command,
) -> Result<crate::core::Transition, crate::core::ReadFailed> {
    let command = match command {
        Command::Invoke { message, .. } => Command::Invoke {
            message,
            redelivery: false,
        },
        other => other,
    };
    crate::core::apply(read, command)
}

#[test]
fn a_skipped_dedup_check_is_caught() {
    let found = first_failure(apply_without_dedup);
    let (seed, report) = found.expect("the simulation must find the injected bug");
    eprintln!("injected bug found at {report}");
    assert!(seed < 1000, "found only at seed {seed}");
}
