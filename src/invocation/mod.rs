//! The life of one invocation: creation writes, attempts with retries and back-off,
//! suspension, and the writes that finish it. Used by object actors (virtual objects,
//! workflows) and directly (stateless services).
//!
//! Invariant: at most one `drive` runs per invocation; it registers its attempt's signal
//! channel and handles suspension under the invocation's stripe lock, the same lock that
//! `Node::complete` holds, so no completion is ever missed.

mod live;
mod waiters;

use std::sync::{Arc, Mutex};

pub use live::{LiveStatus, LiveTable};
pub use waiters::Waiters;

use crate::core::attempt::Retry;
use crate::ids::{InvocationId, ObjectId};
use crate::invoker::{Attempt, AttemptOutcome, StateCache, SIGNALS_CAPACITY};
use crate::journal::{codes, Entry, Failure, Output};
use crate::node::Node;
use crate::storage::{encode, keys, now_ms, InvocationRecord, InvocationStatus, OutboxMessage, Table, WriteBatch};

/// An invocation in memory: its record and its durable journal.
#[derive(Clone)]
pub struct Invocation {
    pub id: InvocationId,
    pub record: InvocationRecord,
    pub journal: Vec<Entry>,
    /// Its creation is not on disk yet. Only an ingress call without idempotency key is
    /// created this way: its response is its only acknowledgement, so its creation can wait
    /// for the first commit of its first attempt and share that fdatasync. Whatever writes the
    /// record first writes the creation with it (`Invocation::written_with`).
    pub unwritten: bool,
}

/// How `drive` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveEnd {
    /// Completed, failed or killed; durable, waiters told.
    Finished,
    /// Waiting for a completion; a later `Node::resume` starts it again.
    Suspended,
    /// Its partition moved to another node, which goes on with it.
    Moved,
}

impl Invocation {
    /// An invocation read back from storage (or about to be created there).
    pub fn new(id: InvocationId, record: InvocationRecord, journal: Vec<Entry>) -> Self {
        Self {
            id,
            record,
            journal,
            unwritten: false,
        }
    }

    /// Adds its creation to `batch` if it is not on disk yet, ahead of the batch's own writes
    /// (the last write of a key in a batch wins, so a later record or inbox delete overrides).
    fn written_with(creation: &Mutex<Option<WriteBatch>>, batch: &mut WriteBatch) {
        if let Some(creation) = creation.lock().expect("creation lock").take() {
            let own = std::mem::replace(batch, creation);
            batch.append(own);
        }
    }

    pub fn object(&self) -> ObjectId {
        ObjectId::new(&self.record.service, &self.record.key)
    }

    /// Key of this invocation's idempotency row, if it has an idempotency key.
    pub fn idempotency_row(&self) -> Option<Vec<u8>> {
        let target = keys::Target {
            service: &self.record.service,
            key: &self.record.key,
            handler: &self.record.handler,
        };
        self.record
            .idempotency_key
            .as_deref()
            .map(|k| keys::idempotency(self.id.partition_key(), &target, k))
    }

    /// Writes that create the invocation: its record, its input entry, its idempotency row,
    /// its inbox row.
    pub fn creation_batch(&self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put_invocation(&self.id, &self.record);
        for (i, entry) in self.journal.iter().enumerate() {
            batch.put(Table::Journal, keys::journal_entry(&self.id, i as u32), encode(entry));
        }
        if let Some(row) = self.idempotency_row() {
            batch.put(
                Table::Idempotency,
                row,
                encode(&crate::storage::IdempotencyRecord { invocation_id: self.id }),
            );
        }
        if let Some(seq) = self.record.inbox_seq {
            batch.put(Table::Inbox, keys::inbox_entry(&self.object(), seq), encode(&self.id));
        }
        batch
    }

