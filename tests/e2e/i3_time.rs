//! (i3 b, c, paging) Durable time and one-way messages (tests/services): a durable sleep that
//! suspends across a runtime crash; 1000 one-way sends that arrive exactly once and in order
//! through a crash of each side; delayed sends and the paged admin listing.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::harness::*;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const NAP_MS: u64 = 5000;

#[test]
fn i3_b_sleep_suspends_across_restart() {
    run(
        "i3_b_sleep_suspends_across_restart",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["Sleeper"]).await?;

            let t0 = Instant::now();
            let id = kiln.send("Sleeper/nap", &NAP_MS.to_string()).await?;
            // (ms since send, status, attempts)
            let mut timeline: Vec<(u128, String, i64)> = Vec::new();
            let observe = |v: &Value, t: &mut Vec<(u128, String, i64)>| {
                t.push((
                    t0.elapsed().as_millis(),
                    inv_status(v).to_string(),
                    v["attempts"].as_i64().unwrap_or(-1),
                ));
            };
            while t0.elapsed() < Duration::from_millis(2000) {
                let v = kiln.invocation(&id).await?;
                observe(&v, &mut timeline);
                sleep_ms(100).await;
            }
            let before = kiln.invocation(&id).await?;
            println!("i3_b: before the crash: {}", inv_summary(&before));
            kiln.kill();
            let killed_ms = t0.elapsed().as_millis();
            kiln.restart().await?;
            let ready_ms = t0.elapsed().as_millis();
            let mut first_after: Option<Value> = None;
            while t0.elapsed() < Duration::from_millis(NAP_MS - 400) {
                let v = kiln.invocation(&id).await?;
                observe(&v, &mut timeline);
                first_after.get_or_insert(v);
                sleep_ms(100).await;
            }
            // Completion, observed by polling the output (470 until done).
            let deadline = Deadline::after(Duration::from_secs(20), "waiting for the nap's output");
            let (done_ms, done_unix) = loop {
                let r = kiln.output(&id).await?;
                if r.status == 200 {
                    ensure!(r.json()? == json!("slept"), "nap output: {r}");
                    break (t0.elapsed().as_millis(), unix_ms());
                }
                ensure!(r.status == 470, "output while not done: expected 470, got {r}");
                deadline.check(&r)?;
                sleep_ms(25).await;
            };
            let done = kiln.invocation(&id).await?;
            let created = done["createdAtMs"].as_u64().unwrap_or(0);
            let modified = done["modifiedAtMs"].as_u64().unwrap_or(0);
            let wake = done["journal"]
                .as_array()
                .and_then(|j| j.iter().find(|e| e["kind"] == "sleep"))
                .and_then(|e| e["wake_up_at_ms"].as_u64())
                .ok_or_else(|| anyhow!("no sleep entry with wake_up_at_ms in the journal: {done}"))?;
            let mut compact: Vec<String> = Vec::new();
            for (ms, s, a) in &timeline {
                let item = format!("{s}/a{a}");
                if compact.last().is_none_or(|l| !l.ends_with(&format!(" {item}"))) {
                    compact.push(format!("{ms}ms {item}"));
                }
            }
            println!(
            "i3_b: status timeline (changes only): {}\ni3_b: SIGKILL at {killed_ms} ms, ready at {ready_ms} ms; output seen at \
             {done_ms} ms after the send; sleep began ≈ {} ms after creation, wake_up_at - created = {} ms, \
             completed (modifiedAtMs) - wake_up_at = {} ms; final {}",
            compact.join(", "),
            (wake - NAP_MS).saturating_sub(created),
            wake.saturating_sub(created),
            modified as i64 - wake as i64,
            inv_summary(&done)
        );
            ensure!(
                inv_status(&done) == "completed",
                "nap not completed: {}",
                inv_summary(&done)
            );
            ensure!(
                wake >= created + NAP_MS,
                "wake_up_at_ms {wake} is less than {NAP_MS} ms after creation {created}"
            );
            ensure!(
                modified >= wake && done_unix >= wake,
                "completed before its wake-up time: modified {modified}, seen {done_unix}, wake {wake}"
            );
            ensure!(done_ms >= NAP_MS as u128, "output after {done_ms} ms < {NAP_MS} ms");
            ensure!(
                done_ms < (NAP_MS + 5000) as u128,
                "completed {done_ms} ms after the send: more than 5 s late"
            );
            // While it waits (after the first second), the status must be `suspended`, before and after the restart.
            let first_susp = timeline.iter().find(|(_, s, _)| s == "suspended").map(|(ms, _, _)| *ms);
            ensure!(
                first_susp.is_some_and(|ms| ms <= 1500),
                "not suspended within 1.5 s of the send: {compact:?}"
            );
            let not_susp: Vec<String> = timeline
                .iter()
                .filter(|(ms, s, _)| *ms >= first_susp.unwrap() && s != "suspended")
                .map(|(ms, s, a)| format!("{ms}ms {s}/a{a}"))
                .collect();
            ensure!(
            not_susp.is_empty(),
            "while waiting the status left `suspended` (the SDK would hold a request): {not_susp:?}; after restart first saw {}",
            first_after.as_ref().map(inv_summary).unwrap_or_default()
        );
            ensure!(
                timeline.iter().any(|(ms, s, _)| *ms > ready_ms && s == "suspended"),
                "no `suspended` observed after the restart"
            );
            Ok(())
        },
    );
}

