//! (f) Errors: unknown targets, body limits, malformed ids, a protocol-violating endpoint and a
//! non-deterministic handler — each a clear JSON error, while the node keeps serving.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_endpoint::FakeEndpoint;
use crate::harness::*;

/// Sends `POST path` with a `content-length: len` body of JSON whitespace + `1`, writing the body
/// while reading the response (a server may answer 413 before reading the body). Returns the
/// response status and body.
async fn raw_post_big(port: u16, path: &str, len: usize) -> Result<(u16, String)> {
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let mut body = vec![b' '; len];
        body[len - 1] = b'1';
        for chunk in body.chunks(64 * 1024) {
            wr.write_all(chunk).await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 8192];
        loop {
            // Stop once the head and a content-length body are complete.
            if let Some(head_end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
                if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                    let cl: usize = cl.trim().parse().unwrap_or(0);
                    if resp.len() >= head_end + 4 + cl {
                        return Ok(());
                    }
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => resp.extend_from_slice(&chunk[..n]),
                Err(e) if !resp.is_empty() => {
                    println!("f: note: read error after {} response bytes: {e}", resp.len());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    writer.abort();
    match read {
        Err(_) => bail!("no response to a {len}-byte POST {path} within 30 s"),
        Ok(Err(e)) => bail!("reading the response to a {len}-byte POST {path}: {e}"),
        Ok(Ok(())) => {}
    }
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line in response to a {len}-byte POST {path}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn expect_json_error(what: &str, status: u16, body: &str, expected: u16) -> Result<(u64, String)> {
    let resp = Resp {
        status,
        headers: Default::default(),
        body: Bytes::from(body.to_string()),
    };
    resp.expect_error(expected).with_context(|| what.to_string())
}

#[test]
fn f_http_errors_404_413_400() {
    run(
        "f_http_errors_404_413_400",
        Duration::from_secs(120),
        |env| async move {
            let kiln = Kiln::start(
                &env,
                KilnOpts {
                    max_body_bytes: Some(1024),
                    ..Default::default()
                },
            )
            .await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;
            ensure!(kiln.counter_add("f", 1).await? == 1, "first add");

            // Registration: again → 200 (already registered); unreachable endpoint → 502 JSON.
            let again = kiln
                .http
                .post(
                    &format!("{}/deployments", kiln.admin()),
                    serde_json::json!({ "uri": counter.uri() }).to_string(),
                    &[],
                )
                .await?;
            again
                .expect_status(200)
                .context("registering the same endpoint again")?;
            let nowhere = format!("http://127.0.0.1:{}", free_port());
            let r = kiln
                .http
                .post(
                    &format!("{}/deployments", kiln.admin()),
                    serde_json::json!({ "uri": nowhere }).to_string(),
                    &[],
                )
                .await?;
            let (code, msg) = r.expect_error(502).context("registering an unreachable endpoint")?;
            println!("f: register unreachable {nowhere} → 502 code {code} {msg:?}");
            let deps = kiln
                .http
                .get(&format!("{}/deployments", kiln.admin()))
                .await?
                .ok_json()?;
            ensure!(
                deps["deployments"]
                    .as_array()
                    .is_some_and(|d| d.len() == 1 && d[0]["uri"].as_str() == Some(counter.uri().as_str())),
                "GET /deployments should list exactly the counter endpoint: {deps}"
            );
            let services = kiln.http.get(&format!("{}/services", kiln.admin())).await?.ok_json()?;
            let counter_svc = services["services"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["name"] == "Counter"))
                .cloned()
                .unwrap_or_default();
            let handler_kind = |name: &str| {
                counter_svc["handlers"]
                    .as_array()
                    .and_then(|h| h.iter().find(|x| x["name"] == name))
                    .and_then(|x| x["kind"].as_str().map(str::to_string))
            };
            ensure!(
                counter_svc["kind"] == "virtual_object"
                    && handler_kind("add").as_deref() == Some("exclusive")
                    && handler_kind("get").as_deref() == Some("shared"),
                "GET /services should describe Counter (virtual_object; add exclusive, get shared): {services}"
            );

            // 404: unknown service, unknown handler, unknown invocation.
            for path in ["NoSuchService/go", "NoSuchObject/k/go", "Counter/k/noSuchHandler"] {
                let r = kiln.call(path, "1").await?;
                let (code, msg) = r.expect_error(404).with_context(|| format!("POST /{path}"))?;
                println!("f: POST /{path} → 404 code {code} {msg:?}");
            }
            let unknown = "inv_0123456789abcdef0123456789abcdef";
            for url in [
                format!("{}/invocations/{unknown}/output", kiln.ingress()),
                format!("{}/invocations/{unknown}/attach", kiln.ingress()),
                format!("{}/restate/invocation/{unknown}/output", kiln.ingress()),
                format!("{}/invocations/{unknown}", kiln.admin()),
            ] {
                let r = kiln.http.get_timeout(&url, Duration::from_secs(10)).await?;
                r.expect_error(404).with_context(|| format!("GET {url}"))?;
            }
            ensure!(kiln.counter_add("f", 1).await? == 2, "add after 404s");

            // 413: 64 KiB over a 1 KiB limit, with content-length and chunked; 1 KiB still passes.
            let (status, body) = raw_post_big(kiln.ingress_port, "/Counter/f/add", 64 * 1024).await?;
            let (code, msg) = expect_json_error("64 KiB body, content-length, limit 1024", status, &body, 413)?;
            println!("f: 64 KiB body → 413 code {code} {msg:?}");
            let mut big = vec![b' '; 64 * 1024];
            big[64 * 1024 - 1] = b'1';
            match kiln
                .http
                .post_chunked(&format!("{}/Counter/f/add", kiln.ingress()), Bytes::from(big), 4096)
                .await
            {
                Ok(r) => {
                    r.expect_error(413).context("64 KiB chunked body, limit 1024")?;
                }
                // The server may answer and close before the client has sent the whole body.
                Err(e) => println!("f: note: chunked 64 KiB body: transport error (server closed early?): {e:#}"),
            }
            let mut ok_body = vec![b' '; 1000];
            ok_body[999] = b'1';
            let r = kiln
                .http
                .post(&format!("{}/Counter/f/add", kiln.ingress()), ok_body, &[])
                .await?;
            ensure!(r.status == 200, "a 1000-byte body under the 1024 limit must pass: {r}");
            ensure!(kiln.counter_get("f").await? == 3, "count after 413s");

            // 400: malformed invocation ids, on the ingress and on the admin API.
            for bad in [
                "xyz",
                "inv_xyz",
                "inv_0123456789ABCDEF0123456789ABCDEF",
                "inv_0123456789abcdef0123456789abcde",
            ] {
                for url in [
                    format!("{}/restate/invocation/{bad}/output", kiln.ingress()),
                    format!("{}/invocations/{bad}/attach", kiln.ingress()),
                    format!("{}/invocations/{bad}", kiln.admin()),
                ] {
                    let r = kiln.http.get_timeout(&url, Duration::from_secs(10)).await?;
                    r.expect_error(400).with_context(|| format!("GET {url}"))?;
                }
            }
            println!("f: malformed invocation ids → 400 on ingress and admin");
            ensure!(kiln.counter_add("f", 1).await? == 4, "add after 400s");

            // 413 at the default limit (10 MiB): a second kiln, same counter endpoint.
            let kiln2 = Kiln::start(&env, KilnOpts::default()).await?;
            register_expect(&kiln2, &counter.uri(), &["Counter"]).await?;
            let (status, body) = raw_post_big(kiln2.ingress_port, "/Counter/f/add", 11 * 1024 * 1024).await?;
            let (code, msg) = expect_json_error("11 MiB body, default limit", status, &body, 413)?;
            println!("f: 11 MiB body at the default limit → 413 code {code} {msg:?}");
            ensure!(
                kiln2.counter_add("f", 5).await? == 5,
                "add on the second kiln after 413"
            );
            ensure!(kiln.counter_add("f", 1).await? == 5, "add on the first kiln at the end");
            Ok(())
        },
    );
}

#[test]
fn f_garbage_endpoint_is_protocol_violation_571() {
    run(
        "f_garbage_endpoint_is_protocol_violation_571",
        Duration::from_secs(120),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::retry(50, 400)).await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;
            let fake = FakeEndpoint::start().await?;
            register_expect(&kiln, &fake.uri(), &["Garbage"]).await?;

            let t = Instant::now();
            let r = kiln
                .http
                .post_timeout(
                    &format!("{}/Garbage/go", kiln.ingress()),
                    "",
                    &[],
                    Duration::from_secs(45),
                )
                .await
                .context("POST /Garbage/go (no answer within 45 s: is garbage retried forever?)")?;
            let ms = t.elapsed().as_millis();
            let (code, message) = r.expect_error(571).context("POST /Garbage/go")?;
            println!(
                "f: POST /Garbage/go → 571 code {code} {message:?} after {ms} ms; the fake endpoint saw {} attempt(s)",
                fake.invokes()
            );
            ensure!(
                code == 571,
                "garbage frames must fail the invocation with code 571: {r}"
            );
            if let Some(id) = r.invocation_id() {
                let v = kiln.invocation(&id).await?;
                println!("f: Garbage invocation: {}", inv_summary(&v));
                ensure!(
                    inv_status(&v) == "failed",
                    "Garbage invocation should be failed: {}",
                    inv_summary(&v)
                );
            }
            ensure!(
                kiln.counter_add("g", 1).await? == 1,
                "Counter add after the protocol violation"
            );
            Ok(())
        },
    );
}

#[test]
fn f_non_deterministic_handler_is_journal_mismatch_570() {
    run(
        "f_non_deterministic_handler_is_journal_mismatch_570",
        Duration::from_secs(150),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::retry(50, 500)).await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;
            let mut svc = Service::start(&env, Jar::TestServices, &[]).await?;
            register_expect(&kiln, &svc.uri(), &["Shifty"]).await?;
            ensure!(kiln.counter_add("s", 1).await? == 1, "Counter add at start");

            let t0 = Instant::now();
            let id = kiln.send("Shifty/decide", "4000").await?;
            let first = kiln
                .wait_invocation(
                    &id,
                    Duration::from_secs(15),
                    "journal shows the run entry \"first\"",
                    |v| {
                        v.get("journal").and_then(|j| j.as_array()).is_some_and(|j| {
                            j.iter().any(|e| {
                                e.get("kind").and_then(|k| k.as_str()) == Some("run")
                                    && e.get("name").and_then(|n| n.as_str()) == Some("first")
                            })
                        })
                    },
                )
                .await?;
            println!("f: Shifty at {} ms: {}", t0.elapsed().as_millis(), inv_summary(&first));
            svc.kill();
            ensure!(
                kiln.counter_add("s", 1).await? == 2,
                "Counter add while test-services is down"
            );
            svc.restart_with(&[("SHIFTY_STEP", "second")]).await?;
            ensure!(
                kiln.counter_add("s", 1).await? == 3,
                "Counter add after test-services restart"
            );

            let failed = kiln
                .wait_invocation(&id, Duration::from_secs(40), "status failed", |v| {
                    matches!(inv_status(v), "failed" | "completed")
                })
                .await?;
            println!("f: Shifty at {} ms: {}", t0.elapsed().as_millis(), inv_summary(&failed));
            ensure!(
                inv_status(&failed) == "failed",
                "Shifty should end failed: {}",
                inv_summary(&failed)
            );

            let r = kiln.attach(&id, Duration::from_secs(10)).await?;
            let (code, message) = r.expect_error(570).context("attach to the Shifty invocation")?;
            println!("f: attach Shifty → 570 code {code} {message:?}");
            ensure!(code == 570, "journal mismatch must fail with code 570: {r}");
            ensure!(
                message.to_ascii_lowercase().contains("journal mismatch"),
                "the failure message should mention \"journal mismatch\": {r}"
            );
            // Failed for good: no more attempts.
            let attempts = failed.get("attempts").cloned();
            sleep_ms(1000).await;
            let later = kiln.invocation(&id).await?;
            ensure!(
                inv_status(&later) == "failed" && later.get("attempts").cloned() == attempts,
                "a journal mismatch must not be retried: {} then {}",
                inv_summary(&failed),
                inv_summary(&later)
            );
            ensure!(kiln.counter_add("s", 1).await? == 4, "Counter add at the end");
            Ok(())
        },
    );
}

