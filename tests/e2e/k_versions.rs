//! (issue 10 b) Versioned, immutable deployments: two code versions of one workflow at two URIs
//! (tests/services with SERVICE_VERSION). A workflow waiting on its promise while v2 is
//! registered finishes on v1; new invocations run v2; removing v1 is refused while it is
//! pinned and allowed once drained; registering the old URI again rolls back; a changed
//! discovery at a registered URI is refused unless forced; a dead newest deployment leaves its
//! invocations `backing-off` with a clear last error.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};

use crate::harness::*;

async fn register_at(kiln: &Kiln, uri: &str, force: bool) -> Result<Resp> {
    let body = json!({ "uri": uri, "force": force }).to_string();
    kiln.http
        .post(&format!("{}/deployments", kiln.admin()), body, &[])
        .await
}

async fn deployments(kiln: &Kiln) -> Result<Vec<Value>> {
    let v = kiln
        .http
        .get(&format!("{}/deployments", kiln.admin()))
        .await?
        .ok_json()?;
    Ok(v["deployments"].as_array().cloned().unwrap_or_default())
}

/// (status, pinnedInvocations) of deployment `id` in `GET /deployments`.
async fn drain_status(kiln: &Kiln, id: &str) -> Result<(String, u64)> {
    let all = deployments(kiln).await?;
    let d = all
        .iter()
        .find(|d| d["id"] == id)
        .ok_or_else(|| anyhow!("deployment {id} not listed: {all:?}"))?;
    Ok((
        d["status"].as_str().unwrap_or("?").to_owned(),
        d["pinnedInvocations"].as_u64().unwrap_or(u64::MAX),
    ))
}

async fn remove(kiln: &Kiln, id: &str, force: bool) -> Result<Resp> {
    let url = format!(
        "{}/deployments/{id}{}",
        kiln.admin(),
        if force { "?force=true" } else { "" }
    );
    kiln.http.request(reqwest::Method::DELETE, &url, None, &[], None).await
}

/// Starts `Release/{key}/run` and waits until it waits on its promise; returns its id.
async fn start_release(kiln: &Kiln, key: &str) -> Result<String> {
    let id = kiln.send(&format!("Release/{key}/run"), &json_str(key)).await?;
    kiln.wait_invocation(&id, Duration::from_secs(20), "waiting on its promise", |v| {
        journal_kinds(v).iter().any(|k| k == "get_promise")
    })
    .await?;
    Ok(id)
}

/// Approves `Release/{key}` and returns the run's output text.
async fn approve(kiln: &Kiln, key: &str, id: &str) -> Result<Value> {
    kiln.call(&format!("Release/{key}/approve"), &json_str("ops"))
        .await?
        .ok_json()
        .with_context(|| format!("approve {key}"))?;
    kiln.attach(id, Duration::from_secs(30)).await?.ok_json()
}

