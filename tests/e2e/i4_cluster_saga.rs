//! (i4 d) Sagas (examples/saga) whose objects live on different nodes: every flight on n1, every
//! hotel on n2, every car on n3 (keys chosen with `GET /cluster/owner`). A queue of filler
//! reservations on the cars keeps the trips' car calls pending; n3 — the node holding those
//! calls, and some of the trips — is SIGKILLed mid-way and restarted. Every trip ends exactly
//! once: booked with one reservation of each kind, or (failAt car) failed with 422 after
//! compensating its flight and hotel; no reservation, cancellation or call is applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

const TRIPS: usize = 30;
const FLIGHTS: usize = 3;
const HOTELS: usize = 3;
const CARS: usize = 2;
const FILLERS_PER_CAR: usize = 150;
const VICTIM: &str = "n3";

struct Trip {
    id: String,
    flight: String,
    hotel: String,
    car: String,
    fail: bool,
}

fn trip_body(t: &Trip) -> String {
    let mut v = json!({ "tripId": t.id, "flight": t.flight, "hotel": t.hotel, "car": t.car });
    if t.fail {
        v["failAt"] = json!("car");
    }
    v.to_string()
}

/// `n` keys `{prefix}{i}` of `object` that `node` owns.
async fn keys_on(cluster: &Cluster, object: &str, prefix: &str, node: &str, n: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..5000 {
        let key = format!("{prefix}{i}");
        if cluster.owner("n1", object, &key).await?.node == node {
            out.push(key);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    bail!("found only {} keys of {object} owned by {node}", out.len())
}

/// `{Object}/{key}/status` → (held, log).
async fn reservation_status(http: &Http, ingress: &str, object: &str, key: &str) -> Result<(Vec<String>, Vec<String>)> {
    let r = call(http, ingress, &format!("{object}/{key}/status"), "", None).await?;
    let v = r.ok_json().with_context(|| format!("{object}/{key}/status"))?;
    let strings = |field: &str| -> Result<Vec<String>> {
        v.get(field)
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{object}/{key}/status has no \"{field}\" list: {v}"))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("non-string in {field}: {v}"))
            })
            .collect()
    };
    Ok((strings("held")?, strings("log")?))
}

/// `POST …/send` with an idempotency key, retried (same key) until 202; returns the id.
async fn send_until_accepted(http: &Http, ingress: &str, path: &str, body: &str, key: &str) -> Result<String> {
    let deadline = Deadline::after(Duration::from_secs(90), format!("sending {path} ({key})"));
    loop {
        let last = match send(http, ingress, path, body, Some(key)).await {
            Ok(r) if r.status == 202 => return send_id(&r),
            Ok(r) => r.to_string(),
            Err(e) => format!("{e:#}"),
        };
        deadline.check(last)?;
        sleep_ms(100).await;
    }
}

/// True if the journal has a call to Cars without a result yet.
fn car_call_pending(v: &Value) -> bool {
    v["journal"].as_array().is_some_and(|j| {
        j.iter()
            .any(|e| e["kind"] == "call" && e["service"] == "Cars" && e.get("result").is_none_or(Value::is_null))
    })
}