    /// Its creation if it is not on disk yet, else an empty batch: the start of the batch of
    /// whichever write of its record comes first.
    fn unwritten_creation(&self) -> WriteBatch {
        if self.unwritten {
            self.creation_batch()
        } else {
            WriteBatch::new()
        }
    }

    /// A suspended invocation may run again once one of the entries it waits on is completed.
    pub fn can_resume(&self) -> bool {
        crate::core::attempt::resumable(&self.record, &self.journal)
    }

    /// A completable entry without a result: a new attempt must re-read the journal first.
    fn awaits_completions(&self) -> bool {
        self.journal.iter().any(Entry::awaits_completion)
    }
}

/// Adds the writes that finish the invocation with `output` and `status` to `batch` (as
/// `core::finish` decides); returns the message completing its caller's `call` entry, staged in
/// the same batch.
pub(crate) fn finish_writes(
    node: &Node,
    id: &InvocationId,
    record: &InvocationRecord,
    status: InvocationStatus,
    output: &Output,
    batch: &mut WriteBatch,
) -> Option<(Vec<u8>, OutboxMessage)> {
    let retention_ms = node.config.idempotency_retention_secs * 1000;
    let transition = crate::core::finish::apply(*id, record, status, output.clone(), now_ms(), retention_ms);
    // Its one action, `Finished`, is `Node::finished`: the caller runs it once this is durable.
    node.stage_writes(batch, id.partition(), transition.writes).pop()
}

