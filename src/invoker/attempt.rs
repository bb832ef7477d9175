//! The attempt's stream loop: frames in, commits, ACKs and COMPLETIONs out.

use std::collections::{BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::effects::{AfterCommit, PendingCommit};
use super::{error_chain, frame, http_client, Attempt, AttemptOutcome, AttemptSignal, ControlAnswer};
use crate::core::control;
use crate::journal::{check_sdk_entry, codes, CompletionResult, Entry, Failure, IndexedEntry};
use crate::storage::{OutboxMessage, WriteBatch};

#[derive(Serialize)]
struct IndexedEntryRef<'e> {
    index: u32,
    #[serde(flatten)]
    entry: &'e Entry,
}

#[derive(Serialize)]
struct CompletionFrame<'r> {
    index: u32,
    result: &'r CompletionResult,
}

#[derive(Deserialize)]
struct SuspendFrame {
    waiting_on: Vec<u32>,
}

fn violation(message: String) -> AttemptOutcome {
    AttemptOutcome::Fatal(Failure {
        code: codes::PROTOCOL_VIOLATION,
        message: format!("protocol violation: {message}"),
    })
}

type Body = mpsc::Sender<Result<Bytes, std::io::Error>>;

fn send_frame(tx: &Body, bytes: Bytes) {
    // The channel is bounded; the SDK reading slower than we ACK would be a bug on its side,
    // and a dropped frame only makes it wait and suspend (the data is durable).
    let _ = tx.try_send(Ok(bytes));
}

