//! (k) Parallel durable steps (Kotlin SDK `ctx.runAsync`, and `ctx.run` in `async` coroutines):
//! `Steps/parallelSteps` starts four steps at once, each creating a new file in `STEPS_DIR`.
//! 100 invocations must all succeed at their first attempt (no retry, no 570), each journal
//! holding the four `run` entries in start order, and every step must run exactly once. A second
//! test SIGKILLs the runtime mid-way: every invocation completes with the right output, no step
//! journaled before the crash runs again, and no step runs more than twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::harness::*;

const INVOCATIONS: usize = 100;
const STEPS: [&str; 4] = ["a", "b", "c", "d"];

fn inputs(prefix: &str) -> Vec<String> {
    (0..INVOCATIONS).map(|i| format!("{prefix}{i:03}")).collect()
}

fn expected_output(input: &str) -> String {
    STEPS.map(|s| format!("{input}-{s}")).join(" ")
}

/// `kind(name)` of every journal entry of an admin invocation JSON.
fn journal_of(v: &Value) -> Vec<String> {
    v["journal"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let kind = e["kind"].as_str().unwrap_or("?");
                    match e["name"].as_str() {
                        Some(name) => format!("{kind}({name})"),
                        None => kind.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How often each step (`<input>-<step>`) ran: one file `<input>-<step>.<random>.done` per run.
fn executions(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let step = name.split('.').next().unwrap_or_default().to_string();
        *counts.entry(step).or_default() += 1;
    }
    Ok(counts)
}

/// `value → how many` of a list, for the summary lines.
fn histogram<T: Ord + Clone>(values: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut h = BTreeMap::new();
    for v in values {
        *h.entry(v).or_default() += 1;
    }
    h
}

async fn start(env: &Env, delay_ms: &str) -> Result<(Kiln, Service, std::path::PathBuf)> {
    let dir = env.new_dir("steps-files");
    let dir_str = dir.to_string_lossy().into_owned();
    let steps = Service::start(env, Jar::Steps, &[("STEPS_DIR", &dir_str), ("STEP_DELAY_MS", delay_ms)]).await?;
    let kiln = Kiln::start(env, KilnOpts::default()).await?;
    register_expect(&kiln, &steps.uri(), &["Steps"]).await?;
    Ok((kiln, steps, dir))
}

#[test]
fn k_parallel_steps_run_once_at_the_first_attempt() {
    run(
        "k_parallel_steps_run_once_at_the_first_attempt",
        Duration::from_secs(240),
        |env| async move {
            let (kiln, _steps, dir) = start(&env, "20").await?;
            let inputs = inputs("k");
            let sem = Arc::new(Semaphore::new(16));
            let t0 = Instant::now();
            let answers = join_all(inputs.iter().map(|input| {
                let (kiln, sem) = (&kiln, sem.clone());
                async move {
                    let _permit = sem.acquire().await?;
                    let r = kiln.call("Steps/parallelSteps", &json_str(input)).await?;
                    ensure!(r.status == 200, "parallelSteps({input}) answered {r}");
                    ensure!(
                        r.json()?.as_str() == Some(expected_output(input).as_str()),
                        "parallelSteps({input}): expected {:?}, got {r}",
                        expected_output(input)
                    );
                    r.invocation_id()
                        .ok_or_else(|| anyhow!("parallelSteps({input}): no invocation id in {r:?}"))
                }
            }))
            .await;
            let elapsed = t0.elapsed();
            let failed: Vec<String> = answers
                .iter()
                .filter_map(|a| a.as_ref().err().map(|e| format!("{e:#}")))
                .collect();
            ensure!(
                failed.is_empty(),
                "{} of {INVOCATIONS} calls failed: {failed:#?}",
                failed.len()
            );

            // Each at its first attempt, journaled in start order (no select: only runs waited).
            let want: Vec<String> = ["input", "run(a)", "run(b)", "run(c)", "run(d)", "output"]
                .map(String::from)
                .into();
            let mut attempts = Vec::new();
            for (id, input) in answers.iter().flatten().zip(&inputs) {
                let v = kiln.invocation(id).await?;
                ensure!(inv_status(&v) == "completed", "{input}: {}", inv_summary(&v));
                attempts.push(v["attempts"].as_i64().unwrap_or(-1));
                ensure!(
                    v["attempts"].as_i64() == Some(1),
                    "{input} needed retries: {}",
                    inv_summary(&v)
                );
                ensure!(
                    journal_of(&v) == want,
                    "{input}: journal {:?}, expected {want:?}",
                    journal_of(&v)
                );
            }

            let runs = executions(&dir)?;
            let total: usize = runs.values().sum();
            let wrong: Vec<String> = inputs
                .iter()
                .flat_map(|i| STEPS.map(|s| format!("{i}-{s}")))
                .filter(|step| runs.get(step).copied().unwrap_or(0) != 1)
                .map(|step| format!("{step} ran {} times", runs.get(&step).copied().unwrap_or(0)))
                .collect();
            println!(
                "k: {INVOCATIONS} parallelSteps (16 at a time) all 200 in {:.2} s; attempts → invocations {:?}; \
                 {total} step files for {} steps",
                elapsed.as_secs_f64(),
                histogram(attempts),
                INVOCATIONS * STEPS.len()
            );
            ensure!(wrong.is_empty(), "steps not run exactly once: {wrong:?}");
            ensure!(
                total == INVOCATIONS * STEPS.len(),
                "{total} step files, expected {}",
                INVOCATIONS * STEPS.len()
            );
            Ok(())
        },
    );
}

#[test]
fn k_parallel_steps_survive_a_runtime_sigkill() {
    run(
        "k_parallel_steps_survive_a_runtime_sigkill",
        Duration::from_secs(240),
        |env| async move {
            let (mut kiln, _steps, dir) = start(&env, "300").await?;
            let inputs = inputs("s");
            let t0 = Instant::now();
            let ids: Vec<String> = join_all(inputs.iter().map(|input| {
                let kiln = &kiln;
                async move { kiln.send("Steps/parallelSteps", &json_str(input)).await }
            }))
            .await
            .into_iter()
            .collect::<Result<_>>()?;
            // Read every journal just before the crash: a run entry seen there is in the store, so
            // its step must never run again.
            tokio::time::sleep_until((t0 + Duration::from_millis(440)).into()).await;
            let journaled: Vec<Vec<String>> = join_all(ids.iter().map(|id| kiln.invocation(id)))
                .await
                .into_iter()
                .map(|v| v.map(|v| journal_of(&v)))
                .collect::<Result<_>>()?;
            tokio::time::sleep_until((t0 + Duration::from_millis(500)).into()).await;
            ensure!(kiln.is_running(), "kiln exited on its own before the planned crash");
            kiln.kill();
            let crashed_ms = t0.elapsed().as_millis();
            let runs_before: usize = executions(&dir)?.values().sum();
            kiln.restart().await?;

            let attached = join_all(ids.iter().zip(&inputs).map(|(id, input)| {
                let kiln = &kiln;
                async move {
                    let r = kiln.attach(id, Duration::from_secs(120)).await?;
                    ensure!(
                        r.status == 200 && r.json()?.as_str() == Some(expected_output(input).as_str()),
                        "attach {id} ({input}): expected {:?}, got {r}",
                        expected_output(input)
                    );
                    Ok::<_, anyhow::Error>(())
                }
            }))
            .await;
            let failed: Vec<String> = attached
                .into_iter()
                .filter_map(|r| r.err().map(|e| format!("{e:#}")))
                .collect();
            ensure!(
                failed.is_empty(),
                "{} of {INVOCATIONS} attaches failed: {failed:#?}",
                failed.len()
            );

            let mut attempts = Vec::new();
            for id in &ids {
                let v = kiln.invocation(id).await?;
                ensure!(inv_status(&v) == "completed", "{}", inv_summary(&v));
                attempts.push(v["attempts"].as_i64().unwrap_or(-1));
            }
            let runs = executions(&dir)?;
            let mut problems = Vec::new();
            for (input, journal) in inputs.iter().zip(&journaled) {
                for s in STEPS {
                    let n = runs.get(&format!("{input}-{s}")).copied().unwrap_or(0);
                    let was_journaled = journal.contains(&format!("run({s})"));
                    if n == 0 || n > 2 || (was_journaled && n != 1) {
                        problems.push(format!(
                            "{input}-{s} ran {n} times (journaled before the crash: {was_journaled})"
                        ));
                    }
                }
            }
            let runs_in_journals: usize = journaled
                .iter()
                .map(|j| j.iter().filter(|e| e.starts_with("run(")).count())
                .sum();
            println!(
                "k: SIGKILL at {crashed_ms} ms with {runs_in_journals} of {} run entries journaled and {runs_before} \
                 steps run; afterwards all {INVOCATIONS} completed, attempts → invocations {:?}, \
                 step runs → steps {:?}",
                INVOCATIONS * STEPS.len(),
                histogram(attempts),
                histogram(runs.values().copied())
            );
            ensure!(
                problems.is_empty(),
                "{} steps ran wrongly: {problems:#?}",
                problems.len()
            );
            Ok(())
        },
    );
}
