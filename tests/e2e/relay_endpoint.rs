//! `Relay`, a fake SDK endpoint speaking protocol v1 (docs/protocol.md) whose one handler sends
//! one durable message: it journals a `send` to the target its input names, then its output. No
//! Kotlin handler sends to a workflow; this one can, to any service, handler and key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sdk_wire::*;

const RELAY_DISCOVERY: &str = r#"{"protocolVersion":1,"services":[{"name":"Relay","kind":"service","handlers":[{"name":"go","kind":"shared"}]}]}"#;

/// Input of `Relay/go`: journal `send {service}/{key}/{handler}(value)` once `round` is released.
#[derive(Serialize, Deserialize)]
pub struct RelayInput {
    pub service: String,
    pub handler: String,
    pub key: String,
    /// The message's input, as JSON text.
    pub value: String,
    pub round: u64,
}

/// Stateless service `Relay`, handler `go`: a first attempt waits at a gate until its round
/// is released, then journals its `send` and its output in one go; a replay whose journal has
/// the `send` already only journals the output.
pub struct Relay {
    port: u16,
    /// First attempts waiting at the gate.
    waiting: Arc<AtomicUsize>,
    gate: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start() -> Result<Relay> {
        let waiting = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = tokio::sync::watch::channel(0u64);
        let w = waiting.clone();
        let (port, task) = listen(move |sock| {
            let (w, gate_rx) = (w.clone(), gate_rx.clone());
            async move {
                let served = tokio::time::timeout(Duration::from_secs(60), serve(sock, w, gate_rx)).await;
                if let Ok(Err(e)) = served {
                    eprintln!("relay: connection failed: {e:#}");
                }
            }
        })
        .await?;
        Ok(Relay {
            port,
            waiting,
            gate,
            task,
        })
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets every first attempt of rounds up to `round` journal its send.
    pub fn release(&self, round: u64) {
        self.gate.send_replace(round);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut sock: TcpStream,
    waiting: Arc<AtomicUsize>,
    mut gate: tokio::sync::watch::Receiver<u64>,
) -> Result<()> {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut sock, &mut buf).await? else {
        return Ok(());
    };
    if head.method == "GET" && head.path.starts_with("/discover") {
        sock.write_all(json_ok(RELAY_DISCOVERY, true).as_bytes()).await?;
        let _ = sock.shutdown().await;
        return Ok(());
    }
    if head.method != "POST" || head.path != "/invoke/Relay/go" {
        return write_not_found(&mut sock).await;
    }
    // Full duplex: answer at once, then read START and the journal from the request body.
    sock.write_all(invoke_head(true).as_bytes()).await?;
    let mut body = Dechunk::new();
    let mut frames = Vec::new();
    body.feed(&std::mem::take(&mut buf), &mut frames);
    let mut start: Option<StartFrame> = None;
    let mut journal: Vec<EntryFrame> = Vec::new();
    loop {
        while let Some((t, b)) = next_frame(&mut frames) {
            match t {
                START => start = Some(rmp_serde::from_slice(&b).context("relay: START")?),
                ENTRY => journal.push(rmp_serde::from_slice(&b).context("relay: ENTRY")?),
                _ => {}
            }
        }
        if let Some(s) = &start {
            if journal.len() as u32 >= s.known_entries {
                break;
            }
        }
        if body.done() {
            bail!("relay: request body ended before the journal");
        }
        let mut piece = [0u8; 4096];
        let n = sock.read(&mut piece).await?;
        if n == 0 {
            return Ok(()); // the runtime gave up on this attempt
        }
        body.feed(&piece[..n], &mut frames);
    }
    let start = start.expect("START read");
    let input = journal
        .first()
        .filter(|e| e.index == 0 && e.kind == "input")
        .and_then(|e| e.value.clone())
        .ok_or_else(|| anyhow!("relay: journal without an input entry: {journal:?}"))?;
    let input: RelayInput = serde_json::from_slice(&input).context("relay: input")?;
    let mut out = Vec::new();
    if start.known_entries <= 1 {
        waiting.fetch_add(1, Ordering::SeqCst);
        let released = gate.wait_for(|r| *r >= input.round).await.is_ok();
        waiting.fetch_sub(1, Ordering::SeqCst);
        if !released {
            return Ok(());
        }
        out.extend(frame(
            ENTRY,
            &SendEntry {
                index: 1,
                kind: "send",
                service: &input.service,
                handler: &input.handler,
                key: &input.key,
                value: input.value.as_bytes(),
            },
        ));
    }
    let index = start.known_entries.max(2);
    out.extend(frame(
        ENTRY,
        &OutputEntry {
            index,
            kind: "output",
            value: b"\"sent\"",
        },
    ));
    out.extend(frame(END, &EmptyBody {}));
    sock.write_all(&chunk(&out)).await?;
    sock.flush().await?;
    // Read on until the runtime ends the request body (after the output's ACK), then end ours.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = Vec::new();
        while !body.done() {
            let mut piece = [0u8; 4096];
            match sock.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.feed(&piece[..n], &mut sink),
            }
            sink.clear();
        }
    })
    .await;
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let _ = sock.shutdown().await;
    Ok(())
}
