//! (i3 f, continued) Cancel and kill of invocations in every waiting state — suspended on a
//! timer, pending behind an object's lock, scheduled by a delayed send — and an acknowledged
//! cancel or kill must survive a SIGKILL of kiln (tests/services).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::harness::*;

fn expect_failure(v: &serde_json::Value, code: u64, what: &str) -> Result<()> {
    anyhow::ensure!(
        matches!(inv_output(v), Some(Err((c, _))) if c == code),
        "{what}: expected a failure with code {code}: {}",
        inv_summary(v)
    );
    Ok(())
}

#[test]
fn i3_f_cancel_kill_waiting_invocations_durably() {
    run(
        "i3_f_cancel_kill_waiting_invocations_durably",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::retry(50, 500)).await?;
            register_expect(&kiln, &svc.uri(), &["Sleeper", "Slowpoke"]).await?;

            // Suspended on a 60 s timer: cancel → 409 at the await, kill → killed; both at once.
            let s1 = kiln.send("Sleeper/nap", "60000").await?;
            let s2 = kiln.send("Sleeper/nap", "60000").await?;
            for id in [&s1, &s2] {
                kiln.wait_invocation(id, Duration::from_secs(5), "suspended", |v| {
                    inv_status(v) == "suspended"
                })
                .await?;
            }
            let t = Instant::now();
            kiln.patch_invocation(&s1, "cancel")
                .await?
                .expect_status(202)
                .context("cancel s1")?;
            kiln.patch_invocation(&s2, "kill")
                .await?
                .expect_status(202)
                .context("kill s2")?;
            let v1 = kiln.wait_finished(&s1, Duration::from_secs(5)).await?;
            let v2 = kiln.wait_finished(&s2, Duration::from_secs(5)).await?;
            println!(
                "i3_f2: suspended nap cancelled → {}\ni3_f2: suspended nap killed → {} (both within {} ms)",
                inv_summary(&v1),
                inv_summary(&v2),
                t.elapsed().as_millis()
            );
            expect_failure(&v1, 409, "cancelled suspended nap")?;
            anyhow::ensure!(
                journal_kinds(&v1).iter().any(|k| k == "cancelled"),
                "no `cancelled` entry: {}",
                inv_summary(&v1)
            );
            anyhow::ensure!(
                inv_status(&v2) == "killed",
                "killed suspended nap: {}",
                inv_summary(&v2)
            );
            expect_failure(&v2, 410, "killed suspended nap")?;

            // Pending behind Slowpoke/k's lock, and scheduled by delayed sends.
            let h1 = kiln.send("Slowpoke/k/hold", "2500").await?;
            kiln.wait_invocation(&h1, Duration::from_secs(5), "running", |v| inv_status(v) == "running")
                .await?;
            let h2 = kiln.send("Slowpoke/k/hold", "10").await?;
            let d1 = send_id(&kiln.call("Sleeper/nap/send?delay=2s", "0").await?)?;
            let d2 = send_id(&kiln.call("Sleeper/nap/send?delay=2s", "0").await?)?;
            kiln.patch_invocation(&h2, "kill")
                .await?
                .expect_status(202)
                .context("kill pending h2")?;
            kiln.patch_invocation(&d1, "kill")
                .await?
                .expect_status(202)
                .context("kill scheduled d1")?;
            kiln.patch_invocation(&d2, "cancel")
                .await?
                .expect_status(202)
                .context("cancel scheduled d2")?;
            sleep_ms(300).await;
            let mut at_once = Vec::new();
            for (name, id) in [("pending h2", &h2), ("scheduled d1", &d1)] {
                let v = kiln.invocation(id).await?;
                at_once.push(format!("{name}: {}", inv_status(&v)));
            }
            println!("i3_f2: 300 ms after kill (before the crash): {at_once:?}");
            if at_once.iter().any(|s| !s.ends_with("killed")) {
                println!("i3_f2: NOTE: kill of a pending/scheduled invocation does not end it at once (protocol §5 says \"at once\")");
            }

            kiln.kill();
            kiln.restart().await?;
            let mut outcomes = Vec::new();
            for (name, id) in [
                ("h1", &h1),
                ("h2 (killed while pending)", &h2),
                ("d1 (killed while scheduled)", &d1),
                ("d2 (cancelled while scheduled)", &d2),
            ] {
                let v = kiln.wait_finished(id, Duration::from_secs(20)).await?;
                outcomes.push(format!("{name}: {}", inv_summary(&v)));
            }
            let holds = kiln.call("Slowpoke/k/peek", "").await?.ok_json()?;
            println!(
                "i3_f2: after a kiln SIGKILL + restart:\n  {}\n  Slowpoke/k holds = {holds}",
                outcomes.join("\n  ")
            );
            let v = kiln.invocation(&h2).await?;
            anyhow::ensure!(
                inv_status(&v) == "killed" && holds == json!(1),
                "an acknowledged kill (202) of a pending invocation was lost by a kiln restart: h2 {} (Slowpoke/k holds = {holds}, 1 expected)",
                inv_summary(&v)
            );
            let v = kiln.invocation(&d1).await?;
            anyhow::ensure!(
                inv_status(&v) == "killed",
                "an acknowledged kill (202) of a scheduled invocation was lost by a kiln restart: d1 {}",
                inv_summary(&v)
            );
            expect_failure(
                &kiln.invocation(&d2).await?,
                409,
                "scheduled d2 cancelled before the crash",
            )?;
            Ok(())
        },
    );
}
