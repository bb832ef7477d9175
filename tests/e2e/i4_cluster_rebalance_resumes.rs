//! (issue 9 b) A rebalance completes by itself: the metadata group's leader drives it, its plan
//! is the committed membership, so (1) SIGKILL of the leader right after it answered a join's
//! 202 — the new leader resumes the rebalance (the killed node's partitions move once it is
//! back) — and (2) SIGKILL of the joining node, the hand-off target, for 25 s right after its
//! join's 202 — the hand-offs to it are retried with back-off and finish once it returns. Under
//! `Counter.add` load with idempotency keys through nginx; every request that failed while a
//! node was down is sent again with its own key until it succeeds, so every total is exact.

use std::time::Duration;

use anyhow::{ensure, Context};

use crate::harness::*;

const KEYS: usize = 200;
const CONCURRENCY: usize = 16;
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn i4_g_rebalance_resumes_after_its_leader_or_target_dies() {
    run(
        "i4_g_rebalance_resumes_after_its_leader_or_target_dies",
        Duration::from_secs(480),
        |env| async move {
            nginx_bin()?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let mut cluster = Cluster::start(&env, 3, cluster_opts()).await?;
            cluster.register(&counter.uri(), &["Counter"]).await?;
            cluster.start_extra("n4").await?;
            cluster.start_extra("n5").await?;
            let nginx = Nginx::start(&env, &cluster.member_ingress_addrs()).await?;
            let keys = counter_keys(KEYS);
            let mut load = AddLoad::new(&nginx.url(), keys.clone(), CONCURRENCY);
            load.idempotency_prefix = Some("g".into());
            load.timeout = Duration::from_secs(30);
            let load = load.start(&cluster.http);
            load.wait_more(500, Duration::from_secs(120)).await?;

            // ---- (1) the leader dies right after the join's 202 ----
            let leader = metadata_leader(&cluster, "n1", None).await?;
            cluster
                .request_add(&leader, "n4")
                .await
                .context("join n4 at the leader")?;
            cluster.kill(&leader);
            println!("i4_g: {leader} (metadata leader) killed right after answering the join of n4");
            cluster.members.push("n4".into());
            let other = cluster
                .members
                .iter()
                .find(|m| **m != leader && *m != "n4")
                .cloned()
                .expect("a live member");
            let new_leader = metadata_leader(&cluster, &other, Some(&leader)).await?;
            println!("i4_g: new metadata leader {new_leader}");
            sleep_ms(3_000).await;
            cluster.restart(&leader).await?;
            let joined = cluster.wait_rebalanced(&other, REBALANCE_TIMEOUT).await?;
            ensure!(joined.owned_by("n4") > 0, "n4 owns nothing: {:?}", joined.counts());
            println!(
                "i4_g: rebalance finished by itself: epoch {}, {:?}",
                joined.epoch,
                joined.counts()
            );
            load.wait_more(300, Duration::from_secs(120)).await?;

            // ---- (2) the target dies for 25 s right after its join's 202 ----
            cluster.request_add("n2", "n5").await.context("join n5")?;
            cluster.kill("n5");
            println!("i4_g: n5 (the hand-off target) killed right after its join answered 202; back in 25 s");
            cluster.members.push("n5".into());
            sleep_ms(25_000).await;
            cluster.restart("n5").await?;
            let settled = cluster.wait_rebalanced("n1", REBALANCE_TIMEOUT).await?;
            ensure!(settled.owned_by("n5") > 0, "n5 owns nothing: {:?}", settled.counts());
            println!(
                "i4_g: rebalance finished by itself: epoch {}, {:?}",
                settled.epoch,
                settled.counts()
            );
            load.wait_more(300, Duration::from_secs(120)).await?;
            load.stop();
            let report = load.finish().await?;
            check_totals_after_resend(&cluster, "i4_g", &nginx.url(), &report).await?;
            cluster.print_issues("i4_g");
            Ok::<_, anyhow::Error>(())
        },
    );
}
