//! A fake SDK endpoint speaking minimal HTTP/1.1 over a raw tokio TcpListener: it declares the
//! service `Garbage` (handler `go`) on `GET /discover`, and answers every `POST /invoke/...` with
//! `200`, `transfer-encoding: chunked` and a chunk of garbage (a frame header of unknown type).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sdk_wire::{self, find, invoke_head, json_ok, listen, read_head, write_not_found};

pub struct FakeEndpoint {
    pub port: u16,
    /// Number of `POST /invoke/...` requests received (invocation attempts).
    pub invokes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEndpoint {
    pub async fn start() -> Result<FakeEndpoint> {
        let invokes = Arc::new(AtomicUsize::new(0));
        let counter = invokes.clone();
        let (port, task) = listen(move |sock| {
            let counter = counter.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), serve(sock, counter)).await;
            }
        })
        .await?;
        Ok(FakeEndpoint { port, invokes, task })
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn invokes(&self) -> usize {
        self.invokes.load(Ordering::SeqCst)
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const DISCOVERY: &str = r#"{"protocolVersion":1,"services":[{"name":"Garbage","kind":"service","handlers":[{"name":"go","kind":"shared"}]}]}"#;

/// A frame header with the unknown type 0x7777, flags 0, length 4, then 4 bytes of junk.
pub const GARBAGE: &[u8] = &[0x77, 0x77, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, b'j', b'u', b'n', b'k'];

async fn serve(mut sock: TcpStream, invokes: Arc<AtomicUsize>) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(head) = read_head(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        let (content_length, chunked) = (head.content_length, head.chunked);

        if head.method == "GET" && head.path.starts_with("/discover") {
            // Skip a (normally absent) body.
            while buf.len() < content_length {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..content_length);
            sock.write_all(json_ok(DISCOVERY, false).as_bytes()).await?;
            continue;
        }

        if head.method == "POST" && head.path.starts_with("/invoke/") {
            invokes.fetch_add(1, Ordering::SeqCst);
            let mut resp = invoke_head(false).into_bytes();
            resp.extend_from_slice(&sdk_wire::chunk(GARBAGE));
            sock.write_all(&resp).await?;
            sock.flush().await?;
            // Drain the (full-duplex) request body until the runtime closes it or gives up, at
            // most a few seconds, then end the response body and close.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if !chunked && content_length == 0 {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            // The end of a chunked body.
                            if chunked && find(&buf, b"0\r\n\r\n").is_some() {
                                return;
                            }
                            if buf.len() > 1 << 20 {
                                buf.clear();
                            }
                        }
                    }
                }
            })
            .await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
            let _ = sock.shutdown().await;
            return Ok(());
        }

        return write_not_found(&mut sock).await;
    }
}
