//! (i4 b) A fourth node joins a three-node cluster while `Counter.add(1)` load runs through nginx
//! (`POST /cluster/nodes`), then leaves gracefully, also under load (`DELETE /cluster/nodes/n4`);
//! 20,000 adds over 1,000 keys at concurrency 64 in all.
//! The join moves about 1024/4 partitions, all to n4; the leave moves all of n4's back. No
//! request fails, none is applied twice (every key's returned totals are exactly 1..=n), every
//! total is exact, and each key is active only on its owner afterwards.

use std::time::Duration;

use anyhow::ensure;

use crate::harness::*;

const KEYS: usize = 1000;
/// At least this many adds in all (the join comes after 3,000, the leave 3,000 after the join).
const ADDS: usize = 20_000;
const CONCURRENCY: usize = 64;
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(180);

/// Requests sent in `[from, to)` of the load's clock: (count, max latency ms, histogram).
fn phase(report: &LoadReport, from: Duration, to: Duration) -> String {
    let rs: Vec<&AddResult> = report
        .results
        .iter()
        .filter(|r| r.sent >= from && r.sent < to)
        .collect();
    let max = rs.iter().map(|r| (r.done - r.sent).as_millis()).max().unwrap_or(0);
    format!(
        "{} requests, max latency {max} ms, {:?}",
        rs.len(),
        histogram(rs.iter().copied())
    )
}

