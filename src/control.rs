//! Operator and runtime control of invocations: resume after suspension, cancel, kill.

use std::sync::Arc;

use crate::core::control::{decide, Control, Decision, Stage};
use crate::ids::InvocationId;
use crate::invocation::{drive, Invocation};
use tokio::sync::oneshot;

use crate::invoker::{AttemptSignal, ControlAnswer};
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
    #[error("invocation {0} moved or restarted while the request was applied; repeat it")]
    Interrupted(InvocationId),
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
        Ok(Some(Invocation::new(id, record, journal)))
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

    /// Loads `id` with no attempt running and applies `core::control`'s rule for `control`:
    /// the invocation, if the command applies to it.
    async fn unfinished(&self, id: InvocationId, control: Control) -> Result<Invocation, ControlError> {
        let inv = load(self, id).await?;
        let stage = match &inv {
            None => Stage::Unknown,
            Some(inv) if inv.record.status.is_finished() => Stage::Finished,
            Some(_) => Stage::Waiting,
        };
        match (decide(control, stage), inv) {
            (Decision::NotFound, _) => Err(ControlError::NotFound(id)),
            (Decision::TooLate, _) => Err(ControlError::Finished(id)),
            (_, Some(inv)) => Ok(inv),
            (_, None) => Err(ControlError::NotFound(id)),
        }
    }

    /// Hands `signal` to the running attempt of `id`, if there is one: it answers in its own
    /// commit order, so a cancel or kill never overwrites an output already on its way to disk.
    /// `None`: no attempt runs (or it is ending), so storage holds the latest record.
    async fn tell_attempt(
        &self,
        id: InvocationId,
        signal: impl FnOnce(oneshot::Sender<ControlAnswer>) -> AttemptSignal,
    ) -> Option<oneshot::Receiver<ControlAnswer>> {
        let tx = self.attempts.lock().expect("attempts lock").get(&id).cloned()?;
        let (reply, answer) = oneshot::channel();
        // A closed channel means the attempt has returned; its writes are durable by then.
        tx.send(signal(reply)).await.ok().map(|()| answer)
    }

    /// Requests cancellation: the handler sees a `TerminalException(409)` at its next await and
    /// can compensate. Cascades to the invocations its pending calls wait on.
    pub async fn cancel(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        retry_interrupted(|| self.cancel_once(id)).await
    }

    /// Ends the invocation at once as `killed`, running no more of its code: a running attempt
    /// stops (its driver writes the end) unless its output is already on its way to disk;
    /// otherwise the end is written here. Answers once the end is durable.
    pub async fn kill(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        retry_interrupted(|| self.kill_once(id)).await
    }

    async fn cancel_once(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        let answer = {
            let _guard = self.stripe(&id).lock().await;
            self.cancel_requests.lock().expect("cancel lock").insert(id);
            match self.tell_attempt(id, AttemptSignal::Cancel).await {
                Some(answer) => Some(answer),
                None => {
                    // No attempt runs: every writer of this record holds the stripe lock, so the
                    // record read here is the latest.
                    let mut inv = match self.unfinished(id, Control::Cancel).await {
                        Ok(inv) => inv,
                        Err(e) => {
                            self.cancel_requests.lock().expect("cancel lock").remove(&id);
                            return Err(e);
                        }
                    };
                    inv.record.cancel_requested = true;
                    let mut batch = WriteBatch::new();
                    batch.put_invocation(&id, &inv.record);
                    self.commit_retrying(batch).await?;
                    self.wake_for_cancel(id);
                    None
                }
            }
        };
        if let Some(answer) = answer {
            match answer.await {
                Ok(ControlAnswer::Done) => {}
                Ok(ControlAnswer::Finishing) => return Err(ControlError::Finished(id)),
                // The attempt was dropped (its partition moved, or it broke) before answering.
                Err(_) => return Err(ControlError::Interrupted(id)),
            }
        }
        let callees = match load(self, id).await? {
            Some(inv) => pending_callees(&inv),
            None => Vec::new(),
        };
        tracing::info!(invocation_id = %id, callees = callees.len(), "invocation.cancel");
        for callee in callees {
            if let Err(e) = Box::pin(self.cancel(callee)).await {
                tracing::debug!(invocation_id = %callee, error = %e, "cancel of callee skipped");
            }
        }
        Ok(())
    }

    /// A suspended invocation resumes to see its cancellation.
    fn wake_for_cancel(self: &Arc<Self>, id: InvocationId) {
        let resume = self.suspended.lock().expect("suspended lock").remove(&id).is_some();
        if resume {
            self.resume(id);
        }
    }

    async fn kill_once(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        let staged = {
            let _guard = self.stripe(&id).lock().await;
            if let Some(answer) = self.tell_attempt(id, AttemptSignal::Kill).await {
                drop(_guard); // the driver takes it to write the end
                tracing::info!(invocation_id = %id, status = "running", "invocation.kill");
                return match answer.await {
                    Ok(ControlAnswer::Done) => Ok(()),
                    Ok(ControlAnswer::Finishing) => Err(ControlError::Finished(id)),
                    Err(_) => Err(ControlError::Interrupted(id)),
                };
            }
            // No attempt runs: the record read here is the latest (see `cancel`).
            let inv = self.unfinished(id, Control::Kill).await?;
            tracing::info!(invocation_id = %id, status = inv.record.status.as_str(), "invocation.kill");
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
            if let Err(e) = self.commit_retrying(batch).await {
                self.killed.lock().expect("killed lock").remove(&id);
                return Err(e.into());
            }
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

/// Runs `once` again while the attempt it was handed to ended without answering (at most 3
/// times): the next try finds no attempt, or a new one, and applies it there.
async fn retry_interrupted<F, Fut>(once: F) -> Result<(), ControlError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>>,
{
    let mut result = once().await;
    for _ in 0..2 {
        match result {
            Err(ControlError::Interrupted(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                result = once().await;
            }
            other => return other,
        }
    }
    result
}

/// Callees of `inv`'s calls that have no result yet.
fn pending_callees(inv: &Invocation) -> Vec<InvocationId> {
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
        .collect()
}
