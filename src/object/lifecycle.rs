//! The life of an invocation in its owner: start an attempt, and when it ends, what follows —
//! the end (completed, failed, killed), a suspension, or a back-off and the next attempt. The
//! records are decided by `core::attempt` and `core::finish`; the owner writes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use super::host::OwnerHost;
use super::phase::Phase;
use super::ObjectActor;
use crate::core::attempt::Retry;
use crate::ids::InvocationId;
use crate::invocation::{Invocation, LiveStatus};
use crate::invoker::{Attempt, AttemptOutcome, ControlAnswer, StateCache, SIGNALS_CAPACITY};
use crate::journal::{codes, Failure, Output};
use crate::storage::{now_ms, InvocationStatus, OutboxMessage, WriteBatch};

/// An attempt that ran: the invocation (with the journal it made durable), how it ended, and
/// the message completing its caller, if its output carried one.
struct Ran {
    inv: Invocation,
    outcome: AttemptOutcome,
    caller_message: Option<(Vec<u8>, OutboxMessage)>,
}

impl ObjectActor {
    /// Takes up `id`: reads it (or its journal, if completions may have landed since `loaded`
    /// was read) in the actor's order, then starts an attempt.
    pub(super) fn begin(&mut self, id: InvocationId, loaded: Option<Invocation>, ctx: &mut Context<Self>) {
        self.held.insert(id, Phase::Starting);
        let loaded = match loaded {
            Some(inv) if !super::phase::needs_read(Some(&inv)) => return self.start_attempt(inv, ctx),
            other => other,
        };
        let node = self.node.clone();
        let read = async move { super::host::load(node.store(), id).await };
        ctx.wait(read.into_actor(self).map(move |read, act, ctx| match read {
            Ok(Some(fresh)) if !fresh.record.status.is_finished() => act.start_attempt(fresh, ctx),
            Ok(_) => act.ended(id, ctx),
            Err(e) => {
                // Cannot read our own data: the node is unhealthy; retried on restart.
                tracing::error!(invocation_id = %id, error = %e, had_copy = loaded.is_some(), "cannot load invocation");
                act.ended(id, ctx);
            }
        }));
    }

    fn start_attempt(&mut self, mut inv: Invocation, ctx: &mut Context<Self>) {
        let id = inv.id;
        if !self.node.owns(id.partition()) {
            self.held.remove(&id);
            return tracing::debug!(invocation_id = %id, "invocation.moved");
        }
        if inv.record.status == InvocationStatus::Suspended && !inv.can_resume() {
            // Recovered while suspended: wait for a completion without replaying it.
            self.held.insert(id, Phase::Suspended(inv));
            return;
        }
        let Some(endpoint) = self.node.schema().endpoint_of(&inv.record.deployment_id) else {
            let failure = Failure {
                code: codes::PROTOCOL_VIOLATION,
                message: format!("deployment {} is no longer registered", inv.record.deployment_id),
            };
            return self.end_with(inv, InvocationStatus::Failed, failure, None, ctx);
        };
        let (tx, signals) = tokio::sync::mpsc::channel(SIGNALS_CAPACITY);
        self.held.insert(id, Phase::Running(tx));
        inv.record.attempts += 1;
        self.node.live().set(id, live(&inv, InvocationStatus::Running));
        let state = self.state.clone();
        let attempt = run_attempt(self.node.clone(), inv, endpoint, state, signals);
        self.spawn_then(ctx, attempt, |act, ran, ctx| act.attempt_ended(ran, ctx));
    }

    fn attempt_ended(&mut self, ran: Ran, ctx: &mut Context<Self>) {
        let Ran {
            inv,
            outcome,
            caller_message,
        } = ran;
        let id = inv.id;
        self.held.remove(&id);
        match outcome {
            AttemptOutcome::Completed(output) => {
                tracing::debug!(invocation_id = %id, attempts = inv.record.attempts, "invocation.completed");
                self.node.finished(id, &output);
                self.node.deliver_in_background(caller_message.into_iter().collect());
                self.ended(id, ctx);
            }
            AttemptOutcome::Fatal(failure) => self.end_with(inv, InvocationStatus::Failed, failure, None, ctx),
            AttemptOutcome::Killed(reply) => self.end_with(inv, InvocationStatus::Killed, killed(), Some(reply), ctx),
            AttemptOutcome::Suspended(waiting_on) => self.suspend(inv, waiting_on, ctx),
            // Its partition moved away mid-attempt (commits refused): the new owner replays it,
            // and this actor is being evicted.
            AttemptOutcome::Retryable(_) if !self.node.owns(id.partition()) => {
                tracing::debug!(invocation_id = %id, "invocation.moved");
            }
            AttemptOutcome::Retryable(error) => self.back_off(inv, error, ctx),
        }
    }

