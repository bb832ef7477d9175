//! (i3 d, e, g) Awakeables completed over the ingress, a workflow that runs once per key and
//! waits for a durable promise, and a call cycle detected as 508 (tests/services).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::json;

use crate::harness::*;

#[test]
fn i3_d_awakeable_resolve_once() {
    run(
        "i3_d_awakeable_resolve_once",
        Duration::from_secs(120),
        |env| async move {
            let dir = env.new_dir("awakeables");
            let dir_str = dir.to_string_lossy().into_owned();
            let svc = Service::start(&env, Jar::TestServices, &[("AWAKEABLE_DIR", dir_str.as_str())]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["Waiter"]).await?;

            let t0 = Instant::now();
            let id = kiln.send("Waiter/waitFor", &json_str("x1")).await?;
            let awk = awakeable_id(&dir, "x1").await?;
            let hex = awk.strip_prefix("awk_").unwrap_or("");
            ensure!(
                hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && hex[..32] == id["inv_".len()..],
                "awakeable id {awk:?} is not awk_ + the invocation's 32 hex digits ({id}) + 8 hex digits"
            );
            println!(
                "i3_d: awakeable {awk} published {} ms after the send",
                t0.elapsed().as_millis()
            );
            // Waiting longer than suspend_after_ms: the invocation suspends.
            let waiting = kiln
                .wait_invocation(&id, Duration::from_secs(5), "status suspended", |v| {
                    inv_status(v) == "suspended"
                })
                .await?;
            println!("i3_d: while waiting: {}", inv_summary(&waiting));

            let ingress = kiln.ingress();
            let url = |prefix: &str, a: &str, action: &str| format!("{ingress}{prefix}/awakeables/{a}/{action}");
            let r = kiln
                .http
                .post(&url("/restate", &awk, "resolve"), json_str("hello"), &[])
                .await?;
            r.expect_status(202).context("first resolve")?;
            let out = kiln.attach(&id, Duration::from_secs(30)).await?;
            ensure!(
                out.status == 200 && out.json()? == json!("got hello"),
                "Waiter output after resolve: {out}"
            );
            println!(
                "i3_d: resolve → 202; attach → {out} ({} ms after the send)",
                t0.elapsed().as_millis()
            );

            let r = kiln
                .http
                .post(&url("/restate", &awk, "resolve"), json_str("again"), &[])
                .await?;
            let (code, msg) = r.expect_error(409).context("second resolve")?;
            ensure!(
                msg.contains("already completed"),
                "second resolve: message should say already completed: {msg:?}"
            );
            println!("i3_d: second resolve → 409 code {code} {msg:?}");
            let r = kiln.http.post(&url("", &awk, "reject"), "too late", &[]).await?;
            r.expect_error(409).context("reject after resolve")?;
            let out = kiln.output(&id).await?;
            ensure!(
                out.json()? == json!("got hello"),
                "output changed after a second completion: {out}"
            );

            // Reject via the short path: the handler's await fails with the reason.
            let id2 = kiln.send("Waiter/waitFor", &json_str("x2")).await?;
            let awk2 = awakeable_id(&dir, "x2").await?;
            kiln.http
                .post(&url("", &awk2, "reject"), "no thanks", &[])
                .await?
                .expect_status(202)
                .context("reject")?;
            let out2 = kiln.attach(&id2, Duration::from_secs(30)).await?;
            let (code2, msg2) = failure_of(&out2)?;
            ensure!(
                msg2.contains("no thanks"),
                "rejected awakeable: failure should carry the reason: {out2}"
            );
            println!(
                "i3_d: reject → handler failed: HTTP {} code {code2} {msg2:?}",
                out2.status
            );

            // An awakeable survives a SIGKILL of kiln: resolve it after the restart.
            let id3 = kiln.send("Waiter/waitFor", &json_str("x3")).await?;
            let awk3 = awakeable_id(&dir, "x3").await?;
            kiln.kill();
            kiln.restart().await?;
            let r = kiln.http.post(&url("", &awk3, "resolve"), r#"{"n":3}"#, &[]).await?;
            r.expect_status(202).context("resolve after a kiln restart")?;
            let out3 = kiln.attach(&id3, Duration::from_secs(30)).await?;
            ensure!(
                out3.status == 200 && out3.json()? == json!("got {\"n\":3}"),
                "Waiter x3 (resolved after a restart): {out3}"
            );
            println!("i3_d: resolved after a kiln SIGKILL + restart → {out3}");

            // Unknown (well-formed) and malformed ids.
            let unknown = format!("awk_{}0000000a", "0123456789abcdef0123456789abcdef");
            kiln.http
                .post(&url("/restate", &unknown, "resolve"), "1", &[])
                .await?
                .expect_error(404)
                .context("unknown awakeable")?;
            kiln.http
                .post(&url("/restate", "awk_xyz", "resolve"), "1", &[])
                .await?
                .expect_error(400)
                .context("malformed awakeable id")?;
            Ok(())
        },
    );
}

#[test]
fn i3_e_workflow_runs_once() {
    run("i3_e_workflow_runs_once", Duration::from_secs(120), |env| async move {
        let svc = Service::start(&env, Jar::TestServices, &[]).await?;
        let kiln = Kiln::start(&env, KilnOpts::default()).await?;
        register_expect(&kiln, &svc.uri(), &["Signup"]).await?;

        let t0 = Instant::now();
        let spawn_run = |email: &str| {
            let (http, url, body) = (
                kiln.http.clone(),
                format!("{}/Signup/u1/run", kiln.ingress()),
                json_str(email),
            );
            tokio::spawn(async move { http.post_timeout(&url, body, &[], Duration::from_secs(60)).await })
        };
        let first = spawn_run("a@example.com");
        let second = spawn_run("b@example.com");
        let deadline = Deadline::after(
            Duration::from_secs(20),
            "waiting for the Signup/u1 run invocation to wait on its promise",
        );
        let run_id = loop {
            if first.is_finished() {
                let r = first.await.map_err(|e| anyhow!("run task: {e}"))??;
                bail!("POST /Signup/u1/run answered before the promise was confirmed: {r}");
            }
            let (runs, _) = list_page(&kiln, "service=Signup&key=u1&handler=run").await?;
            let waiting = runs.len() == 1 && ["suspended", "running"].contains(&inv_status(&runs[0]));
            if waiting && t0.elapsed() > Duration::from_millis(1500) {
                break runs[0]["id"].as_str().unwrap_or("").to_string();
            }
            deadline.check(format!("{} run invocations: {runs:?}", runs.len()))?;
            sleep_ms(100).await;
        };
        let r = kiln.call("Signup/u1/status", "").await?;
        ensure!(r.ok_json()? == json!("pending"), "status before confirm: {r}");
        let r = kiln
            .http
            .get(&format!("{}/workflows/Signup/u1/output", kiln.ingress()))
            .await?;
        ensure!(
            r.status == 470,
            "workflow output before it finished: expected 470, got {r}"
        );
        ensure!(
            !first.is_finished() && !second.is_finished(),
            "a run call returned before confirm"
        );

        let r = kiln.call("Signup/u1/confirm", &json_str("c0de")).await?;
        ensure!(r.ok_json()? == json!("confirmed"), "confirm: {r}");
        let confirmed_ms = t0.elapsed().as_millis();
        let mut ids = Vec::new();
        for (name, h) in [("first", first), ("second", second)] {
            let r = h.await.map_err(|e| anyhow!("{name} run task: {e}"))??;
            ensure!(
                r.status == 200 && r.json()? == json!("welcome c0de"),
                "{name} run call: {r}"
            );
            ids.push(r.invocation_id());
        }
        println!(
            "i3_e: confirmed at {confirmed_ms} ms; both run calls → \"welcome c0de\" at {} ms, invocation ids {ids:?}",
            t0.elapsed().as_millis()
        );
        ensure!(
            ids.iter().all(|i| i.as_deref() == Some(run_id.as_str())),
            "run calls answered by invocations {ids:?}, expected {run_id}"
        );

        for path in [
            "/workflows/Signup/u1/attach",
            "/restate/workflow/Signup/u1/attach",
            "/workflows/Signup/u1/output",
            "/restate/workflow/Signup/u1/output",
        ] {
            let r = kiln
                .http
                .get_timeout(&format!("{}{path}", kiln.ingress()), Duration::from_secs(10))
                .await?;
            ensure!(r.status == 200 && r.json()? == json!("welcome c0de"), "GET {path}: {r}");
        }
        let r = kiln.call("Signup/u1/run", &json_str("c@example.com")).await?;
        ensure!(
            r.status == 200 && r.json()? == json!("welcome c0de"),
            "third run call after completion: {r}"
        );
        ensure!(
            r.invocation_id().as_deref() == Some(run_id.as_str()),
            "third run call answered by {:?}",
            r.invocation_id()
        );

        let (runs, _) = list_page(&kiln, "service=Signup&key=u1&handler=run").await?;
        ensure!(
            runs.len() == 1,
            "{} run invocations for Signup/u1: {runs:?}",
            runs.len()
        );
        let v = kiln.invocation(&run_id).await?;
        let kinds = journal_kinds(&v);
        let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
        println!("i3_e: the one run invocation: {}", inv_summary(&v));
        ensure!(
            count("input") == 1 && count("get_promise") == 1 && count("output") == 1,
            "run journal should have one input, one get_promise, one output: {kinds:?}"
        );
        let input = v["journal"][0]["value"].as_str().unwrap_or("");
        ensure!(
            input == json_str("a@example.com") || input == json_str("b@example.com"),
            "run input {input:?}"
        );

        let r = kiln.call("Signup/u1/confirm", &json_str("other")).await?;
        let (code, msg) = failure_of(&r).context("second confirm")?;
        println!("i3_e: second confirm → HTTP {} code {code} {msg:?}", r.status);
        ensure!(code == 409, "second confirm: expected code 409, got {r}");
        let r = kiln.call("Signup/u1/status", "").await?;
        ensure!(r.ok_json()? == json!("c0de"), "status after confirm: {r}");
        Ok(())
    });
}

#[test]
fn i3_g_call_cycle_fails_fast() {
    run(
        "i3_g_call_cycle_fails_fast",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["CycleA", "CycleB"]).await?;

            let t = Instant::now();
            let r = kiln
                .call_timeout("CycleA/k1/ping", &json_str("k1"), Duration::from_secs(30))
                .await;
            let ms = t.elapsed().as_millis();
            let r = r.with_context(|| format!("CycleA/k1/ping: no answer after {ms} ms"))?;
            println!("i3_g: CycleA/k1/ping → {r} after {ms} ms");
            let (code, msg) = failure_of(&r)?;
            ensure!(code == 508, "call cycle: expected code 508, got {r}");
            ensure!(
                msg.to_lowercase().contains("cycle"),
                "call cycle: message should mention the cycle: {msg:?}"
            );
            ensure!(ms < 10_000, "call cycle detected after {ms} ms (bound 10 s)");
            if let Some(id) = r.invocation_id() {
                println!("i3_g: ping invocation: {}", inv_summary(&kiln.invocation(&id).await?));
            }

            // Nothing is left holding a lock: both objects answer at once.
            let t = Instant::now();
            let r = kiln
                .call_timeout("CycleA/k1/ping2", "", Duration::from_secs(10))
                .await?;
            ensure!(
                r.status == 200 && r.json()? == json!("ping2"),
                "CycleA/k1/ping2 after the cycle: {r}"
            );
            let r2 = kiln
                .call_timeout("CycleB/k1/pong", &json_str("k2"), Duration::from_secs(10))
                .await?;
            ensure!(
                r2.status == 200 && r2.json()? == json!("pong>ping2"),
                "CycleB/k1/pong(k2) (no cycle): {r2}"
            );
            println!(
                "i3_g: afterwards CycleA/k1/ping2 and CycleB/k1/pong(k2) answered in {} ms",
                t.elapsed().as_millis()
            );
            for service in ["CycleA", "CycleB"] {
                let (all, _) = list_all(&kiln, &format!("service={service}"), 100).await?;
                let open: Vec<String> = all.iter().filter(|v| !is_finished(v)).map(inv_summary).collect();
                ensure!(
                    open.is_empty(),
                    "unfinished {service} invocations after the cycle: {open:?}"
                );
            }
            // The same cycle started with /send also ends as 508 (not a hang).
            let id = kiln.send("CycleA/k3/ping", &json_str("k3")).await?;
            let v = kiln.wait_finished(&id, Duration::from_secs(10)).await?;
            ensure!(
                matches!(inv_output(&v), Some(Err((508, _)))),
                "CycleA/k3/ping via /send: {}",
                inv_summary(&v)
            );
            Ok(())
        },
    );
}
