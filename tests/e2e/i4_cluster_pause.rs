//! (issue 9 d) One of three nodes — the metadata leader — is SIGSTOPped for 10 s under
//! `Counter.add` load through nginx (32 workers, idempotency keys). A paused node accepts
//! connections and never answers, so only the failure detector can tell (docs/cluster.md).
//!
//! While it is paused, keys on the other nodes keep ≥ 80 % of their earlier rate; its own keys
//! answer 503 with Retry-After within 2 s (a request sent as the pause began waits ≤ 2 s for
//! it, later ones get it at once); nothing else fails. Requests nginx had already handed to the
//! paused node finish after it resumes. Then every failed request is sent again with its key:
//! every total is exact.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::ensure;

use crate::harness::*;

const KEYS: usize = 300;
const CONCURRENCY: usize = 32;
const PAUSE: Duration = Duration::from_secs(10);
/// The window before the pause whose rate is the reference.
const BEFORE: Duration = Duration::from_secs(8);
/// The most a request for the paused node's keys may wait for its 503.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The rate the other keys keep while the node is paused, relative to before.
const MIN_RATE: f64 = 0.8;

#[test]
fn i4_h_paused_node_costs_only_its_own_keys() {
    run(
        "i4_h_paused_node_costs_only_its_own_keys",
        Duration::from_secs(300),
        |env| async move {
            nginx_bin()?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let cluster = {
                let mut c = Cluster::start(&env, 3, cluster_opts()).await?;
                c.register(&counter.uri(), &["Counter"]).await?;
                c
            };
            let nginx = Nginx::start(&env, &cluster.member_ingress_addrs()).await?;
            let keys = counter_keys(KEYS);
            let victim = metadata_leader(&cluster, "n1", None).await?;
            let owners = cluster.owners("n1", "Counter", &keys).await?;
            let victim_keys: BTreeSet<String> = owners
                .iter()
                .filter(|(_, o)| o.node == victim)
                .map(|(k, _)| k.clone())
                .collect();
            ensure!(!victim_keys.is_empty(), "{victim} owns none of the keys");

            let mut spec = AddLoad::new(&nginx.url(), keys.clone(), CONCURRENCY);
            spec.idempotency_prefix = Some(format!("h-{}", test_seed()));
            spec.timeout = Duration::from_secs(60);
            let load = spec.start(&cluster.http);
            load.wait_more(1500, Duration::from_secs(120)).await?;
            sleep_ms(BEFORE.as_millis() as u64).await;

            let t_pause = load.now();
            cluster.pause(&victim)?;
            println!(
                "i4_h: {victim} (metadata leader, owner of {} of {KEYS} keys) SIGSTOPped at {} ms",
                victim_keys.len(),
                t_pause.as_millis()
            );
            sleep_ms(PAUSE.as_millis() as u64).await;
            let t_resume = load.now();
            cluster.resume(&victim)?;
            println!("i4_h: SIGCONT at {} ms", t_resume.as_millis());
            cluster.wait_stable(Duration::from_secs(60)).await?;
            load.wait_more(1000, Duration::from_secs(120)).await?;
            load.stop();
            let report = load.finish().await?;

            let of_victim = |r: &AddResult| victim_keys.contains(&r.key);
            let ok_others_in = |from: Duration, to: Duration| {
                let n = report
                    .results
                    .iter()
                    .filter(|r| r.outcome.is_ok() && !of_victim(r) && r.done >= from && r.done < to)
                    .count();
                n as f64 / (to - from).as_secs_f64()
            };
            let rate_before = ok_others_in(t_pause - BEFORE, t_pause);
            let rate_paused = ok_others_in(t_pause, t_resume);
            let per_second: Vec<String> = (0..PAUSE.as_secs() + 2)
                .map(|s| {
                    let from = t_pause + Duration::from_secs(s);
                    format!("{:.0}", ok_others_in(from, from + Duration::from_secs(1)))
                })
                .collect();
            println!(
                "i4_h: other keys' rate: {rate_before:.0}/s in the {} s before, {rate_paused:.0}/s while paused \
                 ({:.0} %); per second from the pause on: [{}]",
                BEFORE.as_secs(),
                100.0 * rate_paused / rate_before,
                per_second.join(", ")
            );

            // Requests sent during the pause, by what they got and when.
            let during = |r: &&AddResult| r.sent >= t_pause && r.sent < t_resume;
            let answered_in_pause = |r: &&AddResult| r.done < t_resume;
            let mut problems = Vec::new();
            let mut victim_waits = Vec::new();
            let mut parked = Vec::new();
            for r in report.results.iter().filter(during) {
                if !answered_in_pause(&r) {
                    parked.push(r); // handed to the paused node by nginx before it stopped choosing it
                    continue;
                }
                match (&r.outcome, of_victim(r)) {
                    (AddOutcome::Ok(_), false) => {}
                    (
                        AddOutcome::Status {
                            status: 503,
                            retry_after: Some(_),
                            ..
                        },
                        true,
                    ) => victim_waits.push(r.done - r.sent),
                    (_, true) => problems.push(format!("a key of the paused node: {}", describe(r))),
                    (_, false) => problems.push(format!("a key of a live node failed: {}", describe(r))),
                }
            }
            victim_waits.sort();
            let first_503 = report
                .results
                .iter()
                .filter(|r| of_victim(r) && r.done >= t_pause && r.outcome.status() == Some(503))
                .map(|r| r.done - t_pause)
                .min();
            let longest = victim_waits.last().copied().unwrap_or_default();
            println!(
                "i4_h: during the pause: {} answers of 503 for {victim}'s keys (first {} ms after SIGSTOP, \
                 waits: median {} ms, longest {} ms); {} requests parked on {victim} until it resumed, then {:?}",
                victim_waits.len(),
                first_503.map_or("—".into(), |d| d.as_millis().to_string()),
                victim_waits
                    .get(victim_waits.len() / 2)
                    .copied()
                    .unwrap_or_default()
                    .as_millis(),
                longest.as_millis(),
                parked.len(),
                histogram(parked.iter().copied())
            );
            ensure!(
                problems.is_empty(),
                "{} wrong answers during the pause (first 10):\n  {}",
                problems.len(),
                problems.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
            );
            ensure!(
                !victim_waits.is_empty(),
                "no request for {victim}'s keys was answered during the pause"
            );
            ensure!(
                first_503.is_some_and(|d| d <= ANSWER_WITHIN) && longest <= ANSWER_WITHIN,
                "{victim}'s keys must answer 503 within {ANSWER_WITHIN:?}: first after {first_503:?}, longest wait {longest:?}"
            );
            ensure!(
                rate_paused >= MIN_RATE * rate_before,
                "the other keys fell to {:.0} % of their rate while {victim} was paused",
                100.0 * rate_paused / rate_before
            );

            check_totals_after_resend(&cluster, "i4_h", &nginx.url(), &report).await?;
            cluster.print_issues("i4_h");
            Ok::<_, anyhow::Error>(())
        },
    );
}
