//! Races and hangs a reader of the code found, checked from outside: HTTP against the real
//! `kiln` binary and the real Kotlin services (tests/services).
//!
//! * `j_workflow_created_by_two_paths_runs_once`: one workflow key (`Signup/{key}/run`) created
//!   at the same instant by ingress requests (`Node::submit`: a call and a `/send`) and by
//!   durable messages (`delivery::deliver_invoke`: an outbox row produced by a handler's `send`)
//!   must run once. No Kotlin handler sends to a workflow, so the sender is `Relay`, a fake SDK
//!   endpoint speaking protocol v1 (`relay_endpoint`, docs/protocol.md): it journals one `send`
//!   to the target its input names, then its output. The workflow itself is the real Kotlin
//!   `Signup`. 20 keys, each raced by 8 creators (3 relayed sends, 3 ingress calls, 2 ingress
//!   `/send`s, each with its own input). "Ran once" per key: one run invocation listed, completed
//!   once with the confirmed value; every call answered by it and every `/send` accepted as it;
//!   its journal has one input, one `set_state`, one `get_promise`, one output, and the state it
//!   wrote is its own input (a second creation overwrites the input of a run under way); what
//!   the Kotlin service saw (`start_spy`, a TCP proxy in front of it, reads every attempt's
//!   START frame): one attempt starting user code from the top, no epoch of one invocation
//!   twice; and nothing counted in flight afterwards.
//! * `j_startup_at_inflight_limit_with_pending_delivery_does_not_hang`: a node at its
//!   `--max-inflight-invocations` with outbox rows not yet delivered is SIGKILLed; on restart,
//!   recovery redelivers those rows before it serves: they were admitted already, so the
//!   in-flight limit must not refuse them (a refused redelivery is retried, waiting for
//!   invocations that are only resumed after redelivery — a hang before the node is ready).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::json;

use crate::harness::*;
use crate::relay_endpoint::{Relay, RelayInput};
use crate::sdk_wire::StartFrame;
use crate::start_spy::Spy;

// ---------------------------------------------------------------------------------------------
// 1. A workflow key created by an ingress request and a durable message at once runs once
// ---------------------------------------------------------------------------------------------

const WF_KEYS: u64 = 20;
/// Creators per key, by path: relayed sends (delivery), ingress calls, ingress `/send`s.
const WF_RELAYS: usize = 3;
const WF_CALLS: usize = 3;
const WF_SENDS: usize = 2;