    /// Records the suspension — unless one of `waiting_on` was completed meanwhile, or a cancel
    /// landed that the attempt did not see: then the next attempt starts at once.
    fn suspend(&mut self, mut inv: Invocation, waiting_on: Vec<u32>, ctx: &mut Context<Self>) {
        let id = inv.id;
        self.held.insert(id, Phase::Starting);
        let node = self.node.clone();
        let deciding = async move {
            // Unwritten, nothing can have completed one of its entries: none of them is stored.
            if !inv.unwritten {
                match super::host::load(node.store(), id).await {
                    Ok(Some(fresh)) => inv.journal = fresh.journal,
                    Ok(None) => return (inv, None),
                    Err(e) => tracing::warn!(invocation_id = %id, error = %e, "cannot refresh journal"),
                }
            }
            let Some(record) = crate::core::attempt::suspended(&inv.record, &inv.journal, waiting_on, now_ms()) else {
                return (inv, Some(false));
            };
            inv.record = record;
            let mut batch = inv.unwritten_creation();
            batch.put_invocation(&id, &inv.record);
            match node.store().log.append_retrying(batch).await {
                Ok(()) => inv.unwritten = false,
                Err(e) => tracing::warn!(invocation_id = %id, error = %e, "could not record the suspension"),
            }
            (inv, Some(true))
        };
        ctx.wait(
            deciding
                .into_actor(self)
                .map(move |(inv, suspended), act, ctx| match suspended {
                    None => act.ended(id, ctx),
                    Some(false) => act.start_attempt(inv, ctx),
                    Some(true) => {
                        tracing::debug!(invocation_id = %id, "invocation.suspended");
                        act.node.live().set(id, live(&inv, InvocationStatus::Suspended));
                        act.held.insert(id, Phase::Suspended(inv));
                    }
                }),
        );
    }

    /// Records a failed attempt and starts the next after its back-off, or gives up.
    fn back_off(&mut self, mut inv: Invocation, error: String, ctx: &mut Context<Self>) {
        let id = inv.id;
        // The first line: the stack trace after it is kept in `lastError`, not in the log.
        let first = error.lines().next().unwrap_or_default();
        tracing::warn!(invocation_id = %id, attempt = inv.record.attempts, error = first, "invocation.attempt_failed");
        let node = &self.node;
        let policy = node
            .schema()
            .retry_policy(&inv.record.deployment_id, &inv.record.service, &inv.record.handler)
            .unwrap_or_default();
        let max_attempts = policy.max_attempts.unwrap_or(node.config().retry_max_attempts);
        let delay =
            node.config()
                .retry_delay_with(inv.record.attempts, policy.initial_interval_ms, policy.max_interval_ms);
        match crate::core::attempt::failed(&inv.record, error, now_ms(), delay.as_millis() as u64, max_attempts) {
            Retry::GiveUp(failure) => return self.end_with(inv, InvocationStatus::Failed, failure, None, ctx),
            Retry::BackOff(record) => inv.record = *record,
        }
        node.live().set(id, live(&inv, InvocationStatus::BackingOff));
        self.held.insert(id, Phase::Starting);
        let node = node.clone();
        let recording = async move {
            let mut batch = inv.unwritten_creation();
            batch.put_invocation(&id, &inv.record);
            match node.store().log.append_retrying(batch).await {
                Ok(()) => inv.unwritten = false,
                Err(e) => tracing::warn!(error = %e, "could not record the failed attempt"),
            }
            inv
        };
        ctx.wait(recording.into_actor(self).map(move |inv, act, ctx| {
            act.held.insert(id, Phase::BackingOff(inv));
            ctx.run_later(delay, move |act, ctx| {
                act.in_order(ctx, move |act, ctx| {
                    // Killed meanwhile, or already resumed: nothing to do.
                    if let Some(Phase::BackingOff(inv)) = act.held.remove(&id) {
                        act.begin(id, Some(inv), ctx);
                    }
                })
            });
        }));
    }

