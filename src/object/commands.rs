//! The commands an owner applies to invocations it holds: completions, cancel and kill,
//! activation of a scheduled invocation, promise operations. Each one that reads storage and
//! then writes runs under `ctx.wait`, so it is ordered with every other command of this owner
//! and with the invocations' own suspensions and ends.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::lifecycle::killed;
use super::phase::{self, Phase};
use super::ObjectActor;
use crate::core::control::{decide, Control, Decision, Stage};
use crate::core::{Action, Command, Completer, Refusal};
use crate::ids::{partition_of, InvocationId};
use crate::invocation::Invocation;
use crate::invoker::{AttemptSignal, ControlAnswer};
use crate::journal::{CompletionResult, Output};
use crate::storage::{InvocationStatus, OutboxMessage, PromiseMessage, StorageError, Table, WriteBatch};

#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error("no such entry to complete")]
    NotFound,
    #[error("already completed")]
    AlreadyCompleted,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

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

/// What a control did with no attempt running (one lives for one command: size is no matter).
#[allow(clippy::large_enum_variant)]
enum Applied {
    Cancelled(Box<Invocation>),
    /// Killed with `output`; `counted`: it was counted in flight (not scheduled).
    Killed {
        output: Output,
        counted: bool,
        caller_message: Option<(Vec<u8>, OutboxMessage)>,
    },
}

impl ObjectActor {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete(
        &mut self,
        target: InvocationId,
        index: u32,
        result: CompletionResult,
        mut extra: WriteBatch,
        by: Completer,
        reply: oneshot::Sender<Result<(), CompleteError>>,
        ctx: &mut Context<Self>,
    ) {
        let node = self.node.clone();
        let applying = async move {
            let transition = node
                .decide(Command::Complete {
                    target,
                    index,
                    result,
                    by,
                })
                .await?;
            // The carrying row goes either way: a refused completion can never take effect.
            let staged = node.stage_writes(&mut extra, target.partition(), transition.writes.clone());
            debug_assert!(staged.is_empty(), "a completion stages no messages");
            node.store().log.append_retrying(extra).await?;
            Ok::<_, StorageError>(transition)
        };
        ctx.wait(applying.into_actor(self).map(move |applied, act, ctx| {
            let answer = match applied {
                Err(e) => Err(CompleteError::Storage(e)),
                Ok(t) if t.refused == Some(Refusal::AlreadyCompleted) => Err(CompleteError::AlreadyCompleted),
                Ok(t) if t.refused.is_some() => Err(CompleteError::NotFound),
                Ok(t) => {
                    for action in t.actions {
                        if let Action::Wake { target, index, result } = action {
                            act.wake(target, Some((index, result)), ctx);
                        }
                    }
                    Ok(())
                }
            };
            let _ = reply.send(answer);
        }));
    }

    /// Tells `id`'s running attempt about a durable completion, or resumes it if it is
    /// suspended on that entry (on any entry when `completion` is `None`: a cancel).
    fn wake(&mut self, id: InvocationId, completion: Option<(u32, CompletionResult)>, ctx: &mut Context<Self>) {
        match phase::wake(self.held.get(&id), completion.as_ref().map(|(index, _)| *index)) {
            phase::Wake::Signal => {
                if let (Some(Phase::Running(tx)), Some((index, result))) = (self.held.get(&id), completion) {
                    // A full channel is safe: the attempt's suspension re-reads the journal.
                    let _ = tx.try_send(AttemptSignal::Completion { index, result });
                }
            }
            phase::Wake::Resume => {
                if let Some(Phase::Suspended(inv)) = self.held.remove(&id) {
                    tracing::debug!(invocation_id = %id, "invocation.resume");
                    self.begin(id, Some(inv), ctx);
                }
            }
            phase::Wake::Nothing => {}
        }
    }

