//! Frame codec of the runtime↔SDK protocol (`docs/protocol.md` §2): an 8-byte header
//! (u16 type, u16 flags, u32 length, big-endian) and a MessagePack body with named fields.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
pub const CONTENT_TYPE: &str = "application/vnd.kiln.v1";

pub const START: u16 = 0x0001;
pub const ENTRY: u16 = 0x0002;
pub const ACK: u16 = 0x0003;
pub const COMPLETION: u16 = 0x0004;
pub const END: u16 = 0x0005;
pub const ERROR: u16 = 0x0006;
pub const SUSPEND: u16 = 0x0007;
pub const CANCEL: u16 = 0x0008;
pub const INVOCATION_ID: u16 = 0x0009;

const HEADER_LEN: usize = 8;

#[derive(Serialize)]
pub struct Start<'a> {
    pub id: String,
    pub service: &'a str,
    pub handler: &'a str,
    pub key: &'a str,
    pub epoch: u64,
    pub known_entries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<BTreeMap<&'a str, &'a serde_bytes::Bytes>>,
    pub random_seed: u64,
    pub cancelled: bool,
    pub suspend_after_ms: u32,
    pub headers: &'a crate::journal::Headers,
}

/// The id of the invocation a `call` or `send` entry created (or joined).
#[derive(Serialize)]
pub struct InvocationIdFrame {
    pub index: u32,
    pub invocation_id: String,
}

#[derive(Serialize)]
pub struct Ack {
    pub index: u32,
}

#[derive(Deserialize, Debug)]
pub struct ErrorFrame {
    pub code: u16,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
    #[serde(default)]
    pub index: Option<u32>,
    /// The failure's stack trace as the SDK printed it (kept with the invocation's last error).
    #[serde(default)]
    pub stacktrace: Option<String>,
}

/// Most of an SDK's stack trace kept in an invocation's last error.
pub const STACKTRACE_MAX_BYTES: usize = 16 * 1024;

impl ErrorFrame {
    /// The retryable error as the invocation's last error: the message, then the stack trace
    /// (cut at `STACKTRACE_MAX_BYTES`, on a character boundary).
    pub fn last_error(&self) -> String {
        let mut text = format!("handler failed: {}", self.message);
        if let Some(trace) = self.stacktrace.as_deref().filter(|t| !t.trim().is_empty()) {
            let mut end = trace.len().min(STACKTRACE_MAX_BYTES);
            while !trace.is_char_boundary(end) {
                end -= 1;
            }
            text.push('\n');
            text.push_str(&trace[..end]);
            if end < trace.len() {
                text.push_str("\n… (stack trace cut)");
            }
        }
        text
    }
}

/// Encodes one frame.
pub fn encode<T: Serialize>(frame_type: u16, body: &T) -> Bytes {
    let body = rmp_serde::to_vec_named(body).expect("protocol messages always serialize");
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("unknown frame type 0x{0:04x}")]
    UnknownType(u16),
    #[error("unsupported frame flags 0x{0:04x}")]
    Flags(u16),
}

/// Splits a byte stream into frames; keeps a partial frame until the rest arrives.
pub struct Decoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl Decoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// True when bytes of an incomplete frame are buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame: (type, body).
    pub fn next_frame(&mut self) -> Result<Option<(u16, Bytes)>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let frame_type = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        let flags = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if !matches!(frame_type, START | ENTRY | ACK | END | ERROR | 0x0004 | 0x0007) {
            return Err(FrameError::UnknownType(frame_type));
        }
        if flags != 0 {
            return Err(FrameError::Flags(flags));
        }
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge(len, self.max_frame_bytes));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some((frame_type, self.buf.split_to(len).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, IndexedEntry};

    #[test]
    fn a_stack_trace_follows_the_message_cut_to_its_bound() {
        let error = |trace: Option<String>| ErrorFrame {
            code: 500,
            message: "IllegalStateException: boom".into(),
            retryable: true,
            index: None,
            stacktrace: trace,
        };
        // (stack trace, expected last error)
        let long = "é".repeat(STACKTRACE_MAX_BYTES); // 2 bytes each: cut mid-way, on a boundary
        let cut = format!("{}\n… (stack trace cut)", "é".repeat(STACKTRACE_MAX_BYTES / 2));
        let table: Vec<(Option<String>, String)> = vec![
            (None, "handler failed: IllegalStateException: boom".into()),
            (Some("  ".into()), "handler failed: IllegalStateException: boom".into()),
            (
                Some("java.lang.IllegalStateException: boom\n\tat A.b(A.kt:3)".into()),
                "handler failed: IllegalStateException: boom\njava.lang.IllegalStateException: boom\n\tat A.b(A.kt:3)"
                    .into(),
            ),
            (
                Some(long),
                format!("handler failed: IllegalStateException: boom\n{cut}"),
            ),
        ];
        for (trace, want) in table {
            assert_eq!(error(trace).last_error(), want);
        }
    }

    #[test]
    fn frames_split_across_chunks() {
        let frame = encode(
            ENTRY,
            &IndexedEntry {
                index: 1,
                entry: Entry::ClearAllState,
            },
        );
        let mut d = Decoder::new(1024);
        d.push(&frame[..5]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&frame[5..]);
        let (t, body) = d.next_frame().unwrap().unwrap();
        assert_eq!(t, ENTRY);
        let e: IndexedEntry = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(e.entry, Entry::ClearAllState);
        assert!(!d.has_partial());
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        let mut d = Decoder::new(16);
        d.push(&[0x77, 0x77, 0, 0, 0, 0, 0, 1, 9]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownType(0x7777)));
        let mut d = Decoder::new(16);
        d.push(&[0, 2, 0, 0, 0, 0, 1, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(256, 16)));
    }
}