const MESSAGES: usize = 1000;

async fn received(kiln: &Kiln, key: &str) -> Result<Vec<i64>> {
    let r = kiln
        .call_timeout(&format!("Receiver/{key}/received"), "", Duration::from_secs(5))
        .await?;
    let v = r.ok_json()?;
    v.as_array()
        .ok_or_else(|| anyhow!("received() is not a list: {r}"))?
        .iter()
        .map(|x| x.as_i64().ok_or_else(|| anyhow!("non-integer in received(): {r}")))
        .collect()
}

/// Polls `received()` until `pred(len)` (errors, e.g. while the JVM restarts, are retried).
async fn wait_received(
    kiln: &Kiln,
    key: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(usize) -> bool,
) -> Result<Vec<i64>> {
    let deadline = Deadline::after(timeout, format!("waiting for Receiver/{key}: {what}"));
    loop {
        let last = match received(kiln, key).await {
            Ok(v) if pred(v.len()) => return Ok(v),
            Ok(v) => format!("{} received", v.len()),
            Err(e) => format!("{e:#}"),
        };
        deadline.check(last)?;
        sleep_ms(50).await;
    }
}

#[test]
fn i3_c_send_order_exactly_once_through_crashes() {
    run(
        "i3_c_send_order_exactly_once_through_crashes",
        Duration::from_secs(200),
        |env| async move {
            let mut svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::retry(50, 500)).await?;
            register_expect(&kiln, &svc.uri(), &["Sender", "Receiver"]).await?;

            let t0 = Instant::now();
            let id = kiln.send("Sender/k/sendMany", &MESSAGES.to_string()).await?;
            let got = wait_received(&kiln, "k", "≥ 30 messages", Duration::from_secs(60), |n| n >= 30).await?;
            let sender = kiln.invocation(&id).await?;
            let sends = journal_kinds(&sender).iter().filter(|k| *k == "send").count();
            kiln.kill();
            println!(
                "i3_c: SIGKILL kiln at {} ms: {} received, sender {} with {sends} send entries",
                t0.elapsed().as_millis(),
                got.len(),
                inv_status(&sender)
            );
            kiln.restart().await?;
            let at = got.len();
            let got = wait_received(
                &kiln,
                "k",
                "100 more after the kiln restart",
                Duration::from_secs(60),
                |n| n >= (at + 100).min(MESSAGES),
            )
            .await?;
            let sender = kiln.invocation(&id).await?;
            svc.kill();
            println!(
                "i3_c: SIGKILL JVM at {} ms: {} received, sender {}",
                t0.elapsed().as_millis(),
                got.len(),
                inv_summary(&sender).chars().take(120).collect::<String>()
            );
            sleep_ms(300).await;
            svc.restart().await?;
            println!("i3_c: JVM back at {} ms", t0.elapsed().as_millis());

            let out = kiln.attach(&id, Duration::from_secs(90)).await?;
            ensure!(
                out.status == 200 && out.json()? == json!(MESSAGES),
                "sendMany output: {out}"
            );
            let got = wait_received(&kiln, "k", "all messages", Duration::from_secs(120), |n| n >= MESSAGES).await?;
            let all_ms = t0.elapsed().as_millis();
            sleep_ms(1500).await; // late duplicates would show up now
            let got = if received(&kiln, "k").await?.len() != got.len() {
                received(&kiln, "k").await?
            } else {
                got
            };
            let expected: Vec<i64> = (0..MESSAGES as i64).collect();
            let (records, _) = list_all(&kiln, "service=Receiver&handler=record", 1000).await?;
            let unfinished = records.iter().filter(|v| !is_finished(v)).count();
            println!(
                "i3_c: all {MESSAGES} received at {all_ms} ms; {} record invocations ({unfinished} unfinished)",
                records.len()
            );
            if got != expected {
                let mut seen = std::collections::BTreeMap::<i64, usize>::new();
                for x in &got {
                    *seen.entry(*x).or_default() += 1;
                }
                let dups: Vec<_> = seen
                    .iter()
                    .filter(|(_, c)| **c > 1)
                    .map(|(x, c)| format!("{x}×{c}"))
                    .collect();
                let missing: Vec<i64> = expected.iter().filter(|x| !seen.contains_key(x)).copied().collect();
                let first_disorder = got.windows(2).position(|w| w[0] >= w[1]);
                bail!(
                "received {} items, expected 0..{MESSAGES} once each in order; duplicates {dups:?}; missing {missing:?}; \
                 first out-of-order at position {first_disorder:?} ({:?})",
                got.len(),
                first_disorder.map(|p| &got[p.saturating_sub(3)..(p + 4).min(got.len())])
            );
            }
            ensure!(
                records.len() == MESSAGES,
                "{} Receiver.record invocations for {MESSAGES} sends",
                records.len()
            );
            Ok(())
        },
    );
}