/// Runs `inv` until it finishes or suspends.
pub async fn drive(node: Arc<Node>, mut inv: Invocation, state: Option<Arc<StateCache>>) -> DriveEnd {
    let id = inv.id;
    loop {
        if !node.cluster.owns(id.partition()) {
            node.attempts.lock().expect("attempts lock").remove(&id);
            tracing::debug!(invocation_id = %id, "invocation.moved");
            return DriveEnd::Moved;
        }
        let Some(endpoint) = node.schema.endpoint_of(&inv.record.deployment_id) else {
            let failure = Failure {
                code: codes::PROTOCOL_VIOLATION,
                message: format!("deployment {} is no longer registered", inv.record.deployment_id),
            };
            finish(&node, inv, InvocationStatus::Failed, failure).await;
            return DriveEnd::Finished;
        };
        // Register for completions; re-read the journal if completions may have landed.
        let signals = {
            let _guard = node.stripe(&id).lock().await;
            if node.killed.lock().expect("killed lock").remove(&id) {
                return DriveEnd::Finished; // `kill` already wrote the end
            }
            if inv.awaits_completions() {
                match crate::control::load(&node, id).await {
                    Ok(Some(fresh)) => inv.journal = fresh.journal,
                    Ok(None) => return DriveEnd::Finished,
                    Err(e) => {
                        tracing::warn!(invocation_id = %id, error = %e, "cannot refresh journal")
                    }
                }
            }
            let (tx, rx) = tokio::sync::mpsc::channel(SIGNALS_CAPACITY);
            node.attempts.lock().expect("attempts lock").insert(id, tx);
            node.suspended.lock().expect("suspended lock").remove(&id);
            rx
        };
        inv.record.attempts += 1;
        inv.record.cancel_requested |= node.cancel_requests.lock().expect("cancel lock").contains(&id);
        node.live.set(
            id,
            LiveStatus {
                status: InvocationStatus::Running,
                attempts: inv.record.attempts,
                last_error: inv.record.last_error.clone(),
                next_retry_at_ms: None,
            },
        );
        let record = inv.record.clone();
        let running = crate::core::attempt::running(&inv.record, now_ms());
        // Whichever of the attempt's record writes comes first carries an unwritten creation.
        let creation = Mutex::new(inv.unwritten.then(|| inv.creation_batch()));
        let on_first_commit = |batch: &mut WriteBatch| {
            Invocation::written_with(&creation, batch);
            batch.put_invocation(&id, &running)
        };
        let mut cancelled_running = running.clone();
        cancelled_running.cancel_requested = true;
        let on_cancel = |batch: &mut WriteBatch| {
            Invocation::written_with(&creation, batch);
            batch.put_invocation(&id, &cancelled_running)
        };
        let caller_message: Mutex<Option<(Vec<u8>, OutboxMessage)>> = Mutex::new(None);
        let on_output = |batch: &mut WriteBatch, output: &Output| {
            *caller_message.lock().expect("caller message lock") =
                finish_writes(&node, &id, &record, InvocationStatus::Completed, output, batch);
        };
        let outcome = Attempt {
            node: &node,
            id,
            record: &record,
            epoch: record.attempts,
            endpoint: &endpoint,
            journal: &mut inv.journal,
            state: state.as_deref(),
            signals,
            cancelled: record.cancel_requested,
            on_output: &on_output,
            on_first_commit: &on_first_commit,
            on_cancel: &on_cancel,
        }
        .run()
        .await;
        inv.unwritten = creation.lock().expect("creation lock").is_some();
        if !matches!(outcome, AttemptOutcome::Suspended(_)) {
            node.attempts.lock().expect("attempts lock").remove(&id);
        }
        match outcome {
            AttemptOutcome::Completed(output) => {
                tracing::debug!(invocation_id = %id, attempts = inv.record.attempts, "invocation.completed");
                let message = caller_message.lock().expect("caller message lock").take();
                node.finished(id, &output);
                if let Some((key, message)) = message {
                    node.deliver(Some(key), message, false).await;
                }
                return DriveEnd::Finished;
            }
            AttemptOutcome::Fatal(failure) => {
                finish(&node, inv, InvocationStatus::Failed, failure).await;
                return DriveEnd::Finished;
            }
            AttemptOutcome::Killed(reply) => {
                let failure = Failure {
                    code: codes::KILLED,
                    message: "killed".into(),
                };
                if finish(&node, inv, InvocationStatus::Killed, failure).await {
                    let _ = reply.send(crate::invoker::ControlAnswer::Done);
                }
                return DriveEnd::Finished;
            }
            AttemptOutcome::Suspended(waiting_on) => {
                // `None`: a completion landed meanwhile; go on with a fresh attempt.
                if let Some(end) = suspend(&node, &mut inv, waiting_on).await {
                    return end;
                }
            }
            AttemptOutcome::Retryable(_) if !node.cluster.owns(id.partition()) => {
                // Its partition moved away mid-attempt (commits refused): the new owner replays it.
                tracing::debug!(invocation_id = %id, "invocation.moved");
                return DriveEnd::Moved;
            }
            AttemptOutcome::Retryable(error) => {
                tracing::warn!(invocation_id = %id, attempt = inv.record.attempts, %error, "invocation.attempt_failed");
                let policy = node
                    .schema
                    .retry_policy(&inv.record.deployment_id, &inv.record.service, &inv.record.handler)
                    .unwrap_or_default();
                let max_attempts = policy.max_attempts.unwrap_or(node.config.retry_max_attempts);
                let delay = node.config.retry_delay_with(
                    inv.record.attempts,
                    policy.initial_interval_ms,
                    policy.max_interval_ms,
                );
                let delay_ms = delay.as_millis() as u64;
                match crate::core::attempt::failed(&inv.record, error.clone(), now_ms(), delay_ms, max_attempts) {
                    Retry::GiveUp(failure) => {
                        finish(&node, inv, InvocationStatus::Failed, failure).await;
                        return DriveEnd::Finished;
                    }
                    Retry::BackOff(record) => inv.record = *record,
                }
                node.live.set(
                    id,
                    LiveStatus {
                        status: InvocationStatus::BackingOff,
                        attempts: inv.record.attempts,
                        last_error: Some(error),
                        next_retry_at_ms: inv.record.next_retry_at_ms,
                    },
                );
                {
                    // Under the stripe lock, so a concurrent `kill` is either seen here or
                    // writes its end after this record.
                    let _guard = node.stripe(&id).lock().await;
                    if node.killed.lock().expect("killed lock").remove(&id) {
                        return DriveEnd::Finished;
                    }
                    let mut batch = inv.unwritten_creation();
                    batch.put_invocation(&id, &inv.record);
                    match node.commit_retrying(batch).await {
                        Ok(()) => inv.unwritten = false,
                        Err(e) => tracing::warn!(error = %e, "could not record the failed attempt"),
                    }
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Records the suspension, unless one of `waiting_on` was completed meanwhile (then `None`:
/// the caller starts a new attempt at once) or `kill` ended the invocation.
async fn suspend(node: &Arc<Node>, inv: &mut Invocation, waiting_on: Vec<u32>) -> Option<DriveEnd> {
    let id = inv.id;
    let _guard = node.stripe(&id).lock().await;
    node.attempts.lock().expect("attempts lock").remove(&id);
    if node.killed.lock().expect("killed lock").remove(&id) {
        return Some(DriveEnd::Finished);
    }
    // Unwritten, nothing can have completed one of its entries: none of them is stored.
    if !inv.unwritten {
        match crate::control::load(node, id).await {
            Ok(Some(fresh)) => inv.journal = fresh.journal,
            Ok(None) => return Some(DriveEnd::Finished),
            Err(e) => tracing::warn!(invocation_id = %id, error = %e, "cannot refresh journal"),
        }
    }
    inv.record.cancel_requested |= node.cancel_requests.lock().expect("cancel lock").contains(&id);
    match crate::core::attempt::suspended(&inv.record, &inv.journal, waiting_on.clone(), now_ms()) {
        None => return None,
        Some(record) => inv.record = record,
    }
    let mut batch = inv.unwritten_creation();
    batch.put_invocation(&id, &inv.record);
    match node.commit_retrying(batch).await {
        Ok(()) => inv.unwritten = false,
        Err(e) => tracing::warn!(invocation_id = %id, error = %e, "could not record the suspension"),
    }
    node.live.set(
        id,
        LiveStatus {
            status: InvocationStatus::Suspended,
            attempts: inv.record.attempts,
            last_error: inv.record.last_error.clone(),
            next_retry_at_ms: None,
        },
    );
    node.suspended.lock().expect("suspended lock").insert(id, waiting_on);
    tracing::debug!(invocation_id = %id, "invocation.suspended");
    Some(DriveEnd::Suspended)
}

/// Ends `inv` for good with `failure` and `status` (durably), tells its waiters and its caller.
/// Returns whether this call wrote the end (not a concurrent `kill`, nor a failed commit).
async fn finish(node: &Arc<Node>, inv: Invocation, status: InvocationStatus, failure: Failure) -> bool {
    tracing::warn!(invocation_id = %inv.id, code = failure.code, message = %failure.message, status = status.as_str(), "invocation.failed");
    let output = Output::Failure(failure);
    let message = {
        // Under the stripe lock, like every write of a record with no attempt running: a
        // `kill` that got here first has written the end already.
        let _guard = node.stripe(&inv.id).lock().await;
        node.attempts.lock().expect("attempts lock").remove(&inv.id);
        node.suspended.lock().expect("suspended lock").remove(&inv.id);
        if node.killed.lock().expect("killed lock").remove(&inv.id) {
            return false;
        }
        let mut record = inv.record.clone();
        if let Output::Failure(f) = &output {
            record.last_error = Some(f.message.clone());
        }
        let mut batch = inv.unwritten_creation();
        let message = finish_writes(node, &inv.id, &record, status, &output, &mut batch);
        if let Err(e) = node.commit_retrying(batch).await {
            tracing::error!(invocation_id = %inv.id, error = %e, "could not record the end of an invocation");
            return false;
        }
        message
    };
    node.finished(inv.id, &output);
    if let Some((key, message)) = message {
        node.deliver(Some(key), message, false).await;
    }
    true
}
