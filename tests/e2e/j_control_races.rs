//! Issue 8 (a, b): cancel and kill racing completion, and delays out of range.
//!
//! 2,000 `/send` adds (with idempotency keys) over 20 Counter keys, each cancelled — or, in the
//! second run, killed — 0–10 ms after it was accepted. Every invocation must end within 30 s;
//! attach, output and the idempotency key must answer for every one; none may stay `pending`;
//! after a restart nothing counts as in flight; and for kill, no invocation whose effect was
//! applied may report `killed`: each key's counter equals the number of its adds that completed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::sync::Semaphore;

use crate::harness::*;

const KEYS: usize = 20;
const ADDS_PER_KEY: usize = 100;
const CONCURRENCY: usize = 32;

#[derive(Debug)]
struct Op {
    key: String,
    idem: String,
    id: String,
    control_status: u16,
}

/// Sends every add, and `action`s each one 0–10 ms after its 202.
async fn race(kiln: &Arc<Kiln>, run: &str, action: &'static str) -> Result<Vec<Op>> {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..KEYS * ADDS_PER_KEY {
        let (kiln, permits) = (kiln.clone(), permits.clone());
        let key = format!("{run}-{}", i % KEYS);
        let idem = format!("{run}-op-{i}");
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let resp = kiln.send_idem(&format!("Counter/{key}/add"), "1", &idem).await?;
            let id = send_id(&resp).with_context(|| format!("send {idem}"))?;
            sleep_ms(fastrand::u64(0..=10)).await;
            let control = kiln.patch_invocation(&id, action).await?;
            Ok::<_, anyhow::Error>(Op {
                key,
                idem,
                id,
                control_status: control.status,
            })
        }));
    }
    let mut ops = Vec::new();
    for t in tasks {
        ops.push(t.await??);
    }
    Ok(ops)
}

/// Checks every op ended, answers on attach, output and its idempotency key; returns the
/// number of adds per key that completed with a value, and the statuses seen.
async fn check_ended(kiln: &Kiln, ops: &[Op]) -> Result<(BTreeMap<String, i64>, BTreeMap<String, usize>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut completed: BTreeMap<String, i64> = BTreeMap::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let v = kiln.wait_finished(&op.id, left).await?;
        let status = inv_status(&v).to_string();
        if status == "completed" && matches!(inv_output(&v), Some(Ok(_))) {
            *completed.entry(op.key.clone()).or_default() += 1;
        }
        *statuses.entry(status).or_default() += 1;
        let attach = kiln.attach(&op.id, Duration::from_secs(5)).await?;
        ensure!(attach.status != 470, "attach of {} did not answer: {attach}", op.id);
        let output = kiln.output(&op.id).await?;
        ensure!(
            output.status != 470,
            "output of finished {} answered 470: {output}",
            op.id
        );
        let again = kiln
            .send_idem(&format!("Counter/{}/add", op.key), "1", &op.idem)
            .await?;
        ensure!(
            send_id(&again)? == op.id,
            "idempotency key {} gave another invocation: {again}",
            op.idem
        );
    }
    Ok((completed, statuses))
}

#[test]
fn j_cancel_and_kill_racing_completion_leave_nothing_pending() {
    run(
        "j_cancel_and_kill_racing_completion_leave_nothing_pending",
        Duration::from_secs(400),
        |env| async move {
            let svc = Service::start(&env, Jar::Counter, &[]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::retry(50, 500)).await?;
            register_expect(&kiln, &svc.uri(), &["Counter"]).await?;

            for (run, action) in [("cancel", "cancel"), ("kill", "kill")] {
                let shared = Arc::new(kiln);
                let t = Instant::now();
                let ops = race(&shared, run, action).await?;
                let sent_ms = t.elapsed().as_millis();
                kiln = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("kiln still shared"))?;
                let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
                for op in &ops {
                    *answers.entry(op.control_status).or_default() += 1;
                }
                let (completed, statuses) = check_ended(&kiln, &ops).await?;
                println!(
                    "j_{run}: {} adds sent and {action}ed in {sent_ms} ms; {action} answers {answers:?}; statuses {statuses:?}",
                    ops.len()
                );
                ensure!(
                    answers.keys().all(|s| *s == 202 || *s == 409),
                    "{action} answered other than 202 (done) or 409 (already finished): {answers:?}"
                );
                ensure!(
                    !statuses.contains_key("pending"),
                    "invocations left pending: {statuses:?}"
                );
                // Exactly-once per key: the counter holds one per add that completed, so no add
                // whose effect was applied reports `killed` or `cancelled`.
                for i in 0..KEYS {
                    let key = format!("{run}-{i}");
                    let value = kiln.counter_get(&key).await?;
                    let expected = completed.get(&key).copied().unwrap_or(0);
                    ensure!(
                        value == expected,
                        "{key}: counter is {value} but {expected} adds completed (an applied add reported failure, or one was lost)"
                    );
                }
            }

            kiln.restart().await?;
            let after = inflight(&kiln).await?;
            println!("j: in flight after restart: {after}");
            ensure!(after == 0, "{after} invocations count as in flight after a restart");
            Ok(())
        },
    );
}

#[test]
fn j_delays_beyond_range_are_refused() {
    run(
        "j_delays_beyond_range_are_refused",
        Duration::from_secs(60),
        |env| async move {
            let svc = Service::start(&env, Jar::Counter, &[]).await?;
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["Counter"]).await?;
            for delay in ["18446744073709551615ms", "18446744073709551615h", "3651d", "99999999h"] {
                let resp = kiln.call(&format!("Counter/d/add/send?delay={delay}"), "1").await?;
                println!("j_delay: delay={delay} → {resp}");
                let (code, message) = resp.expect_error(400)?;
                ensure!(code == 400 && !message.is_empty(), "delay={delay}: {resp}");
            }
            // Nothing ran at once, and an in-range delay is still scheduled.
            sleep_ms(300).await;
            ensure!(kiln.counter_get("d").await? == 0, "a refused delayed send ran");
            let id = send_id(&kiln.call("Counter/d/add/send?delay=1h", "1").await?)?;
            let v = kiln.invocation(&id).await?;
            ensure!(inv_status(&v) == "scheduled", "a 1 h delay: {}", inv_summary(&v));
            Ok(())
        },
    );
}