impl Attempt<'_> {
    fn opening_frames(&self) -> Bytes {
        let snapshot = self.state.map(|s| s.snapshot());
        let start = frame::Start {
            id: self.id.to_string(),
            service: &self.record.service,
            handler: &self.record.handler,
            key: &self.record.key,
            epoch: u64::from(self.epoch),
            known_entries: self.journal.len() as u32,
            state: snapshot.as_ref().map(|s| {
                s.iter()
                    .map(|(k, v)| (k.as_str(), serde_bytes::Bytes::new(v)))
                    .collect()
            }),
            random_seed: self.id.random_seed(),
            cancelled: self.cancelled,
            suspend_after_ms: self.host.limits().suspend_after_ms,
            headers: &self.record.headers,
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

    /// Runs the attempt to its end.
    pub async fn run(self) -> AttemptOutcome {
        let span = tracing::debug_span!("invoker.attempt", invocation_id = %self.id, service = %self.record.service, key = %self.record.key, epoch = self.epoch);
        self.run_in_span().instrument(span).await
    }

    async fn run_in_span(self) -> AttemptOutcome {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
        send_frame(&tx, self.opening_frames());
        let url = format!(
            "{}/invoke/{}/{}",
            self.endpoint.trim_end_matches('/'),
            self.record.service,
            self.record.handler
        );
        let timeout = std::time::Duration::from_millis(self.host.limits().inactivity_timeout_ms);
        let request = http_client()
            .post(&url)
            .header("content-type", frame::CONTENT_TYPE)
            .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)))
            .send();
        let response = match tokio::time::timeout(timeout, request).await {
            Err(_) => return AttemptOutcome::Retryable(format!("{url}: no response within {timeout:?}")),
            Ok(Err(e)) if e.is_connect() => {
                return AttemptOutcome::Retryable(format!(
                    "deployment {} is unreachable (is its endpoint running?): POST {url}: {}",
                    self.record.deployment_id,
                    error_chain(&e)
                ))
            }
            Ok(Err(e)) => return AttemptOutcome::Retryable(format!("{url}: {}", error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            let status = response.status();
            let (text, _) = super::read_up_to(response, 1200).await.unwrap_or_default();
            return AttemptOutcome::Retryable(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&text).chars().take(300).collect::<String>()
            ));
        }
        self.stream(response, tx, timeout).await
    }

    async fn stream(mut self, response: reqwest::Response, tx: Body, timeout: std::time::Duration) -> AttemptOutcome {
        let mut body = response.bytes_stream();
        let mut decoder = frame::Decoder::new(self.host.limits().max_frame_bytes);
        let mut next_index = self.journal.len() as u32;
        let mut commits = FuturesOrdered::new();
        let mut commits_sent = 0usize;
        let mut written = BTreeSet::new();
        // Entries that need no ACK wait here and ride with the next one that does.
        let mut pending = PendingCommit::empty(next_index);
        // Completions of entries whose own commit has not landed yet.
        let mut early: HashMap<u32, CompletionResult> = HashMap::new();
        let mut output_sent = false;
        let mut suspend: Option<Vec<u32>> = None;
        let mut body_done = false;
        // Messages go out in production order, from a task of their own, so that a slow or
        // unreachable receiver never stops this loop from reading frames and signals.
        let mut deliveries: Option<tokio::sync::mpsc::UnboundedSender<(Vec<u8>, OutboxMessage)>> = None;
        loop {
            if let Some(waiting_on) = suspend.as_ref().filter(|_| commits.is_empty()) {
                return AttemptOutcome::Suspended(waiting_on.clone());
            }
            tokio::select! {
                chunk = body.next(), if !body_done && suspend.is_none() => {
                    let bytes = match chunk {
                        Some(Ok(bytes)) => bytes,
                        Some(Err(e)) => return AttemptOutcome::Retryable(format!("stream from SDK endpoint broke: {}", error_chain(&e))),
                        None => {
                            body_done = true;
                            if !output_sent {
                                let detail = if decoder.has_partial() { " in the middle of a frame" } else { "" };
                                return AttemptOutcome::Retryable(format!("SDK endpoint ended the attempt{detail} before the invocation completed"));
                            }
                            continue;
                        }
                    };
                    decoder.push(&bytes);
                    let mut commit_now = false;
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
                                let effect = match check_sdk_entry(self.record.kind, next_index, &entry) {
                                    Ok(effect) => effect,
                                    Err(failure) => return AttemptOutcome::Fatal(failure),
                                };
                                commit_now |= entry.entry.needs_ack();
                                if let Err(failure) = self.plan(next_index, entry.entry, effect, &mut pending, &mut written) {
                                    return AttemptOutcome::Fatal(failure);
                                }
                                next_index += 1;
                            }
                            frame::END => {}
                            frame::SUSPEND => {
                                let frame: SuspendFrame = match rmp_serde::from_slice(&body) {
                                    Ok(f) => f,
                                    Err(e) => return violation(format!("undecodable SUSPEND frame: {e}")),
                                };
                                if frame.waiting_on.is_empty() || frame.waiting_on.iter().any(|i| *i >= next_index) {
                                    return violation(format!("SUSPEND waits on {:?}, but the journal has {next_index} entries", frame.waiting_on));
                                }
                                suspend = Some(frame.waiting_on);
                                commit_now = true;
                                break;
                            }
                            frame::ERROR => {
                                let error: frame::ErrorFrame = match rmp_serde::from_slice(&body) {
                                    Ok(e) => e,
                                    Err(e) => return violation(format!("undecodable ERROR frame: {e}")),
                                };
                                return if error.retryable {
                                    AttemptOutcome::Retryable(error.last_error())
                                } else {
                                    AttemptOutcome::Fatal(Failure { code: error.code, message: error.message })
                                };
                            }
                            other => return violation(format!("unexpected frame type 0x{other:04x} from SDK endpoint")),
                        }
                    }
                    if commit_now && !pending.entries.is_empty() {
                        let mut ready = std::mem::replace(&mut pending, PendingCommit::empty(next_index));
                        output_sent |= ready.output.is_some();
                        if commits_sent == 0 {
                            (self.on_first_commit)(&mut ready.batch);
                        }
                        if let Some(output) = &ready.output {
                            (self.on_output)(&mut ready.batch, output);
                        }
                        commits_sent += 1;
                        let commit = self.host.log().append(std::mem::take(&mut ready.batch));
                        commits.push_back(settle(commit, ready));
                    }
                }
                Some((result, commit)) = commits.next() => {
                    if let Err(e) = result {
                        return AttemptOutcome::Retryable(format!("could not commit journal entries: {e}"));
                    }
                    let PendingCommit { first_index, last_index, entries, effects, output, after, on_durable, .. } = commit;
                    if let Some(reply) = on_durable {
                        let _ = reply.send(ControlAnswer::Done);
                    }
                    if entries.is_empty() {
                        continue; // a record-only commit (a cancel request): nothing to ACK
                    }
                    if let Some(state) = self.state.filter(|_| self.record.kind.is_exclusive()) {
                        state.apply(&effects);
                    }
                    // The ids of the invocations its calls and sends created, then the ACK.
                    for (index, entry) in (first_index..).zip(&entries) {
                        if let Entry::Call { invocation_id: Some(id), .. } | Entry::Send { invocation_id: Some(id), .. } = entry {
                            let body = frame::InvocationIdFrame { index, invocation_id: id.to_string() };
                            send_frame(&tx, frame::encode(frame::INVOCATION_ID, &body));
                        }
                    }
                    self.journal.extend(entries);
                    send_frame(&tx, frame::encode(frame::ACK, &frame::Ack { index: last_index }));
                    for index in first_index..=last_index {
                        if let Some(result) = early.remove(&index) {
                            self.completed(&tx, index, result);
                        }
                    }
                    for action in after {
                        match action {
                            // Delivered in order, before the next batch's messages: per-sender order.
                            AfterCommit::Deliver(key, message) => {
                                let queue = deliveries.get_or_insert_with(|| spawn_deliveries(self.host.clone()));
                                let _ = queue.send((key, *message));
                            }
                            AfterCommit::ArmTimer(key, due, timer) => self.host.arm_timer(key, due, timer),
                            // Journaled with its result already: only the SDK needs telling.
                            AfterCommit::Completed(index, result) => {
                                send_frame(&tx, frame::encode(frame::COMPLETION, &CompletionFrame { index, result: &result }));
                            }
                        }
                    }
                    if let Some(output) = output {
                        drop(tx);
                        if !body_done {
                            // Let the SDK finish its response so the connection returns to the pool.
                            actix_rt::spawn(async move {
                                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async { while body.next().await.is_some() {} }).await;
                            });
                        }
                        return AttemptOutcome::Completed(output);
                    }
                }
                Some(signal) = self.signals.recv() => match signal {
                    AttemptSignal::Completion { index, result } if (index as usize) < self.journal.len() => {
                        self.completed(&tx, index, result);
                    }
                    AttemptSignal::Completion { index, result } => {
                        early.insert(index, result);
                    }
                    // Once the output is submitted the invocation ends with it (`core::control`).
                    AttemptSignal::Cancel(reply) if too_late(control::Control::Cancel, output_sent) => {
                        let _ = reply.send(ControlAnswer::Finishing);
                    }
                    AttemptSignal::Kill(reply) if too_late(control::Control::Kill, output_sent) => {
                        let _ = reply.send(ControlAnswer::Finishing);
                    }
                    AttemptSignal::Cancel(reply) => {
                        // Recorded after every commit already queued, so no later write of this
                        // attempt can drop it; answered once durable.
                        let mut batch = WriteBatch::new();
                        (self.on_cancel)(&mut batch);
                        let commit = self.host.log().append(batch);
                        commits_sent += 1; // it writes the running record: later commits need not
                        let mut marker = PendingCommit::empty(next_index);
                        marker.on_durable = Some(reply);
                        commits.push_back(settle(commit, marker));
                        send_frame(&tx, frame::encode(frame::CANCEL, &serde_json::Map::new()));
                    }
                    AttemptSignal::Kill(reply) => return AttemptOutcome::Killed(reply),
                },
                _ = tokio::time::sleep(timeout) => {
                    return AttemptOutcome::Retryable(format!("SDK endpoint sent nothing for {timeout:?}"));
                }
            }
        }
    }

    /// Records a durable completion in the journal copy and tells the SDK.
    fn completed(&mut self, tx: &Body, index: u32, result: CompletionResult) {
        if let Some(slot) = self.journal.get_mut(index as usize).and_then(|e| e.result_slot()) {
            if slot.is_none() {
                *slot = Some(result.clone());
                send_frame(
                    tx,
                    frame::encode(frame::COMPLETION, &CompletionFrame { index, result: &result }),
                );
            }
        }
    }
}

/// `core::control`'s rule, seen from the running attempt: is `command` too late?
fn too_late(command: control::Control, output_sent: bool) -> bool {
    let stage = if output_sent {
        control::Stage::OutputSubmitted
    } else {
        control::Stage::Running
    };
    control::decide(command, stage) == control::Decision::TooLate
}

/// Starts the task that delivers an attempt's messages one after another, in production order.
/// Unbounded, but never longer than the attempt's journal: each message is one journaled entry.
fn spawn_deliveries(
    host: std::sync::Arc<dyn super::AttemptHost>,
) -> tokio::sync::mpsc::UnboundedSender<(Vec<u8>, OutboxMessage)> {
    let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, OutboxMessage)>();
    actix_rt::spawn(async move {
        while let Some((key, message)) = rx.recv().await {
            host.clone().deliver(key, message).await;
        }
    });
    queue
}

/// A commit in flight and what it carries, in one future type for the ordered queue.
async fn settle<F>(commit: F, pending: PendingCommit) -> (Result<(), crate::storage::StorageError>, PendingCommit)
where
    F: std::future::Future<Output = Result<(), crate::storage::StorageError>>,
{
    (commit.await, pending)
}
