//! A fake SDK endpoint speaking minimal HTTP/1.1 over a raw tokio TcpListener: it declares the
//! service `Garbage` (handler `go`) on `GET /discover`, and answers every `POST /invoke/...` with
//! `200`, `transfer-encoding: chunked` and a chunk of garbage (a frame header of unknown type).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FakeEndpoint {
    pub port: u16,
    /// Number of `POST /invoke/...` requests received (invocation attempts).
    pub invokes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEndpoint {
    pub async fn start() -> Result<FakeEndpoint> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let invokes = Arc::new(AtomicUsize::new(0));
        let counter = invokes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), serve(sock, counter)).await;
                });
            }
        });
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
        // Read one request head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let request_line = head.lines().next().unwrap_or("").to_string();
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let lower = head.to_ascii_lowercase();
        let content_length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let chunked = lower
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));

        if method == "GET" && path.starts_with("/discover") {
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
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                DISCOVERY.len(),
                DISCOVERY
            );
            sock.write_all(resp.as_bytes()).await?;
            continue;
        }

        if method == "POST" && path.starts_with("/invoke/") {
            invokes.fetch_add(1, Ordering::SeqCst);
            let mut resp = Vec::new();
            resp.extend_from_slice(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.kiln.v1\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            resp.extend_from_slice(format!("{:x}\r\n", GARBAGE.len()).as_bytes());
            resp.extend_from_slice(GARBAGE);
            resp.extend_from_slice(b"\r\n");
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

        let body = r#"{"code":404,"message":"not found"}"#;
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            body.len(),
            body
        );
        sock.write_all(resp.as_bytes()).await?;
        return Ok(());
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
