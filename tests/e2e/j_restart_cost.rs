//! Issue 8 (c): restart cost follows live work, not finished history.
//!
//! Two nodes on their own data dirs, measured from outside as a user would: N finished
//! invocations (`Counter/{key}/add`, 1,000 keys, concurrently) plus a few scheduled ones
//! (`/send?delay=1h`, live work), then the node is stopped — SIGKILL, and SIGTERM (a clean
//! stop) — and started again, and the time from spawn until `GET /health` answers 200 and then
//! a `Counter/…/get` answers 200 is taken, 3 times per stop kind. With N = 500 and N = 50,000
//! the median of the 50k node must stay within 1.5× the 500 one (or within an absolute slack,
//! see `SLACK`). Each restart also prints where the node's own log puts the time
//! (`node.opening` → `node.recovering` covers opening storage, replaying its journal, and the
//! recovery scans).
//!
//! The restart measurement is slow (50,000 invocations) and, on fjall 3.1, fails: restart is
//! dominated by fjall replaying its journal, which it rotates only past a fixed 64 MB, so the
//! replay follows the bytes written since the last rotation, not live work. It runs behind a
//! switch: `cargo test --release --test e2e j_restart -- --ignored --nocapture`.
//!
//! In CI, `j_listing_reads_only_index_rows`: listing the scheduled invocations (`GET
//! /invocations?status=scheduled`, served from the `unfinished` index) lists exactly the live
//! ones and reads no more invocation records than it lists
//! (`kiln_storage_invocation_rows_read_total` in `/metrics`), however many have finished.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::harness::*;

const SMALL: usize = 500;
const LARGE: usize = 50_000;
const KEYS: usize = 1_000;
const CONCURRENCY: usize = 64;
/// Live (unfinished) invocations in both data dirs: the rows recovery and the listing read.
const SCHEDULED: usize = 10;
const RUNS: usize = 3;
/// Absolute slack on the ratio: the 50k median may exceed 1.5× the 500 one by up to this. The
/// 500 restart takes ~35 ms in a release build and ~0.3–0.5 s in a debug one, where the
/// scheduling noise of process start-up on 2 busy cores (and of the first request to the JVM)
/// is of the same size; a restart whose cost follows history costs seconds.
const SLACK: Duration = Duration::from_millis(500);
const RESTART_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Kill,
    Term,
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Spawn → `GET /health` 200.
    health: Duration,
    /// Spawn → `GET /health` 200 and then `Counter/…/get` 200.
    ready: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn within(large: Duration, small: Duration) -> bool {
    large.as_secs_f64() <= 1.5 * small.as_secs_f64() || large <= small + SLACK
}

/// A node on a fresh data dir with `n` finished and `SCHEDULED` scheduled invocations.
async fn populate(env: &Env, svc: &Service, label: &str, n: usize) -> Result<Kiln> {
    let opts = KilnOpts {
        extra_args: vec!["--peer-addr".into(), format!("127.0.0.1:{}", free_port())],
        ..Default::default()
    };
    let kiln = Kiln::start(env, opts).await?;
    register_expect(&kiln, &svc.uri(), &["Counter"]).await?;
    let keys: Vec<String> = (0..KEYS.min(n)).map(|i| format!("{label}-{i}")).collect();
    let mut load = AddLoad::new(&kiln.ingress(), keys, CONCURRENCY);
    load.total = Some(n);
    let report = load.start(&kiln.http).finish().await?;
    report.expect_all_ok()?;
    println!(
        "j_restart {label}: {n} finished invocations in {:.1} s ({:.0}/s)",
        report.elapsed.as_secs_f64(),
        report.throughput()
    );
    for i in 0..SCHEDULED {
        let resp = kiln
            .call(&format!("Counter/{label}-later-{i}/add/send?delay=1h"), "1")
            .await?;
        send_id(&resp)?;
    }
    Ok(kiln)
}

