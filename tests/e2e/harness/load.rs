//! A load generator for `Counter/{key}/add(1)`: a fixed number of requests or until stopped,
//! spread round-robin over keys, at a fixed concurrency, each result recorded with its send and
//! completion time; and the checks the cluster tests make on the results.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::StreamExt;
use serde_json::Value;

use super::*;

/// What one `add` request got.
#[derive(Clone, Debug)]
pub enum AddOutcome {
    /// 200 with the new total.
    Ok(i64),
    /// Any other answer.
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// No answer (connection refused/reset, timeout).
    Transport(String),
}

impl AddOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, AddOutcome::Ok(_))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            AddOutcome::Ok(_) => Some(200),
            AddOutcome::Status { status, .. } => Some(*status),
            AddOutcome::Transport(_) => None,
        }
    }

    /// A short class for histograms: `200`, `503`, `transport`.
    pub fn class(&self) -> String {
        match self.status() {
            Some(s) => s.to_string(),
            None => "transport".to_string(),
        }
    }
}

/// One request of a load run.
#[derive(Clone, Debug)]
pub struct AddResult {
    pub seq: usize,
    pub key: String,
    pub idempotency_key: Option<String>,
    /// Since the start of the run.
    pub sent: Duration,
    pub done: Duration,
    pub outcome: AddOutcome,
}

/// `POST {base}/Counter/{key}/add` with body `1` (and an idempotency key if given).
pub async fn counter_add_once(
    http: &Http,
    base: &str,
    key: &str,
    idempotency_key: Option<&str>,
    timeout: Duration,
) -> AddOutcome {
    let url = format!("{base}/Counter/{key}/add");
    let headers: Vec<(&str, &str)> = match idempotency_key {
        Some(k) => vec![("idempotency-key", k)],
        None => vec![],
    };
    match http.post_timeout(&url, "1", &headers, timeout).await {
        Ok(r) if r.status == 200 => match r.json().ok().and_then(|v| v.as_i64()) {
            Some(v) => AddOutcome::Ok(v),
            None => AddOutcome::Status {
                status: 200,
                body: format!("<not a number> {}", r.text()),
                retry_after: None,
            },
        },
        Ok(r) => AddOutcome::Status {
            status: r.status,
            body: truncate(&r.text(), 300),
            retry_after: r.header("retry-after"),
        },
        Err(e) => AddOutcome::Transport(truncate(&format!("{e:#}"), 300)),
    }
}

/// A load of `Counter/{key}/add(1)` requests.
#[derive(Clone, Debug)]
pub struct AddLoad {
    /// Base URL (nginx or a node's ingress).
    pub base: String,
    /// Request `seq` goes to `keys[seq % keys.len()]`.
    pub keys: Vec<String>,
    pub concurrency: usize,
    /// `Some(n)`: exactly n requests; `None`: until [`LoadRun::stop`].
    pub total: Option<usize>,
    /// `Some(prefix)`: request `seq` carries `idempotency-key: {prefix}-{seq}`.
    pub idempotency_prefix: Option<String>,
    pub timeout: Duration,
}

impl AddLoad {
    pub fn new(base: &str, keys: Vec<String>, concurrency: usize) -> AddLoad {
        AddLoad {
            base: base.to_string(),
            keys,
            concurrency,
            total: None,
            idempotency_prefix: None,
            timeout: Duration::from_secs(120),
        }
    }

