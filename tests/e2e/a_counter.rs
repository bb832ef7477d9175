//! (a) Exclusive handlers of one key never overlap and every acknowledged add counts once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use tokio::sync::Semaphore;

use crate::harness::*;

/// Outcome of one `add` request.
type AddResult = Result<Resp>;

/// Sums up statuses and transport errors; returns an error describing every non-200.
fn check_all_ok(results: &[(String, AddResult)]) -> Result<()> {
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    for (what, r) in results {
        let key = match r {
            Ok(resp) if resp.status == 200 => continue,
            Ok(resp) => {
                if examples.len() < 5 {
                    examples.push(format!("{what}: {resp}"));
                }
                format!("HTTP {}", resp.status)
            }
            Err(e) => {
                if examples.len() < 5 {
                    examples.push(format!("{what}: {e:#}"));
                }
                "transport error".to_string()
            }
        };
        *by_status.entry(key).or_default() += 1;
    }
    ensure!(
        by_status.is_empty(),
        "{} of {} requests did not answer 200: {:?}; examples: {:#?}",
        by_status.values().sum::<usize>(),
        results.len(),
        by_status,
        examples
    );
    Ok(())
}

/// The values returned by `add(1)` on one key must be exactly 1..=n (each add saw every earlier one).
fn check_sequence(key: &str, mut values: Vec<i64>, n: i64) -> Result<()> {
    values.sort_unstable();
    let expected: Vec<i64> = (1..=n).collect();
    if values != expected {
        let mut dups = Vec::new();
        for w in values.windows(2) {
            if w[0] == w[1] && dups.len() < 10 {
                dups.push(w[0]);
            }
        }
        let missing: Vec<i64> = expected
            .iter()
            .filter(|v| values.binary_search(v).is_err())
            .take(10)
            .copied()
            .collect();
        return Err(anyhow!(
            "key {key}: add(1) results are not exactly 1..={n}: got {} values, min {:?}, max {:?}, \
             duplicates (first 10) {dups:?}, missing (first 10) {missing:?}",
            values.len(),
            values.first(),
            values.last()
        ));
    }
    Ok(())
}

#[test]
fn a_thousand_concurrent_adds_on_one_key() {
    run(
        "a_thousand_concurrent_adds_on_one_key",
        Duration::from_secs(240),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;

            let n = 1000;
            let url = format!("{}/Counter/hot/add", kiln.ingress());
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let http = kiln.http.clone();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let r = http.post_timeout(&url, "1", &[], Duration::from_secs(180)).await;
                    (format!("request #{i}"), r)
                }));
            }
            let mut results = Vec::with_capacity(n);
            for t in tasks {
                results.push(t.await?);
            }
            let elapsed = started.elapsed();
            check_all_ok(&results)?;
            let values: Vec<i64> = results
                .iter()
                .map(|(what, r)| {
                    let r = r.as_ref().unwrap();
                    r.json()?
                        .as_i64()
                        .ok_or_else(|| anyhow!("{what}: add answered a non-number: {r}"))
                })
                .collect::<Result<_>>()?;
            check_sequence("hot", values, n as i64)?;
            let total = kiln.counter_get("hot").await?;
            println!(
                "a: {n} concurrent add(1) on one key: all 200 in {:.2} s ({:.0} req/s); get = {total}",
                elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64()
            );
            ensure!(total == n as i64, "Counter/hot/get = {total}, expected {n}");
            Ok(())
        },
    );
}

#[test]
fn a_ten_thousand_adds_over_100_keys() {
    run(
        "a_ten_thousand_adds_over_100_keys",
        Duration::from_secs(300),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;

            let keys = 100usize;
            let per_key = 100usize;
            let concurrency = 200usize;
            let sem = Arc::new(Semaphore::new(concurrency));
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(keys * per_key);
            for i in 0..keys * per_key {
                let key = format!("k{:03}", i % keys);
                let url = format!("{}/Counter/{key}/add", kiln.ingress());
                let http = kiln.http.clone();
                let permit = sem.clone().acquire_owned().await?;
                tasks.push(tokio::spawn(async move {
                    let r = http.post_timeout(&url, "1", &[], Duration::from_secs(180)).await;
                    drop(permit);
                    (key, r)
                }));
            }
            let mut results = Vec::with_capacity(tasks.len());
            for t in tasks {
                results.push(t.await?);
            }
            let elapsed = started.elapsed();
            check_all_ok(&results)?;
            let mut per_key_values: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for (key, r) in &results {
                let r = r.as_ref().unwrap();
                let v = r
                    .json()?
                    .as_i64()
                    .ok_or_else(|| anyhow!("{key}: add answered a non-number: {r}"))?;
                per_key_values.entry(key.clone()).or_default().push(v);
            }
            for (key, values) in per_key_values {
                check_sequence(&key, values, per_key as i64)?;
            }
            // Every key's count is exact.
            let mut wrong = Vec::new();
            let gets = futures_util::future::join_all((0..keys).map(|k| {
                let kiln = &kiln;
                async move {
                    let key = format!("k{k:03}");
                    let v = kiln.counter_get(&key).await;
                    (key, v)
                }
            }))
            .await;
            for (key, v) in gets {
                let v = v?;
                if v != per_key as i64 {
                    wrong.push(format!("{key}={v}"));
                }
            }
            println!(
                "a: {} adds over {keys} keys at concurrency {concurrency}: all 200 in {:.2} s ({:.0} req/s); \
             keys with a wrong count: {}",
                keys * per_key,
                elapsed.as_secs_f64(),
                (keys * per_key) as f64 / elapsed.as_secs_f64(),
                wrong.len()
            );
            ensure!(wrong.is_empty(), "counts differ from {per_key}: {wrong:?}");
            Ok(())
        },
    );
}
