//! (i3 a, f) Sagas over durable calls (examples/saga): 200 concurrent trips while kiln is
//! SIGKILLed and restarted 10 times; cancelling and killing a trip mid-way.
//!
//! Key choice for (a): a small shared pool — flights `f0..f9`, hotels `h0..h6`, cars `c0..c4`
//! (trip i uses f{i%10}, h{i%7}, c{i%5}) — so exclusive calls of many sagas queue on the same
//! objects while kiln crashes. Trips with i % 5 == 0 (20 %) carry `failAt = "car"`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

const SAGAS: usize = 200;
const CRASHES: usize = 10;
const FLIGHTS: usize = 10;
const HOTELS: usize = 7;
const CARS: usize = 5;

struct Trip {
    id: String,
    flight: String,
    hotel: String,
    car: String,
    fail: bool,
}

fn trips() -> Vec<Trip> {
    (0..SAGAS)
        .map(|i| Trip {
            id: format!("t{i:03}"),
            flight: format!("f{}", i % FLIGHTS),
            hotel: format!("h{}", i % HOTELS),
            car: format!("c{}", i % CARS),
            fail: i % 5 == 0,
        })
        .collect()
}

fn trip_body(t: &Trip) -> String {
    let mut v = json!({ "tripId": t.id, "flight": t.flight, "hotel": t.hotel, "car": t.car });
    if t.fail {
        v["failAt"] = json!("car");
    }
    v.to_string()
}