    /// Starts the workers.
    pub fn start(self, http: &Http) -> LoadRun {
        let spec = Arc::new(self);
        let started = Instant::now();
        let wall_start_ms = unix_ms();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..spec.concurrency {
            let (spec, stop, next, done, ok, http) = (
                spec.clone(),
                stop.clone(),
                next.clone(),
                done.clone(),
                ok.clone(),
                http.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if spec.total.is_some_and(|t| seq >= t) {
                        break;
                    }
                    let key = spec.keys[seq % spec.keys.len()].clone();
                    let idem = spec.idempotency_prefix.as_ref().map(|p| format!("{p}-{seq}"));
                    let sent = started.elapsed();
                    let outcome = counter_add_once(&http, &spec.base, &key, idem.as_deref(), spec.timeout).await;
                    let finished = started.elapsed();
                    done.fetch_add(1, Ordering::Relaxed);
                    if outcome.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push(AddResult {
                        seq,
                        key,
                        idempotency_key: idem,
                        sent,
                        done: finished,
                        outcome,
                    });
                }
                out
            }));
        }
        LoadRun {
            started,
            wall_start_ms,
            stop,
            done,
            ok,
            workers,
        }
    }
}

/// A running load.
pub struct LoadRun {
    pub started: Instant,
    /// Wall clock (Unix ms) at `started`, to match the nodes' UTC log timestamps.
    pub wall_start_ms: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<AddResult>>>,
}

impl LoadRun {
    /// Time since the start of the run (the clock of [`AddResult::sent`]/`done`).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests answered (or failed) so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Workers send no new request after this.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits (bounded) until `n` more requests are done than when called.
    pub async fn wait_more(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.done() + n;
        let deadline = Deadline::after(timeout, format!("waiting for {n} more load requests"));
        loop {
            if self.done() >= target {
                return Ok(());
            }
            deadline.check(format!("{} of {target} done", self.done()))?;
            sleep_ms(20).await;
        }
    }

    /// Waits for every worker (call [`LoadRun::stop`] first for an open-ended run); results are
    /// sorted by `seq`.
    pub async fn finish(mut self) -> Result<LoadReport> {
        let mut results = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            results.extend(w.await.map_err(|e| anyhow!("load worker: {e}"))?);
        }
        results.sort_by_key(|r| r.seq);
        Ok(LoadReport {
            wall_start_ms: self.wall_start_ms,
            elapsed: self.started.elapsed(),
            results,
        })
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The results of a finished load run.
pub struct LoadReport {
    /// Wall clock (Unix ms) at the start of the run.
    pub wall_start_ms: u64,
    pub elapsed: Duration,
    pub results: Vec<AddResult>,
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        self.results.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Outcome class → count.
    pub fn histogram(&self) -> BTreeMap<String, usize> {
        histogram(self.results.iter())
    }

    /// Fails unless every request answered 200; names the statuses and a few examples.
    pub fn expect_all_ok(&self) -> Result<()> {
        let bad: Vec<&AddResult> = self.results.iter().filter(|r| !r.outcome.is_ok()).collect();
        if bad.is_empty() {
            return Ok(());
        }
        let examples: Vec<String> = bad.iter().take(8).map(|r| describe(r)).collect();
        bail!(
            "{} of {} requests did not answer 200: {:?}; examples:\n  {}",
            bad.len(),
            self.results.len(),
            histogram(bad.iter().copied()),
            examples.join("\n  ")
        )
    }

    /// The totals returned by the 200 answers, per key.
    pub fn values_per_key(&self) -> BTreeMap<String, Vec<i64>> {
        let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for r in &self.results {
            if let AddOutcome::Ok(v) = r.outcome {
                m.entry(r.key.clone()).or_default().push(v);
            }
        }
        m
    }

    /// Requests sent per key (whatever their outcome).
    pub fn requests_per_key(&self) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.results {
            *m.entry(r.key.clone()).or_default() += 1;
        }
        m
    }
}