/// Stops `kiln` as `stop` says, starts it again, and times it until it serves.
async fn restart(kiln: &mut Kiln, stop: Stop, probe_key: &str) -> Result<Timing> {
    match stop {
        Stop::Kill => kiln.kill(),
        Stop::Term => {
            let pid = kiln.pid().context("kiln is not running")?;
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            ensure!(status.success(), "kill -TERM {pid}: {status}");
            let deadline = Deadline::after(Duration::from_secs(15), "waiting for kiln to exit on SIGTERM");
            while kiln.is_running() {
                deadline.check(format!("pid {pid} still running"))?;
                sleep_ms(5).await;
            }
            kiln.kill(); // reaps the exited process and clears the handle
        }
    }
    let health_url = format!("{}/health", kiln.admin());
    let probe_url = format!("{}/Counter/{probe_key}/get", kiln.ingress());
    // Longer than the harness's start-up limit: a slow restart should fail on its numbers.
    let deadline = Deadline::after(RESTART_TIMEOUT, format!("restart of kiln {}", kiln.label));
    let started = Instant::now();
    kiln.spawn_only()?;
    let mut last;
    loop {
        ensure!(
            kiln.is_running(),
            "kiln {} exited during start-up (see its log)",
            kiln.label
        );
        match kiln.http.get_timeout(&health_url, Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 => break,
            Ok(r) => last = r.to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        deadline.check(&last)?;
        sleep_ms(2).await;
    }
    let health = started.elapsed();
    loop {
        match kiln
            .http
            .post_timeout(&probe_url, "", &[], Duration::from_secs(5))
            .await
        {
            Ok(r) if r.status == 200 => break,
            Ok(r) => last = r.to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        deadline.check(&last)?;
        sleep_ms(2).await;
    }
    Ok(Timing {
        health,
        ready: started.elapsed(),
    })
}

/// Milliseconds from `node.opening` to `node.recovering`, `node.recovered` and `node.ready` in
/// the last start of `kiln`'s log (the node's own account of where start-up time goes).
fn phases(kiln: &Kiln) -> String {
    let text = std::fs::read_to_string(kiln.log_path()).unwrap_or_default();
    let last_start = text.rfind("===== [e2e harness] start #").unwrap_or(0);
    let stamp = |event: &str| -> Option<f64> {
        let line = text[last_start..].lines().find(|l| l.contains(event))?;
        // `2025-01-01T12:34:56.123456Z  INFO …` → milliseconds since midnight.
        let (_, time) = line.split_whitespace().next()?.split_once('T')?;
        let mut hms = time.trim_end_matches('Z').split(':').map(|x| x.parse::<f64>().ok());
        let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
        Some(((h * 60.0 + m) * 60.0 + s) * 1e3)
    };
    let Some(open) = stamp("node.opening") else {
        return "no node.opening in the log".into();
    };
    ["node.recovering", "node.recovered", "node.ready"]
        .iter()
        .map(|e| match stamp(e) {
            Some(t) => format!("{e} +{:.1} ms", t - open),
            None => format!("{e} ?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /invocations?status=scheduled` (the `unfinished` index): the time of the best of 3
/// and the number listed.
async fn list_scheduled(kiln: &Kiln) -> Result<(Duration, usize)> {
    let url = format!("{}/invocations?status=scheduled&limit=1000", kiln.admin());
    let mut best = Duration::MAX;
    let mut listed = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let v: Value = kiln.http.get_timeout(&url, Duration::from_secs(30)).await?.ok_json()?;
        best = best.min(t.elapsed());
        listed = v["invocations"].as_array().map(Vec::len).unwrap_or(0);
    }
    Ok((best, listed))
}

/// A counter of the node's `/metrics`.
async fn metric(kiln: &Kiln, name: &str) -> Result<u64> {
    let text = kiln
        .http
        .get_timeout(&format!("{}/metrics", kiln.admin()), Duration::from_secs(10))
        .await?
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("{name} not in /metrics: {text}"))
}

#[test]
fn j_listing_reads_only_index_rows() {
    run(
        "j_listing_reads_only_index_rows",
        Duration::from_secs(300),
        |env| async move {
            let svc = Service::start(&env, Jar::Counter, &[]).await?;
            let kiln = populate(&env, &svc, "listing", 2_000).await?;
            let before = metric(&kiln, "kiln_storage_invocation_rows_read_total").await?;
            let (took, listed) = list_scheduled(&kiln).await?;
            let read = metric(&kiln, "kiln_storage_invocation_rows_read_total").await? - before;
            println!(
                "j_listing: listed {listed} scheduled of 2,010 in {:.1} ms, reading {read} records (3 listings)",
                ms(took)
            );
            ensure!(listed == SCHEDULED, "listed {listed} scheduled, expected {SCHEDULED}");
            ensure!(
                read <= 3 * SCHEDULED as u64,
                "3 listings of {SCHEDULED} live invocations read {read} records: they scan history"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "slow (50,000 invocations); fails on fjall 3.1's journal replay: run with --release -- --ignored"]
fn j_restart_cost_follows_live_work_not_history() {
    run(
        "j_restart_cost_follows_live_work_not_history",
        Duration::from_secs(3600),
        |env| async move {
            let test_started = Instant::now();
            let svc = Service::start(&env, Jar::Counter, &[]).await?;
            let mut nodes = Vec::new();
            for (label, n) in [("small", SMALL), ("large", LARGE)] {
                nodes.push((label, n, populate(&env, &svc, label, n).await?));
            }
            let populated = test_started.elapsed();

            // Medians per (node, stop kind): (health, ready).
            let mut medians = Vec::new();
            for stop in [Stop::Kill, Stop::Term] {
                for (label, n, kiln) in nodes.iter_mut() {
                    let mut runs = Vec::new();
                    for run in 0..RUNS {
                        let t = restart(kiln, stop, &format!("{label}-0")).await?;
                        println!(
                            "j_restart {label} (n={n}) {stop:?} run {run}: healthy {:.1} ms, Counter answering {:.1} ms ({})",
                            ms(t.health),
                            ms(t.ready),
                            phases(kiln)
                        );
                        runs.push(t);
                    }
                    let health = median(runs.iter().map(|t| t.health).collect());
                    let ready = median(runs.iter().map(|t| t.ready).collect());
                    println!(
                        "j_restart {label} (n={n}) {stop:?}: median healthy {:.1} ms, Counter answering {:.1} ms",
                        ms(health),
                        ms(ready)
                    );
                    medians.push((*label, stop, health, ready));
                }
            }

            for (label, n, kiln) in &nodes {
                let (took, listed) = list_scheduled(kiln).await?;
                println!(
                    "j_restart {label} (n={n}): GET /invocations?status=scheduled listed {listed} in {:.1} ms",
                    ms(took)
                );
                ensure!(
                    listed == SCHEDULED,
                    "{label}: listed {listed} scheduled, expected {SCHEDULED}"
                );
            }
            println!(
                "j_restart: populated in {:.1} s, whole test {:.1} s",
                populated.as_secs_f64(),
                test_started.elapsed().as_secs_f64()
            );

            let mut failures = Vec::new();
            for stop in [Stop::Kill, Stop::Term] {
                let of = |label: &str| {
                    medians
                        .iter()
                        .find(|(l, s, _, _)| *l == label && *s == stop)
                        .map(|(_, _, h, r)| (*h, *r))
                        .expect("measured")
                };
                let ((small_h, small_r), (large_h, large_r)) = (of("small"), of("large"));
                for (what, small, large) in [("healthy", small_h, large_h), ("Counter answering", small_r, large_r)] {
                    if !within(large, small) {
                        failures.push(format!(
                            "{stop:?}, {what}: median {:.1} ms with {LARGE} finished > 1.5 × {:.1} ms with {SMALL} and > +{} ms",
                            ms(large),
                            ms(small),
                            SLACK.as_millis()
                        ));
                    }
                }
            }
            if !failures.is_empty() {
                bail!("restart cost grows with history:\n  {}", failures.join("\n  "));
            }
            Ok(())
        },
    );
}