#[test]
fn j_workflow_created_by_two_paths_runs_once() {
    run(
        "j_workflow_created_by_two_paths_runs_once",
        Duration::from_secs(120),
        |env| async move {
            let svc = Service::start(&env, Jar::TestServices, &[]).await?;
            let spy = Spy::start(svc.port).await?;
            let relay = Relay::start().await?;
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &spy.uri(), &["Signup"]).await?;
            register_expect(&kiln, &relay.uri(), &["Relay"]).await?;
            let seed = test_seed();
            let mut rng = fastrand::Rng::with_seed(seed);
            println!("j_wf: jitter seed {seed} (KILN_E2E_SEED)");

            let t0 = Instant::now();
            let mut calls = Vec::new(); // (key, creator, task)
            let mut sends = Vec::new(); // (key, creator, invocation id)
            let mut relays = Vec::new(); // relay invocation ids
            for round in 1..=WF_KEYS {
                let key = format!("wf-{round}");
                // The delivery path: Relay invocations that, once released, journal a send to
                // Signup/{key}/run; the runtime delivers it from their outbox.
                for i in 0..WF_RELAYS {
                    let input = RelayInput {
                        service: "Signup".into(),
                        handler: "run".into(),
                        key: key.clone(),
                        value: json_str(&format!("relay-{i}@{key}")),
                        round,
                    };
                    let id = kiln.send("Relay/go", &serde_json::to_string(&input)?).await?;
                    relays.push(id);
                }
                let deadline = Deadline::after(Duration::from_secs(20), format!("{key}: relays at the gate"));
                while relay.waiting() < WF_RELAYS {
                    deadline.check(format!("{} of {WF_RELAYS} relays waiting", relay.waiting()))?;
                    sleep_ms(5).await;
                }
                // The ingress path, released with the relays and each 0-8 ms late: a relayed
                // send is delivered after its commit, so either path may create the run first.
                let mut tasks = Vec::new();
                for i in 0..WF_CALLS + WF_SENDS {
                    let (http, ingress, key) = (kiln.http.clone(), kiln.ingress(), key.clone());
                    let jitter = rng.u64(0..=8);
                    tasks.push(tokio::spawn(async move {
                        sleep_ms(jitter).await;
                        let (creator, path) = if i < WF_CALLS {
                            (format!("call-{i}@{key}"), format!("{ingress}/Signup/{key}/run"))
                        } else {
                            (format!("send-{i}@{key}"), format!("{ingress}/Signup/{key}/run/send"))
                        };
                        let r = http
                            .post_timeout(&path, json_str(&creator), &[], Duration::from_secs(60))
                            .await;
                        (creator, r)
                    }));
                }
                relay.release(round);
                for (i, t) in tasks.into_iter().enumerate() {
                    if i < WF_CALLS {
                        calls.push((key.clone(), t));
                    } else {
                        let (creator, r) = t.await?;
                        let id = send_id(&r?).with_context(|| format!("{creator}: /send"))?;
                        sends.push((key.clone(), creator, id));
                    }
                }
            }
            println!(
                "j_wf: {WF_KEYS} keys × ({WF_RELAYS} relayed sends + {WF_CALLS} calls + {WF_SENDS} /sends) fired in {} ms",
                t0.elapsed().as_millis()
            );
            for id in &relays {
                let v = kiln.wait_finished(id, Duration::from_secs(20)).await?;
                ensure!(
                    inv_status(&v) == "completed" && inv_output(&v) == Some(Ok(json_str("sent"))),
                    "relay {id}: {}",
                    inv_summary(&v)
                );
            }

            // One run per key; confirm each.
            let mut run_ids: BTreeMap<String, String> = BTreeMap::new();
            for round in 1..=WF_KEYS {
                let key = format!("wf-{round}");
                let (runs, _) = list_page(&kiln, &format!("service=Signup&key={key}&handler=run")).await?;
                ensure!(
                    runs.len() == 1,
                    "{key}: {} run invocations listed: {runs:?}",
                    runs.len()
                );
                run_ids.insert(key.clone(), runs[0]["id"].as_str().unwrap_or("").to_string());
            }
            for round in 1..=WF_KEYS {
                let key = format!("wf-{round}");
                let r = kiln
                    .call(&format!("Signup/{key}/confirm"), &json_str(&format!("code-{key}")))
                    .await?;
                ensure!(r.ok_json()? == json!("confirmed"), "{key}: confirm: {r}");
            }
            for (key, t) in calls {
                let (creator, r) = t.await?;
                let r = r?;
                ensure!(
                    r.status == 200 && r.json()? == json!(format!("welcome code-{key}")),
                    "{creator}: run call answered {r}"
                );
                ensure!(
                    r.invocation_id().as_deref() == Some(run_ids[&key].as_str()),
                    "{creator}: answered by {:?}, the run is {}",
                    r.invocation_id(),
                    run_ids[&key]
                );
            }
            for (key, creator, id) in &sends {
                ensure!(
                    *id == run_ids[key],
                    "{creator}: /send accepted as {id}, the run is {}",
                    run_ids[key]
                );
            }

            // Each run: one invocation, completed once, with the input of one creator, and its
            // user code started once from the top (what the Kotlin service saw). The in-flight
            // count is checked after the per-key report, which says more about a failure.
            let waited = wait_inflight(&kiln, 0, Duration::from_secs(15)).await;
            sleep_ms(300).await;
            let starts = spy.starts_of("Signup", "run");
            let mut winners: BTreeMap<String, usize> = BTreeMap::new();
            let mut problems = Vec::new();
            for (key, id) in &run_ids {
                let v = kiln.wait_finished(id, Duration::from_secs(10)).await?;
                let (runs, _) = list_page(&kiln, &format!("service=Signup&key={key}&handler=run")).await?;
                let kinds = journal_kinds(&v);
                let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
                let input = v["journal"][0]["value"].as_str().unwrap_or("").to_string();
                let email = v["journal"]
                    .as_array()
                    .and_then(|j| j.iter().find(|e| e["kind"] == "set_state"))
                    .and_then(|e| e["value"].as_str())
                    .unwrap_or("")
                    .to_string();
                let mine: Vec<&StartFrame> = starts.iter().filter(|s| s.key == *key).collect();
                let fresh = mine.iter().filter(|s| s.known_entries <= 1).count();
                let epochs: BTreeSet<(String, u64)> = mine.iter().map(|s| (s.id.clone(), s.epoch)).collect();
                let creator: String = serde_json::from_str::<String>(&input).unwrap_or_default();
                *winners
                    .entry(creator.split('-').next().unwrap_or("?").to_string())
                    .or_default() += 1;
                let summary = format!(
                    "{key}: {} run(s) listed; {}; input {input}; set_state {email}; {} attempt(s) seen by the service, {fresh} from the top, epochs {:?}",
                    runs.len(),
                    inv_summary(&v),
                    mine.len(),
                    mine.iter().map(|s| s.epoch).collect::<Vec<_>>()
                );
                let ok = runs.len() == 1
                    && inv_status(&v) == "completed"
                    && inv_output(&v) == Some(Ok(json_str(&format!("welcome code-{key}"))))
                    && count("input") == 1
                    && count("set_state") == 1
                    && count("get_promise") == 1
                    && count("output") == 1
                    && !input.is_empty()
                    && input == email
                    && fresh == 1
                    && mine.iter().all(|s| s.id == *id)
                    && epochs.len() == mine.len();
                if !ok {
                    problems.push(summary);
                }
            }
            let left = inflight(&kiln).await?;
            println!(
                "j_wf: all runs done; in flight then: {left} ({}); created by: {winners:?}; {} Signup/run attempts seen",
                match &waited {
                    Ok(d) => format!("0 after {} ms", d.as_millis()),
                    Err(e) => format!("{e:#}"),
                },
                starts.len()
            );
            ensure!(
                problems.is_empty(),
                "{} of {WF_KEYS} workflow keys did not run exactly once:\n  {}",
                problems.len(),
                problems.join("\n  ")
            );
            ensure!(left == 0, "{left} invocations in flight after every run finished");
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Restart at the in-flight limit with outbox rows pending
// ---------------------------------------------------------------------------------------------

const LIMIT: u64 = 4;
const WAITERS: usize = 3;
const MESSAGES: usize = 1500;

/// `unfinished=` and `outbox=` of the last `node.recovering` line of a kiln log, if any.
fn recovering_line(log: &std::path::Path) -> Option<(String, Option<u64>)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("node.recovering"))?.to_string();
    let outbox = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("outbox="))
        .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok());
    Some((line, outbox))
}

