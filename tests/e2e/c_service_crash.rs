//! (c) SIGKILL the SDK endpoint mid-invocation: the runtime backs off and retries, and once the
//! endpoint is back the invocation completes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::Value;

use crate::harness::*;

#[test]
fn c_service_crash_backoff_and_recovery() {
    run(
        "c_service_crash_backoff_and_recovery",
        Duration::from_secs(180),
        |env| async move {
            let mut steps = Service::start(&env, Jar::Steps, &[("STEP_DELAY_MS", "800")]).await?;
            let kiln = Kiln::start(&env, KilnOpts::retry(50, 400)).await?;
            register_expect(&kiln, &steps.uri(), &["Steps"]).await?;

            let t0 = Instant::now();
            let id = kiln.send("Steps/threeStep", &json_str("c")).await?;
            sleep_ms(400).await;
            let before_kill = kiln.invocation(&id).await?;
            steps.kill();
            let killed_ms = t0.elapsed().as_millis();
            println!(
                "c: before SIGKILL of the JVM at {killed_ms} ms: {}",
                inv_summary(&before_kill)
            );

            // Observe the invocation while the endpoint is down.
            let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
            let mut max_attempts = 0i64;
            let mut first_error: Option<String> = None;
            let mut first_backing_off: Option<String> = None;
            let deadline = Deadline::after(Duration::from_secs(8), "observing retries while the endpoint is down");
            let mut last;
            loop {
                let v = kiln.invocation(&id).await?;
                let status = inv_status(&v).to_string();
                *statuses.entry(status.clone()).or_default() += 1;
                max_attempts = max_attempts.max(v.get("attempts").and_then(Value::as_i64).unwrap_or(0));
                if let Some(e) = v.get("lastError").and_then(Value::as_str) {
                    first_error.get_or_insert_with(|| e.to_string());
                }
                if status == "backing-off" && first_backing_off.is_none() {
                    first_backing_off = Some(format!("at {} ms: {}", t0.elapsed().as_millis(), inv_summary(&v)));
                }
                ensure!(
                    status != "completed" && status != "failed",
                    "invocation ended while its endpoint was down: {}",
                    inv_summary(&v)
                );
                last = inv_summary(&v);
                // Keep watching for at least 1.5 s, so several back-off rounds are seen.
                let seen_all = max_attempts >= 2 && first_error.is_some() && first_backing_off.is_some();
                if (seen_all && t0.elapsed().as_millis() > killed_ms + 1500) || deadline.expired() {
                    break;
                }
                sleep_ms(20).await;
            }
            println!(
            "c: while the endpoint was down: statuses seen (status → polls) {statuses:?}; max attempts {max_attempts}; \
             first lastError {first_error:?}; first backing-off {first_backing_off:?}; last {last}"
        );
            ensure!(max_attempts >= 2, "attempts never reached 2");
            ensure!(first_error.is_some(), "lastError never set");
            ensure!(first_backing_off.is_some(), "status backing-off never observed");

            steps.restart().await?;
            let restarted_ms = t0.elapsed().as_millis();
            let r = kiln.attach(&id, Duration::from_secs(60)).await?;
            let v = r.ok_json()?;
            ensure!(
                v.as_str() == Some("c-1 c-2 c-3"),
                "attach: expected \"c-1 c-2 c-3\", got {r}"
            );
            let fin = kiln.invocation(&id).await?;
            println!(
                "c: endpoint restarted at {restarted_ms} ms; attach answered at {} ms; final {}",
                t0.elapsed().as_millis(),
                inv_summary(&fin)
            );
            ensure!(
                inv_status(&fin) == "completed",
                "final status is not completed: {}",
                inv_summary(&fin)
            );
            let runs = fin
                .get("journal")
                .and_then(Value::as_array)
                .map(|j| {
                    j.iter()
                        .filter(|e| e.get("kind").and_then(Value::as_str) == Some("run"))
                        .count()
                })
                .unwrap_or(0);
            ensure!(
                runs == 3,
                "journal should hold exactly 3 run entries, has {runs}: {}",
                inv_summary(&fin)
            );
            Ok::<(), anyhow::Error>(())
        },
    );
}