    /// Cancel or kill `id`. A running attempt applies it in its own commit order; otherwise the
    /// owner decides from the latest record (`core::control`) and writes it here.
    pub(super) fn control(
        &mut self,
        id: InvocationId,
        control: Control,
        reply: oneshot::Sender<Result<(), ControlError>>,
        ctx: &mut Context<Self>,
    ) {
        let queued_copy = || self.queue.iter().find(|q| q.id == id).and_then(|q| q.loaded.as_ref());
        let by = phase::control_by(self.held.get(&id), queued_copy().is_some());
        if let (phase::ControlBy::Attempt, Some(Phase::Running(tx))) = (&by, self.held.get(&id)) {
            let (answer_to, answer) = oneshot::channel();
            let signal = match control {
                Control::Cancel => AttemptSignal::Cancel(answer_to),
                Control::Kill => AttemptSignal::Kill(answer_to),
            };
            tracing::info!(invocation_id = %id, status = "running", ?control, "invocation.control");
            if tx.try_send(signal).is_err() {
                let _ = reply.send(Err(ControlError::Interrupted(id)));
                return;
            }
            actix_rt::spawn(async move {
                let _ = reply.send(match answer.await {
                    Ok(ControlAnswer::Done) => Ok(()),
                    Ok(ControlAnswer::Finishing) => Err(ControlError::Finished(id)),
                    // The attempt was dropped (its partition moved, or it broke) before answering.
                    Err(_) => Err(ControlError::Interrupted(id)),
                });
            });
            return;
        }
        // The newest copy: what this actor holds, else storage (read in this actor's order).
        let held = match (by, self.held.get(&id)) {
            (phase::ControlBy::OwnerFromStorage, _) => None,
            (_, Some(Phase::BackingOff(inv) | Phase::Suspended(inv) | Phase::Creating(inv))) => Some(inv.clone()),
            _ => queued_copy().cloned(),
        };
        let node = self.node.clone();
        let applying = async move {
            let inv = match held {
                Some(inv) => Some(inv),
                None => super::host::load(node.store(), id).await?,
            };
            let stage = match &inv {
                None => Stage::Unknown,
                Some(inv) if inv.record.status.is_finished() => Stage::Finished,
                Some(_) => Stage::Waiting,
            };
            let (decision, Some(mut inv)) = (decide(control, stage), inv) else {
                return Err(ControlError::NotFound(id));
            };
            tracing::info!(invocation_id = %id, status = inv.record.status.as_str(), ?control, "invocation.control");
            let mut batch = inv.unwritten_creation();
            let applied = match decision {
                Decision::NotFound => return Err(ControlError::NotFound(id)),
                Decision::TooLate => return Err(ControlError::Finished(id)),
                Decision::RecordCancel => {
                    inv.record.cancel_requested = true;
                    batch.put_invocation(&id, &inv.record);
                    Applied::Cancelled(Box::new(inv))
                }
                Decision::WriteKilledEnd | Decision::StopAttempt => {
                    let output = Output::Failure(killed());
                    let message = node.finish_writes(&id, &inv.record, InvocationStatus::Killed, &output, &mut batch);
                    Applied::Killed {
                        output,
                        counted: inv.record.status != InvocationStatus::Scheduled,
                        caller_message: message,
                    }
                }
            };
            node.store().log.append_retrying(batch).await?;
            Ok(applied)
        };
        ctx.wait(applying.into_actor(self).map(move |applied, act, ctx| {
            let answer = match applied {
                Err(e) => Err(e),
                Ok(Applied::Cancelled(mut inv)) => {
                    inv.unwritten = false;
                    act.cancelled(*inv, ctx);
                    Ok(())
                }
                Ok(Applied::Killed {
                    output,
                    counted,
                    caller_message,
                }) => {
                    act.node.finished_counted(id, &output, counted);
                    act.node.deliver_in_background(caller_message.into_iter().collect());
                    act.ended(id, ctx);
                    Ok(())
                }
            };
            let _ = reply.send(answer);
        }));
    }

    /// Keeps the cancelled copy of `inv` wherever this actor holds it; a suspended invocation
    /// resumes to see its cancellation.
    fn cancelled(&mut self, inv: Invocation, ctx: &mut Context<Self>) {
        let id = inv.id;
        match self.held.get_mut(&id) {
            Some(Phase::Suspended(_)) => {
                self.held.insert(id, Phase::Suspended(inv));
                self.wake(id, None, ctx);
            }
            Some(Phase::BackingOff(held) | Phase::Creating(held)) => *held = inv,
            _ => {
                if let Some(loaded) = self
                    .queue
                    .iter_mut()
                    .find(|q| q.id == id)
                    .and_then(|q| q.loaded.as_mut())
                {
                    *loaded = inv;
                }
            }
        }
    }

    /// Turns a scheduled invocation into a pending one (its timer fired), deleting the
    /// timer's row in the same batch.
    pub(super) fn activate(&mut self, id: InvocationId, timer_key: Vec<u8>, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        let read = async move { super::host::load(node.store(), id).await };
        ctx.wait(read.into_actor(self).map(move |read, act, ctx| {
            let mut extra = WriteBatch::new();
            extra.delete(Table::Timers, timer_key);
            match read {
                Ok(Some(inv)) if let Some(pending) = crate::core::attempt::activated(&inv.record) => {
                    let invocation = Invocation::new(id, pending, inv.journal);
                    // Refused (a full inbox): the timer's row stays, and fires again.
                    let reply: super::Reply = Box::new(move |created| {
                        if let Err(e) = created {
                            tracing::warn!(invocation_id = %id, error = %e, "activation deferred");
                        }
                    });
                    act.create(invocation, extra, true, reply, None, ctx);
                }
                Ok(_) => {
                    let node = act.node.clone();
                    actix_rt::spawn(async move {
                        let _ = node.store().log.append_retrying(extra).await;
                    });
                }
                Err(e) => tracing::error!(error = %e, invocation_id = %id, "cannot activate; retried on restart"),
            }
        }));
    }

    /// Applies a promise operation of this workflow; its replies are delivered once durable.
    pub(super) fn promise(&mut self, message: PromiseMessage, reply: oneshot::Sender<bool>, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        // Replies leave from the promise's partition: the one this node serves.
        let partition = partition_of(message.object.partition_key());
        let applying = async move {
            let transition = node.decide(Command::Promise(message)).await?;
            let mut batch = WriteBatch::new();
            let staged = node.stage_writes(&mut batch, partition, transition.writes);
            node.store().log.append_retrying(batch).await?;
            Ok::<_, StorageError>(staged)
        };
        ctx.wait(applying.into_actor(self).map(move |applied, act, _| match applied {
            Ok(staged) => {
                act.node.deliver_in_background(staged);
                let _ = reply.send(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply promise operation; retried on restart");
                let _ = reply.send(false);
            }
        }));
    }
}
