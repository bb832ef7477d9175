//! (issue 10 d, e) Answers a Restate user expects: a `TerminalException(422)` answers HTTP 422,
//! input the handler cannot decode answers 400 (terminal, not retried), both ids headers are
//! set, ISO-8601 delays are accepted; and a failing handler's full stack trace reaches the
//! invocation's `lastError` (tests/services `Flaky`).

use std::time::Duration;

use anyhow::{ensure, Context};

use crate::harness::*;

#[test]
fn k_answers_statuses_and_stack_traces() {
    run(
        "k_answers_statuses_and_stack_traces",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let kiln = Kiln::start(&env, KilnOpts::retry(200, 1_000)).await?;
            register_expect(&kiln, &svc.uri(), &["Flaky"]).await?;

            let r = kiln.call("Flaky/unprocessable", &json_str("no such account")).await?;
            let (code, message) = r.expect_error(422).context("TerminalException(422)")?;
            println!(
                "k_answers: TerminalException(422) → HTTP {} code {code} {message:?}",
                r.status
            );
            ensure!(code == 422 && message == "no such account", "{r}");
            let (kiln_id, restate_id) = (r.header("x-kiln-invocation-id"), r.header("x-restate-id"));
            ensure!(
                kiln_id.is_some() && kiln_id == restate_id,
                "both id headers, equal: {kiln_id:?} {restate_id:?}"
            );

            let r = kiln.call("Flaky/fail", "{\"broken").await?;
            let (code, message) = r.expect_error(400).context("undecodable input")?;
            println!(
                "k_answers: undecodable input → HTTP {} code {code} {message:?}",
                r.status
            );
            let id = r.invocation_id().context("the 400 names its invocation")?;
            let v = kiln.invocation(&id).await?;
            ensure!(
                v["attempts"] == 1,
                "undecodable input is not retried: {}",
                inv_summary(&v)
            );

            let r = kiln.call("Flaky/fail/send?delay=PT30S", &json_str("later")).await?;
            let id = send_id(&r).context("ISO-8601 delay")?;
            let v = kiln.invocation(&id).await?;
            ensure!(inv_status(&v) == "scheduled", "PT30S schedules it: {}", inv_summary(&v));
            let r = kiln.call("Flaky/fail/send?delay=PT1.5M", &json_str("bad")).await?;
            r.expect_error(400)
                .context("a fractional minute is not ISO-8601 we accept")?;

            // Attach by idempotency key, at Restate's path shapes (a service, an object).
            kiln.send_idem("Flaky/fail", &json_str("once"), "idem-1")
                .await?
                .expect_status(202)?;
            let url = format!("{}/restate/invocation/Flaky/fail/idem-1/attach", kiln.ingress());
            let r = kiln.http.get_timeout(&url, Duration::from_secs(10)).await?;
            let (code, message) = r.expect_error(418).context("attach by idempotency key")?;
            ensure!(code == 418 && message == "once", "{r}");
            kiln.call_idem("Slowpoke/k/peek", "", "idem-2").await?.ok_json()?;
            let url = format!("{}/restate/invocation/Slowpoke/k/peek/idem-2/output", kiln.ingress());
            let r = kiln.http.get(&url).await?;
            ensure!(
                r.ok_json()? == serde_json::json!(0),
                "output by idempotency key (object): {r}"
            );
            let url = format!("{}/restate/invocation/Slowpoke/k/peek/nope/output", kiln.ingress());
            kiln.http.get(&url).await?.expect_error(404)?;
            println!("k_answers: attach/output by idempotency key: service → 418 \"once\", object → 0, unknown → 404");

            let id = kiln.send("Flaky/boom", &json_str("kaboom")).await?;
            let v = kiln
                .wait_invocation(&id, Duration::from_secs(20), "backing-off with a stack trace", |v| {
                    v["lastError"].as_str().is_some_and(|e| e.contains("\tat "))
                })
                .await?;
            let last = v["lastError"].as_str().unwrap_or_default();
            println!(
                "k_answers: retryable failure → {} lastError, first lines: {:?}",
                inv_status(&v),
                last.lines().take(3).collect::<Vec<_>>()
            );
            ensure!(
                last.starts_with("handler failed: IllegalStateException: kaboom")
                    && last.contains("java.lang.IllegalStateException: kaboom")
                    && last.contains("dev.kiln.testservices.Flaky.boom"),
                "lastError should carry the message and the stack trace: {last}"
            );
            kiln.patch_invocation(&id, "kill").await?.expect_status(202)?;
            Ok(())
        },
    );
}
