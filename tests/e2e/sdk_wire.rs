//! The SDK side of the wire, for the fake SDK endpoints and the proxy of the e2e tests: protocol
//! v1 frames (docs/protocol.md §2, §3, §5) and the bits of HTTP/1.1 they travel in (request
//! heads, chunked bodies, the few responses an endpoint gives), and the accept loop they share.

use std::future::Future;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Listening
// ---------------------------------------------------------------------------------------------

/// Listens on a free port of 127.0.0.1 and hands every connection to `serve`, in a task of its
/// own: (the port, the accept task; aborting it stops listening).
pub async fn listen<F, Fut>(serve: F) -> Result<(u16, JoinHandle<()>)>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock));
        }
    });
    Ok((port, task))
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

pub const START: u16 = 0x0001;
pub const ENTRY: u16 = 0x0002;
pub const END: u16 = 0x0005;

#[derive(Deserialize, Debug, Clone)]
pub struct StartFrame {
    pub id: String,
    pub service: String,
    pub handler: String,
    #[serde(default)]
    pub key: String,
    pub epoch: u64,
    pub known_entries: u32,
}

#[derive(Deserialize, Debug)]
pub struct EntryFrame {
    pub index: u32,
    pub kind: String,
    #[serde(default, with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

#[derive(Serialize)]
pub struct SendEntry<'a> {
    pub index: u32,
    pub kind: &'static str,
    pub service: &'a str,
    pub handler: &'a str,
    pub key: &'a str,
    #[serde(with = "serde_bytes")]
    pub value: &'a [u8],
}

#[derive(Serialize)]
pub struct OutputEntry<'a> {
    pub index: u32,
    pub kind: &'static str,
    #[serde(with = "serde_bytes")]
    pub value: &'a [u8],
}

#[derive(Serialize)]
pub struct EmptyBody {}

/// One frame: type, flags 0, length, then `body` as named MessagePack.
pub fn frame<T: Serialize>(frame_type: u16, body: &T) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(body).expect("frame body serializes");
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The next whole frame at the front of `buf`, removed from it: (type, body).
pub fn next_frame(buf: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    if buf.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        return None;
    }
    let frame_type = u16::from_be_bytes([buf[0], buf[1]]);
    let body = buf[8..8 + len].to_vec();
    buf.drain(..8 + len);
    Some((frame_type, body))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1: request heads, chunked bodies
// ---------------------------------------------------------------------------------------------

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What an endpoint needs of a request head.
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    pub chunked: bool,
}

pub fn parse_head(head: &[u8]) -> Head {
    let text = String::from_utf8_lossy(head).to_string();
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let lower = text.to_ascii_lowercase();
    let content_length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let chunked = lower
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    Head {
        method,
        path,
        content_length,
        chunked,
    }
}

/// Reads from `sock` into `buf` until it holds a whole request head, then takes the head off
/// `buf` (what follows it stays); `None` when the peer closes first.
pub async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Head>> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut piece = [0u8; 4096];
        let n = sock.read(&mut piece).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = parse_head(&buf[..head_end]);
    buf.drain(..head_end);
    Ok(Some(head))
}

/// `data` as one chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes a chunked HTTP/1.1 body fed in pieces; bytes after its end stay in it (`take_rest`).
pub struct Dechunk {
    buf: Vec<u8>,
    state: ChunkState,
}

impl Dechunk {
    pub fn new() -> Self {
        Dechunk {
            buf: Vec::new(),
            state: ChunkState::Size,
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(input);
        loop {
            match self.state {
                ChunkState::Done => return,
                ChunkState::Size => {
                    let Some(p) = find(&self.buf, b"\r\n") else { return };
                    let line = String::from_utf8_lossy(&self.buf[..p]).to_string();
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                    self.buf.drain(..p + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(n) => {
                    if self.buf.is_empty() {
                        return;
                    }
                    let k = n.min(self.buf.len());
                    out.extend_from_slice(&self.buf[..k]);
                    self.buf.drain(..k);
                    self.state = if k == n {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(n - k)
                    };
                }
                ChunkState::DataEnd => {
                    if self.buf.len() < 2 {
                        return;
                    }
                    self.buf.drain(..2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(p) = find(&self.buf, b"\r\n") else { return };
                    self.buf.drain(..p + 2);
                    if p == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The bytes fed after the end of the body, taken out.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A `200` with the JSON `body` (the answer to `GET /discover`); `close` adds
/// `connection: close`.
pub fn json_ok(body: &str, close: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        connection(close)
    )
}

/// The head of the `200` answering `POST /invoke/...`: protocol v1 frames in a chunked body.
pub fn invoke_head(close: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.kiln.v1\r\ntransfer-encoding: chunked\r\n{}\r\n",
        connection(close)
    )
}

/// Answers `404` with a JSON error, closing the connection.
pub async fn write_not_found(sock: &mut TcpStream) -> Result<()> {
    let body = r#"{"code":404,"message":"not found"}"#;
    let resp = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    Ok(())
}

fn connection(close: bool) -> &'static str {
    if close {
        "connection: close\r\n"
    } else {
        ""
    }
}
