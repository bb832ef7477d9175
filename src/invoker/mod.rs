//! Runs one invocation attempt against an SDK endpoint: one streaming HTTP request, the
//! journal sent once, then one ENTRY frame up and one ACK frame down per new step.
//!
//! Boundary: knows the protocol and the storage writer; knows nothing of actors, retries or
//! HTTP ingress. The caller decides what an outcome means.

pub mod frame;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ids::{InvocationId, ObjectId};
use crate::journal::{
    check_sdk_entry, codes, output_of, Entry, Failure, IndexedEntry, Output, StateEffect,
};
use crate::storage::{keys, HandlerKind, StorageError, Table, WriteBatch, Writer};

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
}

/// Everything one attempt needs.
pub struct Attempt<'a> {
    pub id: InvocationId,
    pub service: &'a str,
    pub handler: &'a str,
    pub key: &'a str,
    pub kind: HandlerKind,
    pub epoch: u32,
    pub endpoint: &'a str,
    /// Durable journal so far; the attempt appends entries as they become durable.
    pub journal: &'a mut Vec<Entry>,
    /// Committed object state (virtual objects only).
    pub state: Option<&'a StateCache>,
    pub writer: &'a Writer,
    /// Adds the writes that finish the invocation to the batch holding its output entry.
    pub on_output: &'a (dyn Fn(&mut WriteBatch, &Output) + Sync),
    /// Adds the record of this attempt (status, attempt count) to the attempt's first batch, so
    /// an attempt that made progress is on disk at no extra fsync.
    pub on_first_commit: &'a (dyn Fn(&mut WriteBatch) + Sync),
    pub max_frame_bytes: usize,
    pub inactivity_timeout: Duration,
}

#[derive(Serialize)]
struct IndexedEntryRef<'e> {
    index: u32,
    #[serde(flatten)]
    entry: &'e Entry,
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

fn violation(message: String) -> AttemptOutcome {
    AttemptOutcome::Fatal(Failure {
        code: codes::PROTOCOL_VIOLATION,
        message: format!("protocol violation: {message}"),
    })
}

/// A batch of entries on its way to disk.
struct PendingCommit {
    first_index: u32,
    last_index: u32,
    entries: Vec<Entry>,
    effects: Vec<StateEffect>,
    output: Option<Output>,
}

impl PendingCommit {
    fn empty(first_index: u32) -> Self {
        Self {
            first_index,
            last_index: first_index,
            entries: Vec::new(),
            effects: Vec::new(),
            output: None,
        }
    }
}

