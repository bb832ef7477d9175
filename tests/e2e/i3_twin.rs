//! (i3 h) Digital twin (examples/digital-twin): a delayed self-send detects a missing heartbeat;
//! a reading above the threshold raises an alert through a one-way send.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};

use crate::harness::*;

const WINDOW_MS: u64 = 2000;

async fn alerts(kiln: &Kiln, device: &str) -> Result<Vec<Value>> {
    let r = kiln.call(&format!("Alerts/{device}/list"), "").await?;
    r.ok_json()?
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("Alerts/{device}/list is not a list: {r}"))
}

async fn device_status(kiln: &Kiln, device: &str) -> Result<Value> {
    kiln.call(&format!("Device/{device}/status"), "").await?.ok_json()
}

/// Polls the alerts until one matches `pred`; returns (all alerts, ms waited).
async fn wait_alert(
    kiln: &Kiln,
    device: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<(Vec<Value>, u128)> {
    let t = Instant::now();
    let deadline = Deadline::after(timeout, format!("waiting for Alerts/{device}: {what}"));
    loop {
        let list = alerts(kiln, device).await?;
        if list.iter().any(&pred) {
            return Ok((list, t.elapsed().as_millis()));
        }
        deadline.check(serde_json::to_string(&list)?)?;
        sleep_ms(50).await;
    }
}

fn is_heartbeat(a: &Value) -> bool {
    a["kind"] == "heartbeat" && a["message"].as_str().is_some_and(|m| m.contains("heartbeat missing"))
}

#[test]
fn i3_h_digital_twin_heartbeat_and_threshold() {
    run(
        "i3_h_digital_twin_heartbeat_and_threshold",
        Duration::from_secs(120),
        |env| async move {
            let window = WINDOW_MS.to_string();
            let svc = Service::start(&env, Jar::DigitalTwin, &[("HEARTBEAT_WINDOW_MS", window.as_str())]).await?;
            let mut kiln = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln, &svc.uri(), &["Device", "Alerts"]).await?;

            let t0 = Instant::now();
            let r = kiln
                .call("Device/d1/ingest", &json!({ "value": 20.0 }).to_string())
                .await?;
            let st = r.ok_json().context("first ingest")?;
            ensure!(
                st["status"] == "online" && st["count"] == 1,
                "first ingest returned {st}"
            );
            let ingested_ms = t0.elapsed().as_millis();
            // The delayed send reaches its target through the durable outbox, just after the
            // ingest's answer: look again for up to 1 s (well inside the 2 s window).
            let listed = Instant::now();
            let scheduled = loop {
                let (scheduled, _) = list_page(&kiln, "status=scheduled&service=Device&key=d1").await?;
                if !scheduled.is_empty() || listed.elapsed() > Duration::from_secs(1) {
                    break scheduled;
                }
                sleep_ms(20).await;
            };
            println!(
                "i3_h: ingest(20) → {st} in {ingested_ms} ms; scheduled Device/d1 invocations: {:?}",
                scheduled.iter().map(|v| v["handler"].clone()).collect::<Vec<_>>()
            );
            ensure!(
                scheduled.len() == 1 && scheduled[0]["handler"] == "checkHeartbeat",
                "expected one scheduled checkHeartbeat after the ingest: {scheduled:?}"
            );
            ensure!(alerts(&kiln, "d1").await?.is_empty(), "alerts before anything happened");

            // No more readings: a heartbeat alert within the window + slack, not before the window.
            let (list, _) = wait_alert(
                &kiln,
                "d1",
                "a heartbeat-missing alert",
                Duration::from_millis(WINDOW_MS + 6000),
                is_heartbeat,
            )
            .await?;
            let alert_ms = t0.elapsed().as_millis();
            let status = device_status(&kiln, "d1").await?;
            println!("i3_h: heartbeat alert seen {alert_ms} ms after the ingest started (window {WINDOW_MS} ms): {list:?}; device: {status}");
            ensure!(
                alert_ms + 100 >= WINDOW_MS as u128,
                "heartbeat alert after {alert_ms} ms, before the {WINDOW_MS} ms window"
            );
            ensure!(list.len() == 1, "expected exactly one alert, got {list:?}");
            ensure!(
                status["status"] == "offline",
                "device status after the missed heartbeat: {status}"
            );

            // A reading above the threshold (default 100) raises a threshold alert; the device is online again.
            let t1 = Instant::now();
            let st = kiln
                .call("Device/d1/ingest", &json!({ "value": 150.5 }).to_string())
                .await?
                .ok_json()?;
            ensure!(
                st["status"] == "online" && st["count"] == 2,
                "second ingest returned {st}"
            );
            let (list, waited) = wait_alert(&kiln, "d1", "a threshold alert", Duration::from_secs(10), |a| {
                a["kind"] == "threshold"
            })
            .await?;
            println!("i3_h: ingest(150.5) → threshold alert after {waited} ms: {list:?}");
            let th: Vec<&Value> = list.iter().filter(|a| a["kind"] == "threshold").collect();
            ensure!(
                th.len() == 1 && th[0]["value"] == json!(150.5),
                "expected one threshold alert with value 150.5: {list:?}"
            );
            ensure!(
                device_status(&kiln, "d1").await?["status"] == "online",
                "device not online after a reading"
            );
            ensure!(
                t1.elapsed() < Duration::from_millis(WINDOW_MS),
                "threshold check took longer than a window; the next step would race"
            );

            // A reading at or below the threshold raises nothing; a steady stream keeps the device online.
            for v in [99.0, 100.0] {
                kiln.call("Device/d2/ingest", &json!({ "value": v }).to_string())
                    .await?
                    .ok_json()?;
                sleep_ms(WINDOW_MS / 2).await;
            }
            sleep_ms(300).await;
            let d2 = device_status(&kiln, "d2").await?;
            let a2 = alerts(&kiln, "d2").await?;
            println!(
                "i3_h: d2 readings 99, 100 every {} ms → {d2}; alerts {a2:?}",
                WINDOW_MS / 2
            );
            ensure!(
                d2["status"] == "online" && a2.is_empty(),
                "d2 (readings within the window, at/below threshold): {d2} alerts {a2:?}"
            );
            // The delayed self-send is durable: kiln is SIGKILLed and restarted inside the window.
            let t3 = Instant::now();
            kiln.call("Device/d3/ingest", &json!({ "value": 1.0 }).to_string())
                .await?
                .ok_json()?;
            sleep_ms(WINDOW_MS / 4).await;
            kiln.kill();
            kiln.restart().await?;
            let restarted_ms = t3.elapsed().as_millis();
            let (list, _) = wait_alert(
                &kiln,
                "d3",
                "a heartbeat alert after a kiln restart",
                Duration::from_millis(WINDOW_MS + 6000),
                is_heartbeat,
            )
            .await?;
            let d3_ms = t3.elapsed().as_millis();
            println!("i3_h: d3: kiln restarted at {restarted_ms} ms; heartbeat alert at {d3_ms} ms: {list:?}");
            ensure!(
                d3_ms + 100 >= WINDOW_MS as u128 && list.len() == 1,
                "d3 after a kiln restart: alert at {d3_ms} ms, alerts {list:?}"
            );
            ensure!(
                device_status(&kiln, "d3").await?["status"] == "offline",
                "d3 not offline after its heartbeat alert"
            );
            Ok(())
        },
    );
}
