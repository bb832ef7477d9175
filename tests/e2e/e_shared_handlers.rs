//! (e) Shared handlers run while an exclusive handler of the same key holds the lock, and may not
//! write state.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::harness::*;

#[test]
fn e_shared_handlers_concurrent_and_read_only() {
    run(
        "e_shared_handlers_concurrent_and_read_only",
        Duration::from_secs(120),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            register_expect(&kiln, &svc.uri(), &["Slowpoke"]).await?;

            let hold_ms = 3000u64;
            let t0 = Instant::now();
            let id = kiln.send("Slowpoke/k/hold", &hold_ms.to_string()).await?;
            let running = kiln
                .wait_invocation(&id, Duration::from_secs(10), "status running", |v| {
                    inv_status(v) == "running"
                })
                .await?;
            let running_ms = t0.elapsed().as_millis();

            // A shared handler answers at once, while the exclusive one still holds the key.
            let t = Instant::now();
            let peek = kiln.call("Slowpoke/k/peek", "").await.context("peek during hold")?;
            let peek_ms = t.elapsed().as_millis();
            let peek_val = peek.ok_json()?;
            ensure!(peek_val.is_i64(), "peek should answer a number: {peek}");
            ensure!(
                peek_ms < 1000,
                "peek took {peek_ms} ms while hold was running (must be < 1000 ms)"
            );
            let during = kiln.invocation(&id).await?;
            ensure!(
                inv_status(&during) == "running" && t0.elapsed().as_millis() < hold_ms as u128,
                "hold was no longer running when peek answered ({} ms after send): {}",
                t0.elapsed().as_millis(),
                inv_summary(&during)
            );

            // A shared handler that writes state fails (409, "cannot write state").
            let t = Instant::now();
            let sneaky = kiln.call("Slowpoke/k/sneakySet", "").await?;
            let sneaky_ms = t.elapsed().as_millis();
            let (code, message) = sneaky.expect_error(409)?;
            ensure!(
                message.contains("cannot write state"),
                "sneakySet message should contain \"cannot write state\": {sneaky}"
            );
            ensure!(code == 409, "sneakySet failure code should be 409: {sneaky}");

            // Output of a running invocation: 470 JSON, on both paths.
            for url in [
                format!("{}/invocations/{id}/output", kiln.ingress()),
                format!("{}/restate/invocation/{id}/output", kiln.ingress()),
            ] {
                let r = kiln.http.get_timeout(&url, Duration::from_secs(5)).await?;
                r.expect_error(470)
                    .with_context(|| format!("GET {url} while running"))?;
            }

            // The hold completes (attach on both paths), and its state change is visible afterwards.
            let att = kiln.attach(&id, Duration::from_secs(30)).await?;
            att.expect_status(200)?;
            let att2 = kiln
                .http
                .get_timeout(
                    &format!("{}/restate/invocation/{id}/attach", kiln.ingress()),
                    Duration::from_secs(10),
                )
                .await?;
            ensure!(
                att2.status == 200 && att2.body == att.body,
                "/restate/invocation/{{id}}/attach differs from /invocations/{{id}}/attach: {att2} vs {att}"
            );
            let out = kiln.output(&id).await?;
            ensure!(
                out.status == 200 && out.body == att.body,
                "/invocations/{{id}}/output after completion should equal the attach response: {out} vs {att}"
            );
            let after = kiln.call("Slowpoke/k/peek", "").await?.ok_json()?;
            ensure!(after == 1, "peek after hold completed should be 1, got {after}");
            println!(
                "e: hold running {running_ms} ms after send ({}); peek answered {peek_val} in {peek_ms} ms; \
             sneakySet → 500 code {code} {message:?} in {sneaky_ms} ms; hold done at {} ms, peek then = {after}",
                inv_summary(&running),
                t0.elapsed().as_millis()
            );
            Ok(())
        },
    );
}