// RUNTIME BUG (open at commit 1591f97, intermittent, about every second run): a request in
// flight while its partition moves is sometimes executed twice — the key then has one more
// completed invocation than requests (21 for 20) and one total is never returned to anyone. The
// test fails with "totals that are not exactly 1..=n" (e.g. `missing [4], max Some(21)`) and
// prints the key's requests and invocations; a node of the move logs `ERROR kiln::node: in-flight
// count would go below zero` at that instant.
#[test]
fn i4_b_join_and_leave_under_load() {
    run(
        "i4_b_join_and_leave_under_load",
        Duration::from_secs(480),
        |env| async move {
            nginx_bin()?; // fail at once, with the install hint, if nginx is missing
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let mut cluster = Cluster::start(&env, 3, cluster_opts()).await?;
            cluster.register(&counter.uri(), &["Counter"]).await?;
            cluster.start_extra("n4").await?;
            let nginx = Nginx::start(&env, &cluster.member_ingress_addrs()).await?;
            let before = cluster.partitions("n1").await?;
            println!(
                "i4_b: before: partitions per node {:?} (epoch {})",
                before.counts(),
                before.epoch
            );

            let keys = counter_keys(KEYS);
            let load = AddLoad::new(&nginx.url(), keys.clone(), CONCURRENCY).start(&cluster.http);
            load.wait_more(3000, Duration::from_secs(120)).await?;

            // ---- join ----
            let t_join = load.now();
            let done_at_join = load.done();
            let answer = cluster.add_node("n2", "n4").await?;
            println!(
                "i4_b: POST /cluster/nodes n4 at {} ms ({done_at_join} requests done): {answer}",
                t_join.as_millis()
            );
            let joined = cluster.wait_rebalanced("n1", REBALANCE_TIMEOUT).await?;
            let t_joined = load.now();
            let moved = joined.moved_since(&before);
            eprintln!(
                "i4_b: JOIN moved {} partitions in {:.1} s ({} requests done meanwhile); partitions per node {:?}, epoch {} → {}",
                moved.len(),
                (t_joined - t_join).as_secs_f64(),
                load.done() - done_at_join,
                joined.counts(),
                before.epoch,
                joined.epoch
            );
            ensure!(joined.epoch > before.epoch, "the ring epoch did not grow on join");
            ensure!(
                (150..=400).contains(&moved.len()),
                "the join moved {} partitions; expected about 1024/4 (150..=400)",
                moved.len()
            );
            let not_to_n4: Vec<&(usize, String, String)> = moved.iter().filter(|(_, _, to)| to != "n4").collect();
            ensure!(
                not_to_n4.is_empty(),
                "a join should only move partitions to the new node; these moved elsewhere (first 10): {:?}",
                &not_to_n4[..not_to_n4.len().min(10)]
            );
            ensure!(
                joined.owned_by("n4") == moved.len(),
                "n4 owns {} partitions",
                joined.owned_by("n4")
            );
            cluster.ensure_deployments_on("n4", Duration::from_secs(15)).await?;
            load.wait_more(3000, Duration::from_secs(120)).await?;

            // ---- leave ----
            let t_leave = load.now();
            let done_at_leave = load.done();
            let answer = cluster.remove_node("n3", "n4").await?;
            println!(
                "i4_b: DELETE /cluster/nodes/n4 at {} ms ({done_at_leave} requests done): {answer}",
                t_leave.as_millis()
            );
            let left = cluster.wait_rebalanced("n1", REBALANCE_TIMEOUT).await?;
            let t_left = load.now();
            let moved_back = left.moved_since(&joined);
            eprintln!(
                "i4_b: LEAVE moved {} partitions in {:.1} s ({} requests done meanwhile); partitions per node {:?}, epoch {}; \
                 same placement as before the join: {}",
                moved_back.len(),
                (t_left - t_leave).as_secs_f64(),
                load.done() - done_at_leave,
                left.counts(),
                left.epoch,
                left.owners == before.owners
            );
            ensure!(
                left.owned_by("n4") == 0,
                "n4 still owns {} partitions after leaving",
                left.owned_by("n4")
            );
            let not_from_n4: Vec<&(usize, String, String)> =
                moved_back.iter().filter(|(_, from, _)| from != "n4").collect();
            ensure!(
                not_from_n4.is_empty(),
                "a leave should only move the leaving node's partitions; these moved too (first 10): {:?}",
                &not_from_n4[..not_from_n4.len().min(10)]
            );
            let info = cluster.info("n1").await?;
            let n4 = info["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["id"] == "n4").cloned());
            println!("i4_b: GET /cluster on n1 after the leave: n4 entry {n4:?}");
            if let Some(n4) = &n4 {
                ensure!(
                    n4["partitions"].as_u64().unwrap_or(0) == 0,
                    "GET /cluster still counts partitions for n4: {n4}"
                );
            }
            // Enough requests after the leave for every key to get at least one more, and
            // 20,000 in all.
            load.wait_more(KEYS + CONCURRENCY * 2, Duration::from_secs(120)).await?;
            load.wait_more(ADDS.saturating_sub(load.done()), Duration::from_secs(240))
                .await?;
            load.stop();
            let report = load.finish().await?;
            println!(
                "i4_b: {} adds over {KEYS} keys at concurrency {CONCURRENCY}: {:?} in {:.1} s ({:.0} req/s)\n  \
                 before the join: {}\n  during the join: {}\n  between: {}\n  during the leave: {}\n  after: {}",
                report.results.len(),
                report.histogram(),
                report.elapsed.as_secs_f64(),
                report.throughput(),
                phase(&report, Duration::ZERO, t_join),
                phase(&report, t_join, t_joined),
                phase(&report, t_joined, t_leave),
                phase(&report, t_leave, t_left),
                phase(&report, t_left, report.elapsed),
            );
            let per_node = check_objects_on_owners(&cluster, "n1", "Counter", &keys).await?;
            println!("i4_b: every key active exactly once, on its owner; per node {per_node:?}");
            report.expect_all_ok()?;
            let expected = report.requests_per_key();
            check_sequences_explained(&cluster, &report, &report.values_per_key(), &expected).await?;
            verify_counter_totals(&cluster.http, &nginx.url(), &expected).await?;
            println!("i4_b: all {KEYS} totals exact");
            cluster.print_issues("i4_b");
            Ok::<_, anyhow::Error>(())
        },
    );
}
