//! Operator and runtime control of invocations: resume after suspension, cancel, kill.

use std::sync::Arc;

use crate::ids::InvocationId;
use crate::invocation::{drive, Invocation};
use crate::invoker::AttemptSignal;
use crate::journal::{codes, Entry, Failure, Output};
use crate::node::Node;
use crate::object::ObjectMsg;
use crate::storage::{HandlerKind, InvocationStatus, StorageError, WriteBatch};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invocation {0} not found")]
    NotFound(InvocationId),
    #[error("invocation {0} has already finished")]
    Finished(InvocationId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Loads an invocation and its journal.
pub(crate) async fn load(node: &Node, id: InvocationId) -> Result<Option<Invocation>, StorageError> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || {
        let Some(record) = store.invocation(&id)? else {
            return Ok(None);
        };
        let journal = store.journal(&id)?;
        Ok(Some(Invocation { id, record, journal }))
    })
    .await
    .map_err(|e| StorageError::Io(e.to_string()))?
}

impl Node {
    /// Starts a new attempt of a suspended invocation, from storage.
    pub(crate) fn resume(self: &Arc<Self>, id: InvocationId) {
        let node = self.clone();
        actix_rt::spawn(async move {
            let invocation = match load(&node, id).await {
                Ok(Some(inv)) if !inv.record.status.is_finished() => inv,
                Ok(_) => return,
                Err(e) => return tracing::error!(invocation_id = %id, error = %e, "cannot resume"),
            };
            tracing::debug!(invocation_id = %id, "invocation.resume");
            let sent = match invocation.record.kind {
                HandlerKind::Exclusive | HandlerKind::Workflow => {
                    let object = invocation.object();
                    node.objects.send(&node, &object, ObjectMsg::Resume(id))
                }
                HandlerKind::Shared => {
                    let object = invocation.object();
                    node.objects.send(&node, &object, ObjectMsg::ResumeShared(invocation))
                }
                HandlerKind::Stateless => {
                    actix_rt::spawn(drive(node.clone(), invocation, None));
                    Ok(())
                }
            };
            if let Err(e) = sent {
                tracing::error!(invocation_id = %id, error = %e, "cannot resume");
            }
        });
    }

    async fn unfinished(&self, id: InvocationId) -> Result<Invocation, ControlError> {
        match load(self, id).await? {
            None => Err(ControlError::NotFound(id)),
            Some(inv) if inv.record.status.is_finished() => Err(ControlError::Finished(id)),
            Some(inv) => Ok(inv),
        }
    }

    /// Requests cancellation: the handler sees a `TerminalException(409)` at its next await and
    /// can compensate. Cascades to the invocations its pending calls wait on.
    pub async fn cancel(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        let callees = {
            let _guard = self.stripe(&id).lock().await;
            let mut inv = self.unfinished(id).await?;
            self.cancel_requests.lock().expect("cancel lock").insert(id);
            inv.record.cancel_requested = true;
            let mut batch = WriteBatch::new();
            batch.put_invocation(&id, &inv.record);
            self.commit_retrying(batch).await?;
            self.wake(id, AttemptSignal::Cancel, None);
            inv.journal
                .iter()
                .filter_map(|e| match e {
                    Entry::Call {
                        invocation_id: Some(callee),
                        result: None,
                        ..
                    } => Some(*callee),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        tracing::info!(invocation_id = %id, callees = callees.len(), "invocation.cancel");
        for callee in callees {
            if let Err(e) = Box::pin(self.cancel(callee)).await {
                tracing::debug!(invocation_id = %callee, error = %e, "cancel of callee skipped");
            }
        }
        Ok(())
    }

    /// Ends the invocation at once as `killed`, running no more of its code: a running attempt
    /// is aborted (its driver writes the end); otherwise the end is written here, durably, before
    /// answering.
    pub async fn kill(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        let staged = {
            let _guard = self.stripe(&id).lock().await;
            let inv = self.unfinished(id).await?;
            tracing::info!(invocation_id = %id, status = inv.record.status.as_str(), "invocation.kill");
            if let Some(tx) = self.attempts.lock().expect("attempts lock").get(&id) {
                if tx.try_send(AttemptSignal::Kill).is_ok() {
                    return Ok(());
                }
            }
            // Pending, scheduled, suspended or backing off: a driver or actor that still holds it
            // finds it in `killed` and stops without writing.
            self.killed.lock().expect("killed lock").insert(id);
            self.suspended.lock().expect("suspended lock").remove(&id);
            let output = Output::Failure(Failure {
                code: codes::KILLED,
                message: "killed".into(),
            });
            let mut batch = WriteBatch::new();
            let staged =
                crate::invocation::finish_writes(self, &id, &inv.record, InvocationStatus::Killed, &output, &mut batch);
            self.commit_retrying(batch).await?;
            self.finished_counted(id, &output, inv.record.status != InvocationStatus::Scheduled);
            if inv.record.kind.is_exclusive() {
                let object = inv.object();
                if let Err(e) = self.objects.send(self, &object, ObjectMsg::Forget(id)) {
                    tracing::warn!(invocation_id = %id, error = %e, "could not tell the object about the kill");
                }
            }
            staged
        };
        if let Some((key, message)) = staged {
            self.deliver(Some(key), message, false).await;
        }
        Ok(())
    }
}
