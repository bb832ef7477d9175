//! (i4 e) The web UI (`GET /ui` on the admin port) in a real browser: three nodes plus a fourth
//! that is not a member yet, a few `Counter` adds (key `ui-key` among them), then the
//! playwright-core script `tests/ui/ui.test.mjs` (see tests/ui) must exit 0.
//!
//! Needs node, npm and a Chromium; runs `npm ci` in tests/ui first when `tests/ui/node_modules`
//! is missing. The script's screenshots go to `target/ui-artifacts`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::harness::*;

/// Runs a command (bounded), returning (success, combined output).
async fn run_cmd(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Result<(bool, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn i4_e_web_ui_in_a_browser() {
    run("i4_e_web_ui_in_a_browser", Duration::from_secs(420), |env| async move {
        let ui_dir = Path::new(MANIFEST_DIR).join("tests").join("ui");
        let script = ui_dir.join("ui.test.mjs");
        ensure!(
            script.is_file(),
            "missing {}: the browser test script",
            script.display()
        );
        if !ui_dir.join("node_modules").is_dir() {
            let t0 = Instant::now();
            let mut npm = tokio::process::Command::new("npm");
            npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&ui_dir);
            let (ok, out) = run_cmd(npm, "npm ci in tests/ui", Duration::from_secs(300))
                .await
                .context("npm ci in tests/ui (needs node and npm)")?;
            ensure!(ok, "npm ci in tests/ui failed:\n{out}");
            println!("i4_e: npm ci in tests/ui took {} ms", t0.elapsed().as_millis());
        }

        let counter = Service::start(&env, Jar::Counter, &[]).await?;
        let mut cluster = Cluster::start(&env, 3, cluster_opts()).await?;
        cluster.register(&counter.uri(), &["Counter"]).await?;
        cluster.start_extra("n4").await?;
        for (i, key) in ["ui-key", "ui-key", "ui-key", "a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
        {
            let node = ["n1", "n2", "n3"][i % 3];
            let r = call(
                &cluster.http,
                &cluster.ingress(node),
                &format!("Counter/{key}/add"),
                "1",
                None,
            )
            .await?;
            r.expect_status(200)?;
        }
        let owner = cluster.owner("n1", "Counter", "ui-key").await?;
        println!(
            "i4_e: Counter/ui-key = 3, owned by {} (partition {})",
            owner.node, owner.partition
        );

        let artifacts = Path::new(MANIFEST_DIR).join("target").join("ui-artifacts");
        std::fs::create_dir_all(&artifacts)?;
        let t0 = Instant::now();
        let mut node = tokio::process::Command::new("node");
        node.arg(&script)
            .current_dir(MANIFEST_DIR)
            .env("KILN_ADMIN_URL", cluster.admin("n1"))
            .env("KILN_JOIN_NODE_ID", "n4")
            .env("KILN_JOIN_PEER_ADDR", cluster.node("n4").peer_addr())
            .env("KILN_LOOKUP_SERVICE", "Counter")
            .env("KILN_LOOKUP_KEY", "ui-key")
            .env("KILN_ARTIFACTS_DIR", &artifacts);
        let (ok, out) = run_cmd(node, "node tests/ui/ui.test.mjs", Duration::from_secs(300)).await?;
        let log = env.path("ui-test.log");
        std::fs::write(&log, &out)?;
        env.add_log("node tests/ui/ui.test.mjs", &log);
        println!(
            "i4_e: node tests/ui/ui.test.mjs exited {} after {} ms; output:\n{out}",
            if ok { "0" } else { "non-zero" },
            t0.elapsed().as_millis()
        );
        if !ok {
            bail!(
                "the browser script failed (artifacts in {}):\n{out}",
                artifacts.display()
            );
        }
        let after = cluster.partitions("n1").await?;
        println!("i4_e: partitions per node after the script: {:?}", after.counts());
        cluster.print_issues("i4_e");
        Ok::<_, anyhow::Error>(())
    });
}