impl LoadReport {
    /// Every request for `key`, in send order, one per line.
    pub fn timeline(&self, key: &str) -> String {
        let mut rs: Vec<&AddResult> = self.results.iter().filter(|r| r.key == key).collect();
        rs.sort_by_key(|r| r.sent);
        rs.iter()
            .map(|r| {
                format!(
                    "    [{} – {} UTC] {}",
                    utc_time_of_day(self.wall_start_ms + r.sent.as_millis() as u64),
                    utc_time_of_day(self.wall_start_ms + r.done.as_millis() as u64),
                    describe(r)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn histogram<'a>(results: impl Iterator<Item = &'a AddResult>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        *m.entry(r.outcome.class()).or_default() += 1;
    }
    m
}

/// One line about a request: key, idempotency key, times, outcome.
pub fn describe(r: &AddResult) -> String {
    format!(
        "#{} {} idem={:?} sent {} ms done {} ms: {:?}",
        r.seq,
        r.key,
        r.idempotency_key,
        r.sent.as_millis(),
        r.done.as_millis(),
        r.outcome
    )
}

/// Keys whose returned totals are not exactly `1..=n` (see [`check_exact_sequences`]).
pub fn bad_sequence_keys(values: &BTreeMap<String, Vec<i64>>, expected_n: &BTreeMap<String, usize>) -> Vec<String> {
    let mut bad: Vec<String> = expected_n
        .iter()
        .filter(|(key, n)| {
            let mut v = values.get(*key).cloned().unwrap_or_default();
            v.sort_unstable();
            v != (1..=**n as i64).collect::<Vec<_>>()
        })
        .map(|(k, _)| k.clone())
        .collect();
    bad.extend(values.keys().filter(|k| !expected_n.contains_key(*k)).cloned());
    bad
}

/// Every key's returned totals must be exactly `1..=n` for its `n` applied adds: each add saw
/// every earlier one, none was applied twice, none is missing. `expected_n` gives n per key.
pub fn check_exact_sequences(values: &BTreeMap<String, Vec<i64>>, expected_n: &BTreeMap<String, usize>) -> Result<()> {
    let mut problems = Vec::new();
    for (key, n) in expected_n {
        let mut v = values.get(key).cloned().unwrap_or_default();
        v.sort_unstable();
        let expected: Vec<i64> = (1..=*n as i64).collect();
        if v != expected {
            let dups: Vec<i64> = v.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).take(10).collect();
            let missing: Vec<i64> = expected
                .iter()
                .filter(|x| v.binary_search(x).is_err())
                .take(10)
                .copied()
                .collect();
            problems.push(format!(
                "{key}: {} totals returned for {n} adds; duplicates {dups:?}, missing {missing:?}, max {:?}",
                v.len(),
                v.last()
            ));
        }
    }
    for key in values.keys() {
        if !expected_n.contains_key(key) {
            problems.push(format!("{key}: totals returned for a key without requests"));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} keys with totals that are not exactly 1..=n (first 20):\n  {}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
    Ok(())
}

/// `POST {base}/Counter/{key}/get` for every key (32 at a time) must equal `expected[key]`.
pub async fn verify_counter_totals(http: &Http, base: &str, expected: &BTreeMap<String, usize>) -> Result<()> {
    let got = futures_util::stream::iter(expected.iter().map(|(key, n)| async move {
        let url = format!("{base}/Counter/{key}/get");
        let r = http.post_timeout(&url, "", &[], Duration::from_secs(60)).await;
        (key.clone(), *n, r)
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    let mut wrong = Vec::new();
    for (key, n, r) in got {
        match r {
            Ok(r) if r.status == 200 => match r.json().ok().and_then(|v| v.as_i64()) {
                Some(v) if v == n as i64 => {}
                _ => wrong.push(format!("{key}: get = {}, expected {n}", r.text())),
            },
            Ok(r) => wrong.push(format!("{key}: get answered {r}")),
            Err(e) => wrong.push(format!("{key}: get failed: {e:#}")),
        }
    }
    wrong.sort();
    ensure!(
        wrong.is_empty(),
        "{} of {} keys have a wrong total (first 20):\n  {}",
        wrong.len(),
        expected.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
    Ok(())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in ms, as in the nodes' log timestamps.
pub fn utc_time_of_day(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, (s / 60) % 60, s % 60)
}