/// `{Object}/{key}/status` → (held, log).
async fn reservation_status(kiln: &Kiln, object: &str, key: &str) -> Result<(Vec<String>, Vec<String>)> {
    let r = kiln.call(&format!("{object}/{key}/status"), "").await?;
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

/// Sends `Trip/book` with the trip id as idempotency key, retrying (same key) through crashes
/// until a 202 arrives; returns (invocation id, tries).
async fn submit(http: Http, ingress: String, body: String, key: String) -> Result<(String, usize)> {
    let deadline = Deadline::after(Duration::from_secs(90), format!("submitting trip {key}"));
    let mut tries = 0;
    loop {
        tries += 1;
        let last = match send(&http, &ingress, "Trip/book", &body, Some(&key)).await {
            Ok(r) if r.status == 202 => return Ok((send_id(&r)?, tries)),
            Ok(r) => r.to_string(),
            Err(e) => format!("{e:#}"),
        };
        deadline.check(last)?;
        sleep_ms(100).await;
    }
}

#[test]
fn i3_a_sagas_under_kiln_crashes() {
    run(
        "i3_a_sagas_under_kiln_crashes",
        Duration::from_secs(300),
        |env| async move {
            let seed = test_seed();
            let mut rng = fastrand::Rng::with_seed(seed);
            println!("i3_a: seed {seed} (set KILN_E2E_SEED to replay the crash schedule)");
            let saga = Service::start(&env, Jar::Saga, &[]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::retry(50, 1000)).await?;
            register_expect(&kiln, &saga.uri(), &["Trip", "Flights", "Hotels", "Cars"]).await?;
            let trips = trips();

            // Each of the 10 crashes comes after a random uptime of 0.5–2 s; a wave of 20 sagas is
            // submitted a random 20–150 ms before it, so every crash hits sagas in flight (and some
            // /sends in flight: those retry with the same idempotency key).
            let t0 = Instant::now();
            let (http, ingress) = (kiln.http.clone(), kiln.ingress());
            let mut handles = Vec::new();
            let mut crash_log = Vec::new();
            let mut inflight_at_crash = 0usize;
            let mut crashes_mid_saga = 0usize;
            for (n, wave) in trips.chunks(SAGAS / CRASHES).enumerate() {
                let up_ms = rng.u64(500..=2000);
                let lead_ms = rng.u64(20..=150);
                sleep_ms(up_ms - lead_ms).await;
                for t in wave {
                    handles.push(tokio::spawn(submit(
                        http.clone(),
                        ingress.clone(),
                        trip_body(t),
                        t.id.clone(),
                    )));
                }
                sleep_ms(lead_ms).await;
                ensure!(kiln.is_running(), "kiln exited on its own before crash #{}", n + 1);
                let (listed, _) = list_all(&kiln, "service=Trip", 1000).await?;
                let open = listed.iter().filter(|v| !is_finished(v)).count();
                inflight_at_crash += open;
                crashes_mid_saga += usize::from(open > 0);
                kiln.kill();
                let killed_at = t0.elapsed().as_millis();
                kiln.restart().await.with_context(|| format!("restart #{}", n + 1))?;
                crash_log.push(format!(
                "#{}: up {up_ms} ms (wave {lead_ms} ms before), SIGKILL at {killed_at} ms with {open} of {} listed sagas unfinished, ready after {} ms",
                n + 1, listed.len(), t0.elapsed().as_millis() - killed_at));
            }
            let last_restart_ms = t0.elapsed().as_millis();
            println!(
                "i3_a: crashes ({crashes_mid_saga} of {CRASHES} with sagas in flight):\n  {}",
                crash_log.join("\n  ")
            );
            ensure!(
                inflight_at_crash > 0,
                "no saga was in flight at any crash: the run tested nothing"
            );
            let mut submitted = Vec::new();
            for h in handles {
                submitted.push(h.await.map_err(|e| anyhow!("submit task: {e}"))??);
            }
            let submitted_ms = t0.elapsed().as_millis();
            let retried = submitted.iter().filter(|(_, tries)| *tries > 1).count();
            println!("i3_a: {SAGAS} sagas acknowledged by {submitted_ms} ms ({retried} needed a retried /send)");
            let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
            let distinct: BTreeSet<&String> = ids.iter().collect();
            ensure!(
                distinct.len() == SAGAS,
                "idempotent /send gave {} distinct ids for {SAGAS} trips",
                distinct.len()
            );

            // Every saga reaches a final status (admin listing, paged).
            let deadline = Deadline::after(Duration::from_secs(150), "waiting for every saga to finish");
            let by_id = loop {
                let (all, pages) = list_all(&kiln, "service=Trip", 50).await?;
                let mut hist: BTreeMap<String, usize> = BTreeMap::new();
                for v in &all {
                    *hist.entry(inv_status(v).to_string()).or_default() += 1;
                }
                let done = all.iter().filter(|v| is_finished(v)).count();
                if done == SAGAS && all.len() == SAGAS {
                    println!("i3_a: all {SAGAS} finished {} ms after the last restart (listing: {pages} pages of 50; {hist:?})",
                    t0.elapsed().as_millis() - last_restart_ms);
                    break all
                        .into_iter()
                        .map(|v| (v["id"].as_str().unwrap_or("").to_string(), v))
                        .collect::<BTreeMap<_, _>>();
                }
                deadline.check(format!("{} Trip invocations listed, statuses {hist:?}", all.len()))?;
                sleep_ms(500).await;
            };

            let mut problems = Vec::new();
            let mut attempts_hist: BTreeMap<i64, usize> = BTreeMap::new();
            let mut ok_trips: BTreeSet<String> = BTreeSet::new();
            for (t, id) in trips.iter().zip(&ids) {
                let Some(v) = by_id.get(id) else {
                    problems.push(format!("{}: invocation {id} not in the listing", t.id));
                    continue;
                };
                *attempts_hist.entry(v["attempts"].as_i64().unwrap_or(-1)).or_default() += 1;
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
                "i3_a: {} booked, {} failed; attempts per saga (attempts → count): {attempts_hist:?}",
                ok_trips.len(),
                SAGAS - ok_trips.len()
            );
            // Attach answers like the original call.
            let attaches = futures_util::future::join_all(trips.iter().zip(&ids).map(|(t, id)| {
                let kiln = &kiln;
                async move {
                    let r = kiln.attach(id, Duration::from_secs(30)).await?;
                    match t.fail {
                        false => ensure!(
                            r.status == 200 && r.json()? == json!(format!("booked {}", t.id)),
                            "attach {}: {r}",
                            t.id
                        ),
                        true => ensure!(failure_of(&r)?.0 == 422, "attach {}: {r}", t.id),
                    }
                    Ok::<_, anyhow::Error>(())
                }
            }))
            .await;
            problems.extend(attaches.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))));

            // Held reservations and action logs per object.
            let mut log_entries = 0usize;
            for (object, n) in [("Flights", FLIGHTS), ("Hotels", HOTELS), ("Cars", CARS)] {
                for k in 0..n {
                    let key = format!("{}{k}", &object[..1].to_lowercase());
                    let (held, log) = reservation_status(&kiln, object, &key).await?;
                    log_entries += log.len();
                    let mine: Vec<&Trip> = trips
                        .iter()
                        .filter(|t| match object {
                            "Flights" => t.flight == key,
                            "Hotels" => t.hotel == key,
                            _ => t.car == key,
                        })
                        .collect();
                    let expected_held: BTreeSet<&str> = mine
                        .iter()
                        .filter(|t| ok_trips.contains(&t.id))
                        .map(|t| t.id.as_str())
                        .collect();
                    let held_set: BTreeSet<&str> = held.iter().map(String::as_str).collect();
                    if held_set != expected_held || held.len() != held_set.len() {
                        problems.push(format!("{object}/{key}: held {held:?}, expected {expected_held:?}"));
                    }
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for e in &log {
                        *counts.entry(e.as_str()).or_default() += 1;
                    }
                    for (e, c) in &counts {
                        if *c > 1 {
                            problems.push(format!("{object}/{key}: action {e:?} applied {c} times; log {log:?}"));
                        }
                        let trip = e.split_once(':').map(|(_, t)| t).unwrap_or("");
                        if !mine.iter().any(|t| t.id == trip) {
                            problems.push(format!("{object}/{key}: log entry {e:?} for a trip not routed here"));
                        }
                    }
                    for t in &mine {
                        let pos = |a: &str| log.iter().position(|e| e == &format!("{a}:{}", t.id));
                        let (r, c) = (pos("reserve"), pos("cancel"));
                        let ok = match (object, t.fail) {
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
            }
            println!(
                "i3_a: {log_entries} action-log entries checked over {} objects",
                FLIGHTS + HOTELS + CARS
            );

            // Each (object, trip, action) was invoked once: a duplicated call would be hidden by the
            // handlers' idempotency, so count the callee invocations themselves.
            let mut calls: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
            for object in ["Flights", "Hotels", "Cars"] {
                for handler in ["reserve", "cancel"] {
                    let (list, _) = list_all(&kiln, &format!("service={object}&handler={handler}"), 500).await?;
                    let fetched = futures_util::stream::iter(list.iter().map(|v| {
                        let kiln = &kiln;
                        let id = v["id"].as_str().unwrap_or("").to_string();
                        async move { kiln.invocation(&id).await }
                    }))
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await;
                    for v in fetched {
                        *calls.entry(saga_call(object, handler, &v?)).or_default() += 1;
                    }
                }
            }
            let dup_calls: Vec<String> = calls
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(k, c)| format!("{k:?}×{c}"))
                .collect();
            println!(
                "i3_a: {} callee invocations (reserve/cancel) inspected; {} duplicated",
                calls.values().sum::<usize>(),
                dup_calls.len()
            );
            if !dup_calls.is_empty() {
                problems.push(format!("calls executed more than once: {dup_calls:?}"));
            }
            ensure!(
                problems.is_empty(),
                "{} problems:\n{}",
                problems.len(),
                problems.join("\n")
            );
            Ok(())
        },
    );
}