#[test]
fn i4_d_saga_across_nodes_with_node_crash() {
    run(
        "i4_d_saga_across_nodes_with_node_crash",
        Duration::from_secs(300),
        |env| async move {
            let saga = Service::start(&env, Jar::Saga, &[]).await?;
            let mut cluster = Cluster::start(&env, 3, KilnOpts::retry(50, 1000)).await?;
            cluster
                .register(&saga.uri(), &["Trip", "Flights", "Hotels", "Cars"])
                .await?;
            let http = cluster.http.clone();
            let ingress = cluster.ingress("n1");
            let admin = cluster.admin("n1");

            let flights = keys_on(&cluster, "Flights", "f", "n1", FLIGHTS).await?;
            let hotels = keys_on(&cluster, "Hotels", "h", "n2", HOTELS).await?;
            let cars = keys_on(&cluster, "Cars", "c", "n3", CARS).await?;
            println!("i4_d: flights {flights:?} on n1, hotels {hotels:?} on n2, cars {cars:?} on n3");
            let trips: Vec<Trip> = (0..TRIPS)
                .map(|i| Trip {
                    id: format!("t{i:02}"),
                    flight: flights[i % FLIGHTS].clone(),
                    hotel: hotels[i % HOTELS].clone(),
                    car: cars[i % CARS].clone(),
                    fail: i % 5 == 0,
                })
                .collect();

            // Fillers: quick reservations queued on every car ahead of the trips' calls.
            let t0 = Instant::now();
            let fillers: Vec<(String, String)> = cars
                .iter()
                .flat_map(|c| (0..FILLERS_PER_CAR).map(move |i| (c.clone(), format!("fill-{c}-{i}"))))
                .collect();
            let sent = futures_util::stream::iter(fillers.iter().map(|(car, trip)| {
                let (http, ingress) = (&http, &ingress);
                async move {
                    send_until_accepted(
                        http,
                        ingress,
                        &format!("Cars/{car}/reserve"),
                        &json!({ "tripId": trip }).to_string(),
                        trip,
                    )
                    .await
                }
            }))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
            for r in sent {
                r?;
            }
            println!(
                "i4_d: {} filler reservations queued in {} ms",
                fillers.len(),
                t0.elapsed().as_millis()
            );

            // The trips, through n1's ingress (Trip/book is stateless: the trip lives wherever its
            // invocation id's partition is).
            let ids = futures_util::future::join_all(trips.iter().map(|t| {
                let (http, ingress) = (&http, &ingress);
                async move { send_until_accepted(http, ingress, "Trip/book", &trip_body(t), &t.id).await }
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<String>>>()?;
            let distinct: BTreeSet<&String> = ids.iter().collect();
            ensure!(
                distinct.len() == TRIPS,
                "{} distinct invocation ids for {TRIPS} trips",
                distinct.len()
            );
            println!(
                "i4_d: {TRIPS} trips accepted {} ms after start",
                t0.elapsed().as_millis()
            );

            // Wait until some trips are mid-way: flight and hotel done, the car call pending.
            let deadline = Deadline::after(Duration::from_secs(60), "waiting for trips with a pending call to Cars");
            let (pending, unfinished) = loop {
                let mut pending = 0;
                let mut unfinished = 0;
                for id in &ids {
                    if let Ok(v) = invocation(&http, &admin, id).await {
                        pending += usize::from(car_call_pending(&v));
                        unfinished += usize::from(!is_finished(&v));
                    }
                }
                if pending >= 5 {
                    break (pending, unfinished);
                }
                deadline.check(format!(
                    "{pending} trips with a pending car call, {unfinished} unfinished"
                ))?;
                sleep_ms(50).await;
            };

            cluster.kill(VICTIM);
            let killed_at = t0.elapsed().as_millis();
            println!(
                "i4_d: SIGKILL {VICTIM} at {killed_at} ms with {pending} trips waiting on a car and {unfinished} of {TRIPS} unfinished"
            );
            sleep_ms(2000).await;
            cluster.restart(VICTIM).await?;
            println!("i4_d: {VICTIM} restarted and ready at {} ms", t0.elapsed().as_millis());

            // Every trip finishes.
            let deadline = Deadline::after(Duration::from_secs(150), "waiting for every trip to finish");
            let finals: Vec<Value> = loop {
                let got = futures_util::future::join_all(ids.iter().map(|id| invocation(&http, &admin, id))).await;
                let done: Vec<Value> = got
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .filter(|v| is_finished(v))
                    .cloned()
                    .collect();
                if done.len() == TRIPS {
                    break done;
                }
                let mut hist: BTreeMap<String, usize> = BTreeMap::new();
                for r in &got {
                    let k = match r {
                        Ok(v) => inv_status(v).to_string(),
                        Err(_) => "error".to_string(),
                    };
                    *hist.entry(k).or_default() += 1;
                }
                deadline.check(format!("statuses {hist:?}"))?;
                sleep_ms(300).await;
            };
            println!("i4_d: all {TRIPS} trips finished at {} ms", t0.elapsed().as_millis());

            let mut problems = Vec::new();
            let mut ok_trips: BTreeSet<String> = BTreeSet::new();
            for (t, v) in trips.iter().zip(&finals) {
                match (inv_output(v), t.fail) {
                    (Some(Ok(text)), false)
                        if serde_json::from_str::<Value>(&text).ok() == Some(json!(format!("booked {}", t.id))) =>
                    {
                        ok_trips.insert(t.id.clone());
                    }
                    (Some(Err((422, msg))), true) if msg.contains(&format!("trip {} failed", t.id)) => {}
                    (out, fail) => problems.push(format!(
                        "{} (failAt car: {fail}): unexpected outcome {out:?}: {}",
                        t.id,
                        inv_summary(v)
                    )),
                }
            }
            println!(
                "i4_d: {} booked, {} failed at the car (as planned: {})",
                ok_trips.len(),
                TRIPS - ok_trips.len(),
                trips.iter().filter(|t| t.fail).count()
            );

            // Held reservations and logs per object.
            let mut objects: Vec<(&str, String)> = Vec::new();
            objects.extend(flights.iter().map(|k| ("Flights", k.clone())));
            objects.extend(hotels.iter().map(|k| ("Hotels", k.clone())));
            objects.extend(cars.iter().map(|k| ("Cars", k.clone())));
            for (object, key) in &objects {
                let (held, log) = reservation_status(&http, &ingress, object, key).await?;
                let mine: Vec<&Trip> = trips
                    .iter()
                    .filter(|t| match *object {
                        "Flights" => &t.flight == key,
                        "Hotels" => &t.hotel == key,
                        _ => &t.car == key,
                    })
                    .collect();
                let mut expected_held: BTreeSet<String> = mine
                    .iter()
                    .filter(|t| ok_trips.contains(&t.id))
                    .map(|t| t.id.clone())
                    .collect();
                if *object == "Cars" {
                    expected_held.extend(fillers.iter().filter(|(c, _)| c == key).map(|(_, f)| f.clone()));
                }
                let held_set: BTreeSet<String> = held.iter().cloned().collect();
                if held_set != expected_held || held.len() != held_set.len() {
                    problems.push(format!(
                        "{object}/{key}: held {} ({} distinct), expected {}; missing {:?}, extra {:?}",
                        held.len(),
                        held_set.len(),
                        expected_held.len(),
                        expected_held.difference(&held_set).take(5).collect::<Vec<_>>(),
                        held_set.difference(&expected_held).take(5).collect::<Vec<_>>()
                    ));
                }
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for e in &log {
                    *counts.entry(e.as_str()).or_default() += 1;
                }
                for (e, c) in &counts {
                    if *c > 1 {
                        problems.push(format!("{object}/{key}: action {e:?} applied {c} times"));
                    }
                }
                for t in &mine {
                    let pos = |a: &str| log.iter().position(|e| e == &format!("{a}:{}", t.id));
                    let (r, c) = (pos("reserve"), pos("cancel"));
                    let ok = match (*object, t.fail) {
                        (_, false) => r.is_some() && c.is_none(),
                        ("Cars", true) => r.is_none() && c.is_none(),
                        (_, true) => matches!((r, c), (Some(r), Some(c)) if r < c),
                    };
                    if !ok {
                        problems.push(format!(
                            "{object}/{key}: trip {} (fail {}): reserve at {r:?}, cancel at {c:?}",
                            t.id, t.fail
                        ));
                    }
                }
            }

            // Each (object, key, handler, trip) was invoked once: count the callee invocations on
            // every node (a duplicated call would be hidden by the handlers' idempotency).
            let mut seen_ids: BTreeSet<String> = BTreeSet::new();
            let mut calls: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
            for node in ["n1", "n2", "n3"] {
                let kiln = &cluster.node(node).kiln;
                for object in ["Flights", "Hotels", "Cars"] {
                    for handler in ["reserve", "cancel"] {
                        let (list, _) = list_all(kiln, &format!("service={object}&handler={handler}"), 500).await?;
                        let fresh: Vec<String> = list
                            .iter()
                            .filter_map(|v| v["id"].as_str().map(str::to_string))
                            .filter(|id| seen_ids.insert(id.clone()))
                            .collect();
                        let fetched = futures_util::stream::iter(fresh.iter().map(|id| kiln.invocation(id)))
                            .buffer_unordered(16)
                            .collect::<Vec<_>>()
                            .await;
                        for v in fetched {
                            *calls.entry(saga_call(object, handler, &v?)).or_default() += 1;
                        }
                    }
                }
            }
            let dup_calls: Vec<String> = calls
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(k, c)| format!("{k:?}×{c}"))
                .collect();
            let trip_calls = calls.keys().filter(|(_, _, _, t)| !t.starts_with("fill-")).count();
            println!(
                "i4_d: {} callee invocations inspected ({} for trips, {} fillers); {} duplicated",
                calls.values().sum::<usize>(),
                trip_calls,
                calls.len() - trip_calls,
                dup_calls.len()
            );
            let expected_trip_calls: usize = trips.iter().map(|t| if t.fail { 5 } else { 3 }).sum();
            if trip_calls != expected_trip_calls {
                problems.push(format!(
                    "{trip_calls} distinct reserve/cancel calls for trips, expected {expected_trip_calls}"
                ));
            }
            if calls.len() - trip_calls != fillers.len() {
                problems.push(format!(
                    "{} filler reservations listed, expected {}",
                    calls.len() - trip_calls,
                    fillers.len()
                ));
            }
            if !dup_calls.is_empty() {
                problems.push(format!("calls executed more than once: {dup_calls:?}"));
            }
            ensure!(
                problems.is_empty(),
                "{} problems:\n{}",
                problems.len(),
                problems.join("\n")
            );
            cluster.print_issues("i4_d");
            Ok::<_, anyhow::Error>(())
        },
    );
}
