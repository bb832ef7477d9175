//! The life of one invocation: creation writes, attempts with retries and back-off, and the
//! writes that finish it. Used by object actors (virtual objects) and directly (stateless).

mod live;
mod waiters;

use std::sync::Arc;
use std::time::Duration;

pub use live::{LiveStatus, LiveTable};
pub use waiters::Waiters;

use crate::ids::{InvocationId, ObjectId};
use crate::invoker::{Attempt, AttemptOutcome, StateCache};
use crate::journal::{codes, Entry, Failure, Output};
use crate::node::Node;
use crate::storage::{
    encode, keys, now_ms, HandlerKind, InvocationRecord, InvocationStatus, Table, WriteBatch,
};

/// An invocation in memory: its record and its durable journal.
pub struct Invocation {
    pub id: InvocationId,
    pub record: InvocationRecord,
    pub journal: Vec<Entry>,
}

impl Invocation {
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

    /// Writes that create the invocation: its record, its input entry, its idempotency row.
    pub fn creation_batch(&self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Invocations,
            keys::invocation(&self.id),
            encode(&self.record),
        );
        for (i, entry) in self.journal.iter().enumerate() {
            batch.put(
                Table::Journal,
                keys::journal_entry(&self.id, i as u32),
                encode(entry),
            );
        }
        if let Some(row) = self.idempotency_row() {
            batch.put(
                Table::Idempotency,
                row,
                encode(&crate::storage::IdempotencyRecord {
                    invocation_id: self.id,
                }),
            );
        }
        if let Some(seq) = self.record.inbox_seq {
            batch.put(
                Table::Inbox,
                keys::inbox_entry(&self.object(), seq),
                encode(&self.id),
            );
        }
        batch
    }
}

/// Adds the writes that finish `inv` with `output` and `status` to `batch`.
fn finish_writes(
    node: &Node,
    id: &InvocationId,
    record: &InvocationRecord,
    status: InvocationStatus,
    output: &Output,
    batch: &mut WriteBatch,
) {
    let mut done = record.clone();
    let now = now_ms();
    done.status = status;
    done.output = Some(output.clone());
    done.modified_at_ms = now;
    done.next_retry_at_ms = None;
    done.expires_at_ms = Some(now + node.config.idempotency_retention_secs * 1000);
    batch.put(Table::Invocations, keys::invocation(id), encode(&done));
    if let Some(seq) = record.inbox_seq {
        batch.delete(
            Table::Inbox,
            keys::inbox_entry(&ObjectId::new(&record.service, &record.key), seq),
        );
    }
}

/// Runs `inv` until it completes or fails for good. Returns once its end is durable and every
/// waiter has been told.
pub async fn drive(node: Arc<Node>, mut inv: Invocation, state: Option<Arc<StateCache>>) {
    let id = inv.id;
    loop {
        let Some(endpoint) = node.schema.endpoint_of(&inv.record.deployment_id) else {
            let failure = Failure {
                code: codes::PROTOCOL_VIOLATION,
                message: format!(
                    "deployment {} is no longer registered",
                    inv.record.deployment_id
                ),
            };
            return fail(&node, inv, failure).await;
        };
        inv.record.attempts += 1;
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
        let mut running = inv.record.clone();
        running.status = InvocationStatus::Running;
        running.modified_at_ms = now_ms();
        let running_row = encode(&running);
        let on_first_commit = |batch: &mut WriteBatch| {
            batch.put(
                Table::Invocations,
                keys::invocation(&id),
                running_row.clone(),
            )
        };
        let on_output = |batch: &mut WriteBatch, output: &Output| {
            finish_writes(
                &node,
                &id,
                &record,
                InvocationStatus::Completed,
                output,
                batch,
            )
        };
        let outcome = Attempt {
            id,
            service: &record.service,
            handler: &record.handler,
            key: &record.key,
            kind: record.kind,
            epoch: record.attempts,
            endpoint: &endpoint,
            journal: &mut inv.journal,
            state: state.as_deref(),
            writer: &node.store.writer,
            on_output: &on_output,
            on_first_commit: &on_first_commit,
            max_frame_bytes: node.config.max_frame_bytes,
            inactivity_timeout: Duration::from_millis(node.config.attempt_inactivity_timeout_ms),
        }
        .run()
        .await;
        match outcome {
            AttemptOutcome::Completed(output) => {
                tracing::debug!(invocation_id = %id, attempts = inv.record.attempts, "invocation.completed");
                node.finished(id, &output);
                return;
            }
            AttemptOutcome::Fatal(failure) => return fail(&node, inv, failure).await,
            AttemptOutcome::Retryable(error) => {
                tracing::warn!(invocation_id = %id, attempt = inv.record.attempts, %error, "invocation.attempt_failed");
                if node.config.retries_exhausted(inv.record.attempts) {
                    let failure = Failure {
                        code: codes::RETRIES_EXHAUSTED,
                        message: format!(
                            "gave up after {} attempts; last error: {error}",
                            inv.record.attempts
                        ),
                    };
                    return fail(&node, inv, failure).await;
                }
                let delay = node.config.retry_delay(inv.record.attempts);
                let now = now_ms();
                inv.record.status = InvocationStatus::BackingOff;
                inv.record.last_error = Some(error.clone());
                inv.record.next_retry_at_ms = Some(now + delay.as_millis() as u64);
                inv.record.modified_at_ms = now;
                node.live.set(
                    id,
                    LiveStatus {
                        status: InvocationStatus::BackingOff,
                        attempts: inv.record.attempts,
                        last_error: Some(error),
                        next_retry_at_ms: inv.record.next_retry_at_ms,
                    },
                );
                // Persisting the attempt count is informational: not awaited, ordered by the writer.
                let mut batch = WriteBatch::new();
                batch.put(
                    Table::Invocations,
                    keys::invocation(&id),
                    encode(&inv.record),
                );
                let commit = node.store.writer.commit(batch);
                actix_rt::spawn(async move {
                    if let Err(e) = commit.await {
                        tracing::warn!(error = %e, "could not record the failed attempt");
                    }
                });
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Ends `inv` for good with `failure` (durably), then tells its waiters.
async fn fail(node: &Arc<Node>, inv: Invocation, failure: Failure) {
    tracing::warn!(invocation_id = %inv.id, code = failure.code, message = %failure.message, "invocation.failed");
    let output = Output::Failure(failure);
    let mut record = inv.record.clone();
    record.last_error = match &output {
        Output::Failure(f) => Some(f.message.clone()),
        Output::Value(_) => None,
    };
    let mut batch = WriteBatch::new();
    finish_writes(
        node,
        &inv.id,
        &record,
        InvocationStatus::Failed,
        &output,
        &mut batch,
    );
    loop {
        match node.store.writer.commit(std::mem::take(&mut batch)).await {
            Ok(()) => break,
            Err(e) => {
                // Only an overloaded queue gets here (I/O errors stop the node): try again.
                tracing::warn!(error = %e, "could not record the failure yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
                finish_writes(
                    node,
                    &inv.id,
                    &record,
                    InvocationStatus::Failed,
                    &output,
                    &mut batch,
                );
            }
        }
    }
    node.finished(inv.id, &output);
}

/// Is `kind` one that runs through an object actor?
pub fn uses_actor(kind: HandlerKind) -> bool {
    kind != HandlerKind::Stateless
}