const FILLERS: usize = 600;

/// Polls until the trip's journal has a `call` to Cars that has no result yet.
async fn wait_car_call_pending(kiln: &Kiln, id: &str) -> Result<Value> {
    kiln.wait_invocation(
        id,
        Duration::from_secs(30),
        "a pending call to Cars in the journal",
        |v| {
            v["journal"].as_array().is_some_and(|j| {
                j.iter().any(|e| {
                    e["kind"] == "call" && e["service"] == "Cars" && e.get("result").is_none_or(Value::is_null)
                })
            })
        },
    )
    .await
}

#[test]
fn i3_f_cancel_and_kill_saga() {
    run(
        "i3_f_cancel_and_kill_saga",
        Duration::from_secs(180),
        |env| async move {
            let saga = Service::start(&env, Jar::Saga, &[]).await?;
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &saga.uri(), &["Trip", "Flights", "Hotels", "Cars"]).await?;

            // Make car "cblock" busy: a queue of quick exclusive reservations ahead of the trips'.
            let t0 = Instant::now();
            let sent = futures_util::stream::iter((0..FILLERS).map(|i| {
                let kiln = &kiln;
                async move {
                    kiln.send(
                        "Cars/cblock/reserve",
                        &json!({ "tripId": format!("fill{i}") }).to_string(),
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
                "i3_f: {FILLERS} filler reservations queued on Cars/cblock in {} ms",
                t0.elapsed().as_millis()
            );
            let trip = |id: &str| {
                json!({ "tripId": id, "flight": format!("f-{id}"), "hotel": format!("h-{id}"), "car": "cblock" })
                    .to_string()
            };
            let cancel_id = kiln.send("Trip/book", &trip("tc")).await?;
            let kill_id = kiln.send("Trip/book", &trip("tk")).await?;
            let before_c = wait_car_call_pending(&kiln, &cancel_id).await?;
            let before_k = wait_car_call_pending(&kiln, &kill_id).await?;
            let at_ms = t0.elapsed().as_millis();
            println!(
                "i3_f: at {at_ms} ms, tc: {}\n       tk: {}",
                inv_summary(&before_c),
                inv_summary(&before_k)
            );

            kiln.patch_invocation(&cancel_id, "cancel")
                .await?
                .expect_status(202)
                .context("cancel tc")?;
            kiln.patch_invocation(&kill_id, "kill")
                .await?
                .expect_status(202)
                .context("kill tk")?;
            let (fillers_done, _) =
                list_all(&kiln, "service=Cars&key=cblock&handler=reserve&status=completed", 1000).await?;
            println!(
                "i3_f: cancel and kill requested at {} ms; {} of {FILLERS} fillers done by then",
                t0.elapsed().as_millis(),
                fillers_done.len()
            );

            // Kill: ends at once as killed (410), no compensation runs.
            let t_kill = Instant::now();
            let k = kiln.wait_finished(&kill_id, Duration::from_secs(10)).await?;
            let kill_ms = t_kill.elapsed().as_millis();
            println!("i3_f: tk after {kill_ms} ms: {}", inv_summary(&k));
            ensure!(
                inv_status(&k) == "killed",
                "killed trip: expected status killed: {}",
                inv_summary(&k)
            );
            ensure!(
                matches!(inv_output(&k), Some(Err((410, _)))),
                "killed trip: expected failure 410: {}",
                inv_summary(&k)
            );
            let r = kiln.attach(&kill_id, Duration::from_secs(10)).await?;
            ensure!(
                failure_of(&r)?.0 == 410,
                "attach to the killed trip: expected code 410, got {r}"
            );

            // Cancel: compensations run, the trip fails with 409.
            let c = kiln.wait_finished(&cancel_id, Duration::from_secs(90)).await?;
            let cancel_ms = t0.elapsed().as_millis();
            println!("i3_f: tc finished at {cancel_ms} ms: {}", inv_summary(&c));
            let kinds = journal_kinds(&c);
            // A handler's terminal failure is status `completed` with a failure output (status
            // `failed` is for failures assigned by the runtime); accept either, require the 409.
            ensure!(
                ["completed", "failed"].contains(&inv_status(&c)),
                "cancelled trip: expected a finished status: {}",
                inv_summary(&c)
            );
            match inv_output(&c) {
                Some(Err((409, msg))) if msg.contains("tc") => println!("i3_f: tc output: 409 {msg:?}"),
                other => bail!("cancelled trip: expected failure 409 \"trip tc failed: …\", got {other:?}"),
            }
            ensure!(
                kinds.iter().any(|k| k == "cancelled"),
                "cancelled trip's journal has no `cancelled` entry: {kinds:?}"
            );
            let r = kiln.attach(&cancel_id, Duration::from_secs(10)).await?;
            let (code, msg) = failure_of(&r)?;
            ensure!(code == 409, "attach to the cancelled trip: expected code 409, got {r}");
            println!("i3_f: attach tc → HTTP {} code {code} {msg:?}", r.status);

            let (held, log) = reservation_status(&kiln, "Flights", "f-tc").await?;
            ensure!(
                held.is_empty() && log == ["reserve:tc", "cancel:tc"],
                "Flights/f-tc after cancel: held {held:?} log {log:?}"
            );
            let (held, log) = reservation_status(&kiln, "Hotels", "h-tc").await?;
            ensure!(
                held.is_empty() && log == ["reserve:tc", "cancel:tc"],
                "Hotels/h-tc after cancel: held {held:?} log {log:?}"
            );
            let (held, log) = reservation_status(&kiln, "Cars", "cblock").await?;
            let car_tc: Vec<&String> = log.iter().filter(|e| e.ends_with(":tc")).collect();
            ensure!(
                !held.contains(&"tc".to_string()),
                "Cars/cblock still holds tc after the cancelled trip compensated"
            );
            ensure!(
                car_tc.is_empty() || car_tc == ["reserve:tc", "cancel:tc"],
                "Cars/cblock log for tc: {car_tc:?}"
            );
            println!(
                "i3_f: compensated: Flights/f-tc and Hotels/h-tc [reserve, cancel]; Cars/cblock for tc: {car_tc:?}"
            );

            // The killed trip ran no compensation: its flight and hotel stay reserved.
            for (object, key) in [("Flights", "f-tk"), ("Hotels", "h-tk")] {
                let (held, log) = reservation_status(&kiln, object, key).await?;
                ensure!(
                    held == ["tk"] && log == ["reserve:tk"],
                    "{object}/{key} after kill (no compensation expected): held {held:?} log {log:?}"
                );
            }
            let car_tk: Vec<String> = log.into_iter().filter(|e| e.ends_with(":tk")).collect();
            println!("i3_f: killed trip left Flights/f-tk and Hotels/h-tk reserved; Cars/cblock for tk: {car_tk:?}");

            // Control of finished and unknown invocations.
            let r = kiln.patch_invocation(&cancel_id, "cancel").await?;
            r.expect_error(409).context("cancel of a finished invocation")?;
            let r = kiln.patch_invocation(&kill_id, "kill").await?;
            r.expect_error(409).context("kill of a finished invocation")?;
            let r = kiln
                .patch_invocation("inv_0123456789abcdef0123456789abcdef", "cancel")
                .await?;
            r.expect_error(404).context("cancel of an unknown invocation")?;
            Ok(())
        },
    );
}