#[test]
fn i3_i_delayed_send_and_list_paging() {
    run(
        "i3_i_delayed_send_and_list_paging",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["Sleeper"]).await?;

            // A delayed send is `scheduled` until due, then runs.
            let t0 = Instant::now();
            let r = kiln.call("Sleeper/nap/send?delay=1500ms", "0").await?;
            let due_id = send_id(&r)?;
            let v = kiln.invocation(&due_id).await?;
            ensure!(
                inv_status(&v) == "scheduled",
                "delay=1500ms: expected scheduled, got {}",
                inv_summary(&v)
            );
            let done = kiln.wait_finished(&due_id, Duration::from_secs(15)).await?;
            let ran_ms = t0.elapsed().as_millis();
            let lag =
                done["modifiedAtMs"].as_u64().unwrap_or(0) as i64 - done["createdAtMs"].as_u64().unwrap_or(0) as i64;
            println!(
                "i3_i: delay=1500ms: seen finished at {ran_ms} ms; modifiedAtMs - createdAtMs = {lag} ms; {}",
                inv_summary(&done)
            );
            ensure!(
                inv_status(&done) == "completed" && lag >= 1500,
                "delayed send ran early or failed: {}",
                inv_summary(&done)
            );
            let r = kiln.call("Sleeper/nap?delay=1s", "0").await?;
            r.expect_error(400).context("?delay without /send")?;

            let mut scheduled = Vec::new();
            for _ in 0..5 {
                let r = kiln.call("Sleeper/nap/send?delay=2m", "0").await?;
                scheduled.push(send_id(&r)?);
            }
            for _ in 0..3 {
                kiln.call("Sleeper/nap", "0").await?.ok_json()?;
            }
            scheduled.sort();

            let mut pages = Vec::new();
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let q = match &after {
                    None => "status=scheduled&service=Sleeper&limit=2".to_string(),
                    Some(a) => format!("status=scheduled&service=Sleeper&limit=2&after={a}"),
                };
                let (items, next) = list_page(&kiln, &q).await?;
                pages.push(items.len());
                for v in &items {
                    ensure!(
                        inv_status(v) == "scheduled" && v["service"] == "Sleeper",
                        "status=scheduled listing returned {v}"
                    );
                    seen.push(v["id"].as_str().unwrap_or("").to_string());
                }
                ensure!(pages.len() <= 10, "paging does not end: pages {pages:?}");
                match next {
                    Some(n) => {
                        ensure!(
                            Some(&n) == seen.last(),
                            "nextAfter {n} is not the page's last id {:?}",
                            seen.last()
                        );
                        after = Some(n)
                    }
                    None => break,
                }
            }
            println!("i3_i: status=scheduled&service=Sleeper&limit=2 → pages {pages:?}: {seen:?}");
            // Pages follow the store's key order (partition, id), not the ids' text order.
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            ensure!(sorted.len() == seen.len(), "an id appeared on two pages: {seen:?}");
            ensure!(
                sorted == scheduled,
                "paged scheduled listing {seen:?} != the 5 scheduled ids {scheduled:?}"
            );
            ensure!(pages.iter().all(|n| *n <= 2), "a page exceeded limit=2: {pages:?}");

            let (completed, n_pages) = list_all(&kiln, "status=completed&service=Sleeper", 2).await?;
            ensure!(
                completed.len() == 4 && completed.iter().all(|v| inv_status(v) == "completed"),
                "status=completed&service=Sleeper: expected 4 completed, got {:?}",
                completed.iter().map(|v| inv_status(v).to_string()).collect::<Vec<_>>()
            );
            let (all, _) = list_all(&kiln, "service=Sleeper&handler=nap", 3).await?;
            ensure!(
                all.len() == 9,
                "service=Sleeper&handler=nap: expected 9 invocations, got {}",
                all.len()
            );
            let (none, _) = list_page(&kiln, "service=Sleeper&handler=noSuch").await?;
            ensure!(none.is_empty(), "handler=noSuch listed {none:?}");
            println!("i3_i: completed listing: 4 in {n_pages} pages of 2; unfiltered Sleeper: 9");
            let r = kiln
                .http
                .get(&format!("{}/invocations?status=sleepy", kiln.admin()))
                .await?;
            r.expect_error(400).context("unknown status")?;
            let r = kiln
                .http
                .get(&format!("{}/invocations?after=nope", kiln.admin()))
                .await?;
            r.expect_error(400).context("malformed after")?;
            Ok(())
        },
    );
}
