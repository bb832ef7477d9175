//! (issue 9 e) SIGKILL of any one of three nodes, the metadata leader included, loses no
//! acknowledged membership change. Under light `Counter.add` load through nginx:
//!
//! 1. a join sent to a follower is acknowledged (202, committed) and the *leader* — which
//!    committed it — is killed at once: the survivors elect a new leader that has the join;
//! 2. the node's leave, sent to a follower, is acknowledged and *that follower* is killed at
//!    once: the survivors have the leave; a deployment registered while it is down is on it
//!    once it is back (every node installs what the metadata group committed).
//!
//! Each killed node restarts from its data dir and agrees; each rebalance finishes by itself;
//! every failed add is sent again with its idempotency key and every total is exact.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::*;

const KEYS: usize = 100;
const CONCURRENCY: usize = 8;
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until `via` reports an epoch ≥ `acked` in which `id` is a member (`member`) or not.
async fn wait_view(cluster: &Cluster, via: &str, acked: u64, id: &str, member: bool) -> Result<u64> {
    let deadline = Deadline::after(
        Duration::from_secs(30),
        format!("{via} to report epoch ≥ {acked} with {id} a member: {member}"),
    );
    loop {
        let last = match cluster.info(via).await {
            Ok(v) => {
                let epoch = v["epoch"].as_u64().unwrap_or(0);
                let listed = v["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().any(|n| n["id"] == id && n["status"] != "leaving"));
                if epoch >= acked && listed == member {
                    return Ok(epoch);
                }
                format!("epoch {epoch}, nodes {}", v["nodes"])
            }
            Err(e) => format!("{e:#}"),
        };
        deadline.check(last)?;
        sleep_ms(100).await;
    }
}

/// Waits (15 s) until node `id` lists `service`.
async fn wait_service(cluster: &Cluster, id: &str, service: &str) -> Result<()> {
    let deadline = Deadline::after(Duration::from_secs(15), format!("{id} to list {service}"));
    loop {
        let services = cluster.get_json(&format!("{}/services", cluster.admin(id))).await;
        let listed = services
            .as_ref()
            .ok()
            .and_then(|v| v["services"].as_array().cloned())
            .is_some_and(|a| a.iter().any(|s| s["name"] == service));
        if listed {
            return Ok(());
        }
        deadline.check(format!("GET /services: {services:?}"))?;
        sleep_ms(200).await;
    }
}

/// The member other than those in `not`.
fn other_than(cluster: &Cluster, not: &[&str]) -> String {
    cluster
        .members
        .iter()
        .find(|m| !not.contains(&m.as_str()))
        .cloned()
        .expect("another member")
}

#[test]
fn i4_i_no_acknowledged_change_is_lost_to_a_kill() {
    run(
        "i4_i_no_acknowledged_change_is_lost_to_a_kill",
        Duration::from_secs(480),
        |env| async move {
            nginx_bin()?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let mut cluster = Cluster::start(&env, 3, cluster_opts()).await?;
            cluster.register(&counter.uri(), &["Counter"]).await?;
            cluster.start_extra("n4").await?;
            let nginx = Nginx::start(&env, &cluster.member_ingress_addrs()).await?;
            let mut load = AddLoad::new(&nginx.url(), counter_keys(KEYS), CONCURRENCY);
            load.idempotency_prefix = Some(format!("i-{}", test_seed()));
            load.timeout = Duration::from_secs(30);
            let load = load.start(&cluster.http);
            load.wait_more(300, Duration::from_secs(120)).await?;

            // ---- 1. the join is acknowledged by a follower; the leader dies at once ----
            let leader = metadata_leader(&cluster, "n1", None).await?;
            let follower = other_than(&cluster, &[&leader]);
            let acked = cluster.request_add(&follower, "n4").await.context("join n4")?;
            cluster.kill(&leader);
            cluster.members.push("n4".into());
            let acked = acked["epoch"].as_u64().unwrap_or(0);
            println!("i4_i: {follower} acknowledged the join of n4 (epoch {acked}); {leader} (metadata leader) killed");
            let survivor = other_than(&cluster, &[&leader, &follower, "n4"]);
            let new_leader = metadata_leader(&cluster, &follower, Some(&leader)).await?;
            for via in [&follower, &survivor] {
                let epoch = wait_view(&cluster, via, acked, "n4", true).await?;
                println!("i4_i: {via} has the join (epoch {epoch}); new leader {new_leader}");
            }
            cluster.restart(&leader).await?;
            wait_view(&cluster, &leader, acked, "n4", true).await?;
            let joined = cluster.wait_rebalanced(&follower, REBALANCE_TIMEOUT).await?;
            ensure!(joined.owned_by("n4") > 0, "n4 owns nothing: {:?}", joined.counts());
            println!(
                "i4_i: {leader} restarted with the join; rebalanced: {:?}",
                joined.counts()
            );
            load.wait_more(200, Duration::from_secs(120)).await?;

            // ---- 2. the leave is acknowledged by a follower, which dies at once ----
            let leader = metadata_leader(&cluster, "n4", None).await?;
            let follower = other_than(&cluster, &[&leader, "n4"]);
            let acked = cluster.request_remove(&follower, "n4").await.context("leave n4")?;
            cluster.kill(&follower);
            cluster.members.retain(|m| m != "n4");
            let acked = acked["epoch"].as_u64().unwrap_or(0);
            println!("i4_i: {follower} acknowledged the leave of n4 (epoch {acked}) and was killed; leader {leader}");
            for via in [&leader, &other_than(&cluster, &[&leader, &follower])] {
                let epoch = wait_view(&cluster, via, acked, "n4", false).await?;
                println!("i4_i: {via} has the leave (epoch {epoch})");
            }
            let steps = Service::start(&env, Jar::Steps, &[]).await?;
            register_expect(&cluster.node(&leader).kiln, &steps.uri(), &["Steps"]).await?;
            println!("i4_i: Steps registered at {leader} while {follower} is down");
            cluster.restart(&follower).await?;
            wait_service(&cluster, &follower, "Steps").await?;
            println!("i4_i: {follower} restarted and serves Steps");
            let settled = cluster.wait_rebalanced(&leader, REBALANCE_TIMEOUT).await?;
            ensure!(
                settled.owned_by("n4") == 0,
                "n4 still owns partitions: {:?}",
                settled.counts()
            );
            wait_view(&cluster, &follower, acked, "n4", false).await?;
            println!(
                "i4_i: {follower} restarted with the leave; rebalanced: {:?}",
                settled.counts()
            );

            load.wait_more(200, Duration::from_secs(120)).await?;
            load.stop();
            let report = load.finish().await?;
            check_totals_after_resend(&cluster, "i4_i", &nginx.url(), &report).await?;
            cluster.print_issues("i4_i");
            Ok::<_, anyhow::Error>(())
        },
    );
}
