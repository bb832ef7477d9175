//! `Spy`, a TCP proxy in front of an SDK endpoint that records the START frame of every
//! invocation attempt the runtime sends through it: what the endpoint saw, from outside.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sdk_wire::*;

/// Where a request from the runtime stands in the proxy's parse of its connection.
enum Sniff {
    Head,
    Chunked {
        dechunk: Dechunk,
        frames: Vec<u8>,
        invoke: bool,
    },
    Length(usize),
}

struct Sniffer {
    buf: Vec<u8>,
    state: Sniff,
}

impl Sniffer {
    fn feed(&mut self, bytes: &[u8], seen: &Mutex<Vec<StartFrame>>) {
        self.buf.extend_from_slice(bytes);
        loop {
            match &mut self.state {
                Sniff::Head => {
                    let Some(p) = find(&self.buf, b"\r\n\r\n") else { return };
                    let head = parse_head(&self.buf[..p + 4]);
                    self.buf.drain(..p + 4);
                    self.state = if head.chunked {
                        Sniff::Chunked {
                            dechunk: Dechunk::new(),
                            frames: Vec::new(),
                            invoke: head.path.starts_with("/invoke/"),
                        }
                    } else {
                        Sniff::Length(head.content_length)
                    };
                }
                Sniff::Length(n) => {
                    let k = (*n).min(self.buf.len());
                    self.buf.drain(..k);
                    *n -= k;
                    if *n > 0 {
                        return;
                    }
                    self.state = Sniff::Head;
                }
                Sniff::Chunked {
                    dechunk,
                    frames,
                    invoke,
                } => {
                    dechunk.feed(&std::mem::take(&mut self.buf), frames);
                    if *invoke {
                        if let Some((t, body)) = next_frame(frames) {
                            *invoke = false;
                            if t == START {
                                if let Ok(s) = rmp_serde::from_slice::<StartFrame>(&body) {
                                    seen.lock().unwrap().push(s);
                                }
                            }
                        }
                    }
                    if !*invoke {
                        frames.clear();
                    }
                    if !dechunk.done() {
                        return;
                    }
                    self.buf = dechunk.take_rest();
                    self.state = Sniff::Head;
                }
            }
        }
    }
}

pub struct Spy {
    port: u16,
    starts: Arc<Mutex<Vec<StartFrame>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Spy {
    /// A proxy on a free port forwarding to `127.0.0.1:{target_port}`.
    pub async fn start(target_port: u16) -> Result<Spy> {
        let starts: Arc<Mutex<Vec<StartFrame>>> = Arc::default();
        let seen = starts.clone();
        let (port, task) = listen(move |inbound| {
            let seen = seen.clone();
            async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut from_kiln, mut to_kiln) = inbound.into_split();
                let (mut from_svc, mut to_svc) = outbound.into_split();
                let up = async move {
                    let mut sniffer = Sniffer {
                        buf: Vec::new(),
                        state: Sniff::Head,
                    };
                    let mut piece = vec![0u8; 16384];
                    loop {
                        match from_kiln.read(&mut piece).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sniffer.feed(&piece[..n], &seen);
                                if to_svc.write_all(&piece[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_svc.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut from_svc, &mut to_kiln).await;
                    let _ = to_kiln.shutdown().await;
                };
                tokio::join!(up, down);
            }
        })
        .await?;
        Ok(Spy { port, starts, task })
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every START seen for `service/handler`.
    pub fn starts_of(&self, service: &str, handler: &str) -> Vec<StartFrame> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.service == service && s.handler == handler)
            .cloned()
            .collect()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