#[test]
fn k_versions_pinned_rollback_delete_force() {
    run(
        "k_versions_pinned_rollback_delete_force",
        Duration::from_secs(180),
        |env| async move {
            let v1 = Service::start(&env, Jar::TestServices, &[("SERVICE_VERSION", "v1")]).await?;
            let mut v2 = Service::start(&env, Jar::TestServices, &[("SERVICE_VERSION", "v2")]).await?;
            let kiln = Kiln::start(&env, KilnOpts::retry(100, 500)).await?;

            let r = register_at(&kiln, &v1.uri(), false).await?;
            r.expect_status(201).context("registering v1")?;
            let dp1 = r.json()?["id"].as_str().unwrap_or_default().to_owned();

            // In flight on v1: waiting for its promise when v2 arrives.
            let w1 = start_release(&kiln, "w1").await?;
            let r = register_at(&kiln, &v2.uri(), false).await?;
            r.expect_status(201).context("registering v2")?;
            let dp2 = r.json()?["id"].as_str().unwrap_or_default().to_owned();
            let (s1, p1) = drain_status(&kiln, &dp1).await?;
            let (s2, _) = drain_status(&kiln, &dp2).await?;
            println!("k_versions: after v2: v1 {s1} pinned {p1}, v2 {s2}");
            ensure!(s1 == "draining" && p1 == 1 && s2 == "active", "v1 {s1}/{p1}, v2 {s2}");

            let (code, msg) = remove(&kiln, &dp1, false).await?.expect_error(409)?;
            println!("k_versions: DELETE v1 while pinned → 409 {code} {msg:?}");
            ensure!(msg.contains("pinned"), "refusal should say why: {msg}");

            // New invocations run v2; the pinned one finishes on v1.
            let w2 = start_release(&kiln, "w2").await?;
            ensure!(
                kiln.invocation(&w2).await?["deploymentId"] == dp2.as_str(),
                "w2 should run on v2"
            );
            let out1 = approve(&kiln, "w1", &w1).await?;
            let out2 = approve(&kiln, "w2", &w2).await?;
            println!("k_versions: w1 → {out1}, w2 → {out2}");
            ensure!(out1 == json!("v1:w1:ops"), "w1 must finish on v1: {out1}");
            ensure!(out2 == json!("v2:w2:ops"), "w2 must run on v2: {out2}");
            ensure!(
                kiln.call("ReleaseNotes/latest", "").await?.ok_json()? == json!("v2 notes"),
                "v2's own service is served"
            );

            // Rollback: the old URI again makes v1 the newest; then v2 again.
            let r = register_at(&kiln, &v1.uri(), false).await?;
            r.expect_status(200).context("registering v1 again (rollback)")?;
            ensure!(r.json()?["registration"] == "promote", "rollback should promote: {r}");
            let w3 = start_release(&kiln, "w3").await?;
            ensure!(
                kiln.invocation(&w3).await?["deploymentId"] == dp1.as_str(),
                "after rollback w3 runs v1"
            );
            ensure!(approve(&kiln, "w3", &w3).await? == json!("v1:w3:ops"), "w3 on v1");
            let r = register_at(&kiln, &v2.uri(), false).await?;
            r.expect_status(200).context("registering v2 again")?;
            let r = register_at(&kiln, &v2.uri(), false).await?;
            r.expect_status(200)?;
            ensure!(
                r.json()?["registration"] == "unchanged",
                "the same again is unchanged: {r}"
            );

            // Drained: removal allowed; v1's URI is gone from the list.
            let (s1, p1) = drain_status(&kiln, &dp1).await?;
            ensure!(s1 == "drained" && p1 == 0, "v1 should be drained: {s1}/{p1}");
            remove(&kiln, &dp1, false)
                .await?
                .expect_status(200)
                .context("DELETE drained v1")?;
            ensure!(
                !deployments(&kiln).await?.iter().any(|d| d["id"] == dp1.as_str()),
                "v1 still listed after DELETE"
            );
            remove(&kiln, &dp1, false).await?.expect_error(404)?;

            // A changed discovery at a registered URI: 409 unless forced.
            v2.restart_with(&[("SERVICE_VERSION", "v1")]).await?;
            let (_, msg) = register_at(&kiln, &v2.uri(), false).await?.expect_error(409)?;
            println!("k_versions: changed re-register → 409 {msg:?}");
            ensure!(
                msg.contains("-ReleaseNotes") && msg.contains("force"),
                "409 should name the change and the way out: {msg}"
            );
            let r = register_at(&kiln, &v2.uri(), true).await?;
            r.expect_status(200).context("forced re-register")?;
            ensure!(r.json()?["registration"] == "replace", "force should replace: {r}");
            kiln.call("ReleaseNotes/latest", "")
                .await?
                .expect_error(404)
                .context("ReleaseNotes is gone after the forced replacement")?;

            // The newest deployment dies: its invocations back off and say why.
            v2.kill();
            let w4 = kiln.send("Release/w4/run", &json_str("w4")).await?;
            let seen = kiln
                .wait_invocation(&w4, Duration::from_secs(10), "backing-off with a last error", |v| {
                    inv_status(v) == "backing-off" && v["lastError"].as_str().is_some_and(|e| !e.is_empty())
                })
                .await?;
            println!(
                "k_versions: dead deployment → {} lastError {:?}",
                inv_status(&seen),
                seen["lastError"]
            );
            let last = seen["lastError"].as_str().unwrap_or_default();
            ensure!(
                last.contains(&dp2) && last.contains("unreachable") && last.contains(&v2.uri()),
                "last error should name the deployment and its endpoint: {last}"
            );
            let (code, _) = remove(&kiln, &dp2, false).await?.expect_error(409)?;
            ensure!(code == 409, "pinned w4 refuses the delete");
            remove(&kiln, &dp2, true)
                .await?
                .expect_status(200)
                .context("forced DELETE")?;
            let failed = kiln
                .wait_invocation(
                    &w4,
                    Duration::from_secs(10),
                    "failed: its deployment was removed",
                    |v| inv_status(v) == "failed",
                )
                .await?;
            println!("k_versions: after forced delete w4 → {}", inv_summary(&failed));
            Ok(())
        },
    );
}
