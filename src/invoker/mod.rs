//! Runs one invocation attempt against an SDK endpoint: one streaming HTTP request, the
//! journal sent once, then one ENTRY frame up and one ACK frame down per new step; results of
//! calls, timers, awakeables and promises arrive as COMPLETION frames.
//!
//! Boundary: knows the protocol and carries out the core's plan of each entry (`effects.rs`);
//! reaches the rest of the node only through `AttemptHost`; knows nothing of actors, retries
//! or the HTTP ingress. The caller decides what an outcome means.

mod attempt;
mod effects;
pub mod frame;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::entry::Catalog;
use crate::ids::InvocationId;
use crate::journal::{CompletionResult, Entry, Failure, Output, StateEffect};
use crate::storage::{InvocationRecord, OutboxMessage, PartitionLog, TimerRecord, WriteBatch};

/// An object's committed state, shared between its actor and its running invocations.
pub type StateMap = BTreeMap<String, Bytes>;

/// Copy-on-write view of committed state: readers take an `Arc` snapshot, the one running
/// exclusive invocation replaces it after each commit.
#[derive(Default)]
pub struct StateCache(Mutex<Arc<StateMap>>);

impl StateCache {
    pub fn new(state: StateMap) -> Self {
        Self(Mutex::new(Arc::new(state)))
    }

    pub fn snapshot(&self) -> Arc<StateMap> {
        self.0.lock().expect("state cache lock").clone()
    }

    fn apply(&self, effects: &[StateEffect]) {
        let mut guard = self.0.lock().expect("state cache lock");
        let state = Arc::make_mut(&mut guard);
        for effect in effects {
            match effect {
                StateEffect::None => {}
                StateEffect::Set(name, value) => {
                    state.insert(name.clone(), Bytes::copy_from_slice(value));
                }
                StateEffect::Clear(name) => {
                    state.remove(name);
                }
                StateEffect::ClearAll => state.clear(),
            }
        }
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// The output entry and the completion writes are durable.
    Completed(Output),
    /// Worth another attempt (endpoint down, stream broken, retryable handler error).
    Retryable(String),
    /// The invocation must fail for good with this failure.
    Fatal(Failure),
    /// The SDK suspended, waiting on these entries; everything it sent is durable.
    Suspended(Vec<u32>),
    /// An operator killed the invocation before its output was submitted; answer `reply` once
    /// the end is durable.
    Killed(tokio::sync::oneshot::Sender<ControlAnswer>),
}

/// How the owner of an invocation answered a cancel or a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAnswer {
    /// Done: the cancel request, or the killed end, is durable.
    Done,
    /// The output was already on its way to disk: the invocation finishes normally.
    Finishing,
}

/// What the rest of the node tells a running attempt.
#[derive(Debug)]
pub enum AttemptSignal {
    /// Entry `index` was completed (durably) with `result`.
    Completion { index: u32, result: CompletionResult },
    /// Cancel: the attempt records the request durably in its own commit order, tells the
    /// SDK, and answers — or answers `Finishing` if its output is already submitted.
    Cancel(tokio::sync::oneshot::Sender<ControlAnswer>),
    /// Kill: the attempt stops at once — unless its output is already submitted (`Finishing`).
    Kill(tokio::sync::oneshot::Sender<ControlAnswer>),
}

/// Capacity of an attempt's signal channel; a full channel is safe (the owner's suspension
/// check re-reads the journal).
pub const SIGNALS_CAPACITY: usize = 256;

/// The limits an attempt runs under.
#[derive(Clone, Copy, Debug)]
pub struct AttemptLimits {
    /// Sent to the SDK: how long it may wait for a completion before it suspends.
    pub suspend_after_ms: u32,
    /// An endpoint that sends nothing for this long ends the attempt (retryable).
    pub inactivity_timeout_ms: u64,
    pub max_frame_bytes: usize,
}

/// What an attempt needs from the node around it — implemented by the node; the invoker
/// depends on nothing above it.
pub trait AttemptHost {
    fn limits(&self) -> AttemptLimits;
    /// Where the attempt's batches go.
    fn log(&self) -> &PartitionLog;
    /// The registered services, as now (what the entry planner may know of them).
    fn catalog(&self) -> Arc<dyn Catalog>;
    /// A fresh outbox key in `partition`, ordered after every earlier one.
    fn outbox_key(&self, partition: u16) -> Vec<u8>;
    /// Arms a timer whose row is durable.
    fn arm_timer(&self, key: Vec<u8>, due_ms: u64, timer: TimerRecord);
    /// Delivers a durable outbox row (`key`) to its receiver; resolves once it took effect or
    /// was left for a later redelivery.
    fn deliver(
        self: Arc<Self>,
        key: Vec<u8>,
        message: OutboxMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
}

/// Everything one attempt needs.
pub struct Attempt<'a> {
    pub host: Arc<dyn AttemptHost>,
    pub id: InvocationId,
    pub record: &'a InvocationRecord,
    pub epoch: u32,
    pub endpoint: &'a str,
    /// Durable journal so far; the attempt appends entries as they become durable.
    pub journal: &'a mut Vec<Entry>,
    /// Committed object state (virtual objects and workflows only).
    pub state: Option<&'a StateCache>,
    pub signals: mpsc::Receiver<AttemptSignal>,
    /// A cancellation was requested before this attempt started.
    pub cancelled: bool,
    /// Adds the writes that finish the invocation to the batch holding its output entry.
    pub on_output: &'a (dyn Fn(&mut WriteBatch, &Output) + Sync),
    /// Adds the record of this attempt (status, attempt count) to the attempt's first batch, so
    /// an attempt that made progress is on disk at no extra fsync.
    pub on_first_commit: &'a (dyn Fn(&mut WriteBatch) + Sync),
    /// Adds the record with `cancel_requested` set (a cancel arrived during the attempt).
    pub on_cancel: &'a (dyn Fn(&mut WriteBatch) + Sync),
}

thread_local! {
    // One client (and connection pool) per thread keeps each attempt's I/O on its own thread.
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build HTTP client");
}

pub fn http_client() -> reqwest::Client {
    CLIENT.with(|c| c.clone())
}

/// Reads a response body up to `limit` bytes and stops there: `(bytes, whether more was left)`.
/// An endpoint's answer is never read whole into memory just because it is large.
pub(crate) async fn read_up_to(response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), String> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
