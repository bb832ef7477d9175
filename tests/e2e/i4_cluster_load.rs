//! (i4 a) Three nodes behind a real nginx (round robin, keep-alive): 20,000 `Counter.add(1)` over
//! 1,000 keys at concurrency 64. Every answer is 200, every key's returned totals are exactly
//! 1..=20 and its final total is exact, and `GET /cluster/objects` shows each key active on
//! exactly one node: the owner `GET /cluster/owner` names.

use std::time::Duration;

use crate::harness::*;

const KEYS: usize = 1000;
const ADDS: usize = 20_000;
const CONCURRENCY: usize = 64;

#[test]
fn i4_a_three_nodes_behind_nginx() {
    run(
        "i4_a_three_nodes_behind_nginx",
        Duration::from_secs(400),
        |env| async move {
            nginx_bin()?; // fail at once, with the install hint, if nginx is missing
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let mut cluster = Cluster::start(&env, 3, cluster_opts()).await?;
            cluster.register(&counter.uri(), &["Counter"]).await?;
            let nginx = Nginx::start(&env, &cluster.member_ingress_addrs()).await?;
            let parts = cluster.partitions("n1").await?;
            println!("i4_a: partitions per node {:?} (epoch {})", parts.counts(), parts.epoch);

            let keys = counter_keys(KEYS);
            let mut load = AddLoad::new(&nginx.url(), keys.clone(), CONCURRENCY);
            load.total = Some(ADDS);
            let report = load.start(&cluster.http).finish().await?;
            println!(
                "i4_a: {ADDS} adds over {KEYS} keys at concurrency {CONCURRENCY} through nginx: {:?} in {:.1} s ({:.0} req/s)",
                report.histogram(),
                report.elapsed.as_secs_f64(),
                report.throughput()
            );
            println!(
                "i4_a: requests per upstream (nginx access log): {:?}",
                nginx.upstream_counts()
            );
            // Placement first: it does not depend on the answers.
            let per_node = check_objects_on_owners(&cluster, "n1", "Counter", &keys).await?;
            println!("i4_a: GET /cluster/objects: every key active exactly once, on its owner; per node {per_node:?}");
            report.expect_all_ok()?;
            let expected = report.requests_per_key();
            check_sequences_explained(&cluster, &report, &report.values_per_key(), &expected).await?;

            verify_counter_totals(&cluster.http, &nginx.url(), &expected).await?;
            println!("i4_a: all {KEYS} totals exact ({} each)", ADDS / KEYS);
            cluster.print_issues("i4_a");
            Ok::<_, anyhow::Error>(())
        },
    );
}