/// The inbox of one object is capped by the bytes of the inputs it holds, not only by count:
/// behind a running exclusive handler, large requests queue until the cap, then get 429 JSON
/// (nothing written), and everything accepted still runs.
#[test]
fn f_inbox_capped_by_bytes() {
    run("f_inbox_capped_by_bytes", Duration::from_secs(120), |env| async move {
        let opts = KilnOpts {
            max_body_bytes: Some(1_000_000),
            extra_args: vec!["--max-inbox-bytes-per-object".into(), "2500000".into()],
            ..Default::default()
        };
        let kiln = Kiln::start(&env, opts).await?;
        let svc = Service::start(&env, Jar::TestServices, &[]).await?;
        register_expect(&kiln, &svc.uri(), &["Slowpoke"]).await?;
        let holder = kiln.send("Slowpoke/big/hold", "3000").await?;
        kiln.wait_invocation(&holder, Duration::from_secs(10), "status running", |v| {
            inv_status(v) == "running"
        })
        .await?;
        // `1` and 900 KB of JSON whitespace: a valid input of 900 KB.
        let big = format!("1{}", " ".repeat(900_000));
        let url = format!("{}/Slowpoke/big/hold/send", kiln.ingress());
        let mut accepted = Vec::new();
        let mut refused = None;
        for i in 0..4 {
            let resp = kiln.http.post(&url, big.clone(), &[]).await?;
            match resp.status {
                202 => accepted.push(resp.json()?["invocationId"].as_str().unwrap_or_default().to_owned()),
                429 => {
                    refused = Some((i, resp.json().context("429 must be JSON")?));
                    break;
                }
                other => bail!("request {i}: unexpected {other}: {}", resp.text()),
            }
        }
        let (at, body) = refused.context("the fourth 900 KB request must be refused")?;
        ensure!(
            at == 2 && accepted.len() == 2,
            "2 × 900 KB fit in 2.5 MB, the third must not: refused at {at}"
        );
        ensure!(
            body["message"].as_str().is_some_and(|m| m.contains("bytes")),
            "the 429 should say the inbox holds too many bytes: {body}"
        );
        for id in accepted.iter().chain([&holder]) {
            let done = kiln.wait_finished(id, Duration::from_secs(30)).await?;
            ensure!(
                inv_status(&done) == "completed",
                "{id} did not complete: {}",
                inv_summary(&done)
            );
        }
        Ok(())
    });
}

/// A burst of requests to an object whose actor is not running yet is queued, not refused: the
/// mailbox has its capacity from the start (actix's default, 16, refused the rest with 429).
#[test]
fn f_cold_object_takes_a_burst() {
    run(
        "f_cold_object_takes_a_burst",
        Duration::from_secs(120),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            let svc = Service::start(&env, Jar::Counter, &[]).await?;
            register_expect(&kiln, &svc.uri(), &["Counter"]).await?;
            for round in 0..5 {
                let url = format!("{}/Counter/cold-{round}/add/send", kiln.ingress());
                let sends = (0..200).map(|_| kiln.http.post(&url, "1", &[]));
                let answers = futures_util::future::join_all(sends).await;
                let refused: Vec<String> = answers
                    .iter()
                    .filter_map(|r| match r {
                        Ok(resp) if resp.status == 202 => None,
                        Ok(resp) => Some(format!("{} {}", resp.status, resp.text())),
                        Err(e) => Some(e.to_string()),
                    })
                    .collect();
                ensure!(
                    refused.is_empty(),
                    "round {round}: {} of 200 sends to a cold object refused, e.g. {}",
                    refused.len(),
                    refused[0]
                );
            }
            Ok(())
        },
    );
}