#[test]
fn j_startup_at_inflight_limit_with_pending_delivery_does_not_hang() {
    run(
        "j_startup_at_inflight_limit_with_pending_delivery_does_not_hang",
        Duration::from_secs(120),
        |env| async move {
            let dir = env.new_dir("awakeables");
            let dir_str = dir.to_string_lossy().into_owned();
            let svc = Service::start(&env, Jar::TestServices, &[("AWAKEABLE_DIR", dir_str.as_str())]).await?;
            let opts = KilnOpts {
                extra_args: vec!["--max-inflight-invocations".into(), LIMIT.to_string()],
                ..Default::default()
            };
            let mut kiln = Kiln::start(&env, opts).await?;
            register_expect(&kiln, &svc.uri(), &["Waiter", "Sender", "Receiver", "Sleeper"]).await?;

            // Fill the limit: waiters blocked on awakeables, then one sender of many messages.
            let mut waiters = Vec::new();
            for i in 0..WAITERS {
                let x = format!("w{i}");
                let id = kiln.send("Waiter/waitFor", &json_str(&x)).await?;
                let awk = awakeable_id(&dir, &x).await?;
                waiters.push((id, awk, x));
            }
            let sender = kiln.send("Sender/s/sendMany", &MESSAGES.to_string()).await?;
            // Kill as soon as deliveries are under way (or the sender is done): most messages
            // are still outbox rows then.
            let deadline = Deadline::after(Duration::from_secs(20), "waiting for deliveries to start");
            let mut over = None;
            let at_kill = loop {
                let n = inflight(&kiln).await?;
                if n >= LIMIT && over.is_none() {
                    over = Some(kiln.call("Sleeper/nap/send", "0").await?);
                }
                if n >= LIMIT + 20 || is_finished(&kiln.invocation(&sender).await?) {
                    break n;
                }
                deadline.check(format!("inflightInvocations = {n}"))?;
                sleep_ms(2).await;
            };
            kiln.kill();
            println!(
                "j_limit: {at_kill} in flight at the SIGKILL; a new request at the limit before it: {}",
                over.map(|r| r.to_string()).unwrap_or_else(|| "not tried".into())
            );

            // Restart: recovery redelivers the outbox before the node serves.
            let t = Instant::now();
            kiln.restart()
                .await
                .context("restart at the in-flight limit with pending deliveries")?;
            let ready = t.elapsed();
            let recovering = recovering_line(kiln.log_path());
            println!(
                "j_limit: ready {} ms after the restart; recovery: {:?}",
                ready.as_millis(),
                recovering.as_ref().map(|(l, _)| l.as_str())
            );
            ensure!(
                ready <= Duration::from_secs(20),
                "ready only {} ms after the restart",
                ready.as_millis()
            );
            if let Some((line, outbox)) = &recovering {
                ensure!(
                    outbox.is_some_and(|n| n > 0),
                    "the restart found no outbox rows to redeliver, so this run did not test pending deliveries: {line}"
                );
            }

            // Not stuck: the messages drain, leaving the waiters; one more fills the limit, the
            // next request is refused with a 429 JSON.
            let drained = wait_inflight(&kiln, WAITERS as u64, Duration::from_secs(30))
                .await
                .context("after the restart, the delivered messages never ran")?;
            let v = kiln.wait_finished(&sender, Duration::from_secs(10)).await?;
            ensure!(
                inv_output(&v) == Some(Ok(MESSAGES.to_string())),
                "sender: {}",
                inv_summary(&v)
            );
            let x = format!("w{WAITERS}");
            let id = kiln.send("Waiter/waitFor", &json_str(&x)).await?;
            waiters.push((id, awakeable_id(&dir, &x).await?, x));
            let r = kiln.call("Sleeper/nap", "0").await?;
            let (code, message) = r
                .expect_error(429)
                .context("a new request at the limit after the restart")?;
            ensure!(code == 429, "code {code} for a request over the in-flight limit: {r}");
            println!(
                "j_limit: messages ran {} ms after ready; at the limit again a new request got 429: {message}",
                drained.as_millis()
            );

            // The earlier invocations finish once their waits are resolved.
            for (_, awk, x) in &waiters {
                let r = kiln
                    .http
                    .post(
                        &format!("{}/awakeables/{awk}/resolve", kiln.ingress()),
                        json_str(&format!("v-{x}")),
                        &[],
                    )
                    .await?;
                ensure!(r.status == 202, "resolve {awk} ({x}): {r}");
            }
            for (id, _, x) in &waiters {
                let r = kiln.attach(id, Duration::from_secs(20)).await?;
                ensure!(
                    r.status == 200 && r.json()? == json!(format!("got v-{x}")),
                    "waiter {x}: {r}"
                );
            }
            wait_inflight(&kiln, 0, Duration::from_secs(10)).await?;
            let r = kiln.call("Receiver/s/received", "").await?;
            let received: Vec<u64> = serde_json::from_value(r.ok_json()?)?;
            let expected: Vec<u64> = (0..MESSAGES as u64).collect();
            ensure!(
                received == expected,
                "Receiver/s got {} messages (first gap at {:?}), expected 0..{MESSAGES} in order",
                received.len(),
                received.iter().zip(&expected).position(|(a, b)| a != b)
            );
            let r = kiln.call("Sleeper/nap", "0").await?;
            ensure!(
                r.ok_json()? == json!("slept"),
                "a new request once the limit is free: {r}"
            );
            ensure!(inflight(&kiln).await? == 0, "invocations left in flight at the end");
            Ok(())
        },
    );
}