impl Attempt<'_> {
    fn opening_frames(&self) -> Bytes {
        let snapshot = self.state.map(|s| s.snapshot());
        let start = frame::Start {
            id: self.id.to_string(),
            service: self.service,
            handler: self.handler,
            key: self.key,
            epoch: u64::from(self.epoch),
            known_entries: self.journal.len() as u32,
            state: snapshot.as_ref().map(|s| {
                s.iter()
                    .map(|(k, v)| (k.as_str(), serde_bytes::Bytes::new(v)))
                    .collect()
            }),
            random_seed: self.id.random_seed(),
        };
        let mut out = BytesMut::from(&frame::encode(frame::START, &start)[..]);
        for (index, entry) in self.journal.iter().enumerate() {
            out.extend_from_slice(&frame::encode(
                frame::ENTRY,
                &IndexedEntryRef {
                    index: index as u32,
                    entry,
                },
            ));
        }
        out.freeze()
    }

    /// `written` collects every state name this attempt set, so that `clear_all_state` also
    /// deletes names whose batches are not yet applied to the cache.
    fn write_batch(
        &self,
        commit: &PendingCommit,
        first: bool,
        written: &mut std::collections::BTreeSet<String>,
    ) -> WriteBatch {
        let first_index = commit.first_index;
        let mut batch = WriteBatch::new();
        if first {
            (self.on_first_commit)(&mut batch);
        }
        for (i, entry) in commit.entries.iter().enumerate() {
            batch.put(
                Table::Journal,
                keys::journal_entry(&self.id, first_index + i as u32),
                crate::storage::encode(entry),
            );
        }
        if self.kind == HandlerKind::Exclusive {
            let object = ObjectId::new(self.service, self.key);
            for effect in &commit.effects {
                match effect {
                    StateEffect::None => {}
                    StateEffect::Set(name, value) => {
                        written.insert(name.clone());
                        batch.put(
                            Table::State,
                            keys::state_entry(&object, name),
                            value.clone(),
                        )
                    }
                    StateEffect::Clear(name) => {
                        batch.delete(Table::State, keys::state_entry(&object, name))
                    }
                    StateEffect::ClearAll => {
                        // Deleting every key needs the key set: the cache mirrors committed storage.
                        let cached = self.state.map(|s| s.snapshot()).unwrap_or_default();
                        for name in cached.keys().chain(written.iter()) {
                            batch.delete(Table::State, keys::state_entry(&object, name));
                        }
                        written.clear();
                    }
                }
            }
        }
        if let Some(output) = &commit.output {
            (self.on_output)(&mut batch, output);
        }
        batch
    }

    /// Runs the attempt to its end.
    pub async fn run(self) -> AttemptOutcome {
        let span = tracing::debug_span!("invoker.attempt", invocation_id = %self.id, service = self.service, key = self.key, epoch = self.epoch);
        let _ = span.enter();
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
        let _ = tx.try_send(Ok(self.opening_frames()));
        let url = format!(
            "{}/invoke/{}/{}",
            self.endpoint.trim_end_matches('/'),
            self.service,
            self.handler
        );
        let request = http_client()
            .post(&url)
            .header("content-type", frame::CONTENT_TYPE)
            .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)))
            .send();
        let response = match tokio::time::timeout(self.inactivity_timeout, request).await {
            Err(_) => {
                return AttemptOutcome::Retryable(format!(
                    "{url}: no response within {:?}",
                    self.inactivity_timeout
                ))
            }
            Ok(Err(e)) => return AttemptOutcome::Retryable(format!("{url}: {}", error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return AttemptOutcome::Retryable(format!(
                "{url} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        self.stream(response, tx).await
    }

    async fn stream(
        self,
        response: reqwest::Response,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> AttemptOutcome {
        let mut body = response.bytes_stream();
        let mut decoder = frame::Decoder::new(self.max_frame_bytes);
        let mut next_index = self.journal.len() as u32;
        let mut commits = FuturesOrdered::new();
        let mut output_sent = false;
        let mut body_done = false;
        // Entries that need no ACK wait here and ride with the next `run` or `output`.
        let mut pending = PendingCommit::empty(next_index);
        let mut written = std::collections::BTreeSet::new();
        let mut commits_sent = 0usize;
        loop {
            tokio::select! {
                chunk = body.next(), if !body_done => {
                    match chunk {
                        Some(Ok(bytes)) => {
                            decoder.push(&bytes);
                            let mut needs_ack = false;
                            loop {
                                let (frame_type, body) = match decoder.next_frame() {
                                    Ok(Some(f)) => f,
                                    Ok(None) => break,
                                    Err(e) => return violation(format!("bad frame from SDK endpoint: {e}")),
                                };
                                match frame_type {
                                    frame::ENTRY => {
                                        if output_sent || pending.output.is_some() {
                                            return violation("entry after the output entry".into());
                                        }
                                        let entry: IndexedEntry = match rmp_serde::from_slice(&body) {
                                            Ok(e) => e,
                                            Err(e) => return violation(format!("undecodable ENTRY frame at index {next_index}: {e}")),
                                        };
                                        let effect = match check_sdk_entry(self.kind, next_index, &entry) {
                                            Ok(effect) => effect,
                                            Err(failure) => return AttemptOutcome::Fatal(failure),
                                        };
                                        pending.output = output_of(&entry.entry);
                                        needs_ack |= matches!(entry.entry, Entry::Run { .. } | Entry::Output { .. });
                                        pending.effects.push(effect);
                                        pending.entries.push(entry.entry);
                                        pending.last_index = next_index;
                                        next_index += 1;
                                    }
                                    frame::END => {}
                                    frame::ERROR => {
                                        let error: frame::ErrorFrame = match rmp_serde::from_slice(&body) {
                                            Ok(e) => e,
                                            Err(e) => return violation(format!("undecodable ERROR frame: {e}")),
                                        };
                                        return if error.retryable {
                                            AttemptOutcome::Retryable(format!("handler failed: {}", error.message))
                                        } else {
                                            AttemptOutcome::Fatal(Failure { code: error.code, message: error.message })
                                        };
                                    }
                                    other => return violation(format!("unexpected frame type 0x{other:04x} from SDK endpoint")),
                                }
                            }
                            if needs_ack {
                                output_sent |= pending.output.is_some();
                                let ready = std::mem::replace(&mut pending, PendingCommit::empty(next_index));
                                let batch = self.write_batch(&ready, commits_sent == 0, &mut written);
                                commits_sent += 1;
                                let commit = self.writer.commit(batch);
                                commits.push_back(async move { (commit.await, ready) });
                            }
                        }
                        Some(Err(e)) => return AttemptOutcome::Retryable(format!("stream from SDK endpoint broke: {}", error_chain(&e))),
                        None => {
                            body_done = true;
                            if !output_sent {
                                let detail = if decoder.has_partial() { " in the middle of a frame" } else { "" };
                                return AttemptOutcome::Retryable(format!("SDK endpoint ended the attempt{detail} before the invocation completed"));
                            }
                        }
                    }
                }
                Some((result, commit)) = commits.next() => {
                    if let Err(e) = result {
                        return AttemptOutcome::Retryable(format!("could not commit journal entries: {e}"));
                    }
                    let PendingCommit { last_index, entries, effects, output, .. } = commit;
                    if let Some(state) = self.state.filter(|_| self.kind == HandlerKind::Exclusive) {
                        state.apply(&effects);
                    }
                    self.journal.extend(entries);
                    let _ = tx.try_send(Ok(frame::encode(frame::ACK, &frame::Ack { index: last_index })));
                    if let Some(output) = output {
                        drop(tx);
                        if !body_done {
                            // Let the SDK finish its response so the connection returns to the pool.
                            actix_rt::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(5), async { while body.next().await.is_some() {} }).await;
                            });
                        }
                        return AttemptOutcome::Completed(output);
                    }
                }
                _ = tokio::time::sleep(self.inactivity_timeout) => {
                    return AttemptOutcome::Retryable(format!("SDK endpoint sent nothing for {:?}", self.inactivity_timeout));
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl From<StorageError> for AttemptOutcome {
    fn from(e: StorageError) -> Self {
        AttemptOutcome::Retryable(e.to_string())
    }
}