    /// Ends `inv` for good with `failure` and `status` (durably), tells its waiters and its
    /// caller, and answers `reply` (a kill) once the end is durable.
    pub(super) fn end_with(
        &mut self,
        inv: Invocation,
        status: InvocationStatus,
        failure: Failure,
        reply: Option<tokio::sync::oneshot::Sender<ControlAnswer>>,
        ctx: &mut Context<Self>,
    ) {
        let id = inv.id;
        tracing::warn!(invocation_id = %id, code = failure.code, reason = %failure.message, status = status.as_str(), "invocation.failed");
        self.held.insert(id, Phase::Starting);
        let output = Output::Failure(failure);
        let node = self.node.clone();
        let ending = async move {
            let mut record = inv.record.clone();
            if let Output::Failure(f) = &output {
                record.last_error = Some(f.message.clone());
            }
            let mut batch = inv.unwritten_creation();
            let message = node.finish_writes(&id, &record, status, &output, &mut batch);
            match node.store().log.append_retrying(batch).await {
                Ok(()) => Some((output, message)),
                Err(e) => {
                    tracing::error!(invocation_id = %id, error = %e, "could not record the end of an invocation");
                    None
                }
            }
        };
        ctx.wait(ending.into_actor(self).map(move |ended, act, ctx| {
            if let Some((output, message)) = ended {
                act.node.finished(id, &output);
                if let Some(reply) = reply {
                    let _ = reply.send(ControlAnswer::Done);
                }
                act.node.deliver_in_background(message.into_iter().collect());
            }
            act.ended(id, ctx);
        }));
    }
}

pub(super) fn killed() -> Failure {
    Failure {
        code: codes::KILLED,
        message: "killed".into(),
    }
}

fn live(inv: &Invocation, status: InvocationStatus) -> LiveStatus {
    LiveStatus {
        status,
        attempts: inv.record.attempts,
        last_error: inv.record.last_error.clone(),
        next_retry_at_ms: inv
            .record
            .next_retry_at_ms
            .filter(|_| status == InvocationStatus::BackingOff),
    }
}

/// Runs one attempt of `inv` against `endpoint`. Whichever of its record writes comes first
/// carries an unwritten creation; a cancel it records is reflected in the returned record.
async fn run_attempt(
    node: Arc<dyn OwnerHost>,
    mut inv: Invocation,
    endpoint: String,
    state: Option<Arc<StateCache>>,
    signals: tokio::sync::mpsc::Receiver<crate::invoker::AttemptSignal>,
) -> Ran {
    let id = inv.id;
    let record = inv.record.clone();
    let running = crate::core::attempt::running(&inv.record, now_ms());
    let creation = Mutex::new(inv.unwritten.then(|| inv.creation_batch()));
    let on_first_commit = |batch: &mut WriteBatch| {
        Invocation::written_with(&creation, batch);
        batch.put_invocation(&id, &running)
    };
    let cancel_recorded = AtomicBool::new(false);
    let mut cancelled_running = running.clone();
    cancelled_running.cancel_requested = true;
    let on_cancel = |batch: &mut WriteBatch| {
        Invocation::written_with(&creation, batch);
        cancel_recorded.store(true, Ordering::Relaxed);
        batch.put_invocation(&id, &cancelled_running)
    };
    let caller_message: Mutex<Option<(Vec<u8>, OutboxMessage)>> = Mutex::new(None);
    let on_output = |batch: &mut WriteBatch, output: &Output| {
        *caller_message.lock().expect("caller message lock") =
            node.finish_writes(&id, &record, InvocationStatus::Completed, output, batch);
    };
    let outcome = Attempt {
        host: node.clone(),
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
    inv.record.cancel_requested |= cancel_recorded.load(Ordering::Relaxed);
    let caller_message = caller_message.lock().expect("caller message lock").take();
    Ran {
        inv,
        outcome,
        caller_message,
    }
}
