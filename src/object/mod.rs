//! The owners of invocations: one actix actor per virtual object (or workflow), holding all of
//! its invocations, and one per stateless invocation. Every command for an invocation — its
//! creation, a completion, a cancel or kill, a timer that activates it, a promise operation,
//! the end of an attempt — is a message to its owner, so it is serialised with the
//! invocation's own progress. No lock or table outside the actor decides any of it.
//!
//! How the actor serialises: a command that reads storage and then writes (a completion, a
//! control with no attempt running, a suspension, an end, an activation) runs under
//! `ctx.wait` — no other message of this owner is handled until its batch is durable. A plain
//! creation pipelines (its commit shares a group commit with others); one that must first look
//! its key up (idempotency key, workflow, redelivery) holds that key in `creating`, and the next
//! command for the same key waits there until the first is settled.
//!
//! Invariants: at most one exclusive invocation of an object runs (or is suspended) at a time:
//! the actor is the only place that starts them, and the registry keeps one actor per owner.
//! An invocation's record is written by its owner, or — while an attempt runs — by the attempt.
//! Boundary: the actor holds nothing that storage does not also hold, except ingress calls
//! not written yet (`Invocation::unwritten`: nothing acknowledged them); it can be stopped at
//! any time it is idle and re-created from storage.

mod commands;
mod creation;
mod host;
mod lifecycle;
mod ordering;
mod phase;
mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

pub use commands::{CompleteError, ControlError};
pub use creation::{Created, Reply};
pub use host::{load, OwnerHost, Staged};
use phase::Phase;
pub use registry::{runs_owners_here, ActorHandle, ObjectRegistry, Owner, SubmitError};

use crate::core::control::Control;
use crate::core::Completer;
use crate::ids::InvocationId;
use crate::invocation::Invocation;
use crate::invoker::StateCache;
use crate::journal::CompletionResult;
use crate::storage::{InvokeMessage, PromiseMessage, StorageError, WriteBatch};

/// Messages an owner handles.
pub enum ObjectMsg {
    /// Create an invocation of this owner (with `extra` writes in its batch), then run it.
    /// `lookup`: find an existing one by its idempotency row (or workflow id) first.
    Submit {
        invocation: Invocation,
        extra: WriteBatch,
        lookup: bool,
        /// Carried by a durable message or timer: never refused by the in-flight limit.
        admitted: bool,
        reply: Reply,
    },
    /// A durable message creating an invocation (a call, a send), applied once.
    Deliver {
        message: InvokeMessage,
        redelivery: bool,
        reply: Reply,
    },
    /// Complete entry `index` of `target` (once), committing `extra` with it; then wake it.
    Complete {
        target: InvocationId,
        index: u32,
        result: CompletionResult,
        extra: WriteBatch,
        by: Completer,
        reply: oneshot::Sender<Result<(), CompleteError>>,
    },
    /// Get, peek or complete a durable promise of this workflow.
    Promise {
        message: PromiseMessage,
        reply: oneshot::Sender<bool>,
    },
    /// Cancel or kill an invocation of this owner.
    Control {
        id: InvocationId,
        control: Control,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// A scheduled invocation's timer (row `timer_key`) fired.
    Activate { id: InvocationId, timer_key: Vec<u8> },
    /// Resume an unfinished invocation from storage (recovery; not for exclusive ones, which
    /// resume through the inbox).
    Recover(InvocationId),
    /// The owner's partition moved to another node: stop now, dropping running attempts
    /// (they can no longer commit; the new owner replays them).
    Evict,
}

impl Message for ObjectMsg {
    type Result = ();
}

/// An exclusive invocation waiting in the inbox (the head runs).
struct Queued {
    id: InvocationId,
    /// The invocation, when this actor created it (saves a read); loaded from storage otherwise.
    loaded: Option<Invocation>,
    /// Its creation batch is on disk, or it need not be before it runs (`unwritten`). Entries
    /// join the queue in mailbox order, before that.
    durable: bool,
}

pub struct ObjectActor {
    node: Arc<dyn OwnerHost>,
    owner: Owner,
    handle: Arc<ActorHandle>,
    /// Committed object state (objects only).
    state: Option<Arc<StateCache>>,
    queue: VecDeque<Queued>,
    held: HashMap<InvocationId, Phase>,
    /// Keys (idempotency row or invocation id) of creations being looked up or committed, with
    /// the commands for the same key that arrived meanwhile.
    creating: HashMap<Vec<u8>, Vec<ObjectMsg>>,
    /// Creation commits in flight that `held` and `queue` do not show (scheduled invocations).
    committing: usize,
    next_seq: u64,
    /// Bytes of the inputs of queued invocations held in `Queued::loaded` (capped by
    /// `max_inbox_bytes_per_object`); those read back from storage cost nothing until they run.
    held_bytes: u64,
    idle_since: Instant,
}

impl ObjectActor {
    fn new(node: Arc<dyn OwnerHost>, owner: Owner, handle: Arc<ActorHandle>) -> Self {
        Self {
            node,
            owner,
            handle,
            state: None,
            queue: VecDeque::new(),
            held: HashMap::new(),
            creating: HashMap::new(),
            committing: 0,
            next_seq: 0,
            held_bytes: 0,
            idle_since: Instant::now(),
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.held.is_empty() && self.creating.is_empty() && self.committing == 0
    }

    /// Drops `id` from the queue, and its input from `held_bytes`.
    fn dequeue(&mut self, id: InvocationId) {
        self.queue.retain(|q| q.id != id);
        self.held_bytes = self
            .queue
            .iter()
            .filter_map(|q| q.loaded.as_ref())
            .map(input_bytes)
            .sum();
    }

    /// Starts the head of the queue if nothing holds the object's lock.
    fn run_next(&mut self, ctx: &mut Context<Self>) {
        let Some(head) = self.queue.front_mut().filter(|h| h.durable) else {
            self.idle_since = Instant::now();
            return;
        };
        if self.held.contains_key(&head.id) {
            return; // running, starting, backing off or suspended: it keeps the lock
        }
        let id = head.id;
        let loaded = head.loaded.take();
        self.held_bytes -= loaded.as_ref().map_or(0, input_bytes);
        self.begin(id, loaded, ctx);
    }

    /// `id` is finished (or gone): forget it, let the next exclusive invocation run, and
    /// passivate a stateless owner that has nothing left.
    fn ended(&mut self, id: InvocationId, ctx: &mut Context<Self>) {
        self.held.remove(&id);
        if self.queue.front().is_some_and(|h| h.id == id && h.loaded.is_none()) {
            // The usual end: the head that ran; `run_next` took its input off `held_bytes`.
            self.queue.pop_front();
        } else {
            self.dequeue(id); // ended before it ran (killed), or not queued at all
        }
        self.run_next(ctx);
        if matches!(self.owner, Owner::Stateless(_)) && self.is_idle() {
            self.passivate(ctx);
        }
    }

    fn passivate(&mut self, ctx: &mut Context<Self>) {
        if self.node.owners().try_passivate(&self.owner, &self.handle) {
            tracing::trace!(owner = %self.owner, "object.passivate");
            ctx.stop();
        }
    }

    fn spawn_then<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        fut: impl std::future::Future<Output = T> + 'static,
        then: impl FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
    ) {
        ordering::spawn_then(self, ctx, fut, then);
    }

    fn in_order(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut Self, &mut Context<Self>) + 'static) {
        ordering::in_order(self, ctx, f);
    }

    /// Handles a message (also one that waited in `creating`).
    fn dispatch(&mut self, msg: ObjectMsg, ctx: &mut Context<Self>) {
        match msg {
            ObjectMsg::Submit {
                invocation,
                extra,
                lookup,
                admitted,
                reply,
            } => self.submit(invocation, extra, lookup, admitted, reply, ctx),
            ObjectMsg::Deliver {
                message,
                redelivery,
                reply,
            } => self.deliver(message, redelivery, reply, ctx),
            ObjectMsg::Complete {
                target,
                index,
                result,
                extra,
                by,
                reply,
            } => self.complete(target, index, result, extra, by, reply, ctx),
            ObjectMsg::Promise { message, reply } => self.promise(message, reply, ctx),
            ObjectMsg::Control { id, control, reply } => self.control(id, control, reply, ctx),
            ObjectMsg::Activate { id, timer_key } => self.activate(id, timer_key, ctx),
            ObjectMsg::Recover(id) => {
                if !self.held.contains_key(&id) {
                    self.begin(id, None, ctx);
                }
            }
            ObjectMsg::Evict => {
                self.queue.clear();
                self.held.clear();
                self.held_bytes = 0;
                ctx.stop();
            }
        }
    }
}

impl Actor for ObjectActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(registry::MAILBOX_CAPACITY);
        let Owner::Object(object) = self.owner.clone() else {
            return; // a stateless invocation: no inbox, no state; it stops when it ends
        };
        // Activation: rebuild the queue and the state cache from storage before any message.
        let store = self.node.store().clone();
        let loading = async move {
            tokio::task::spawn_blocking(move || {
                Ok::<_, StorageError>((store.inbox(&object)?, store.object_state(&object)?))
            })
            .await
            .map_err(|e| StorageError::Io(e.to_string()))?
        };
        ctx.wait(loading.into_actor(self).map(|result, act, ctx| match result {
            Ok((inbox, state)) => {
                act.next_seq = inbox.last().map(|(seq, _)| seq + 1).unwrap_or(0);
                act.queue = inbox
                    .into_iter()
                    .map(|(_, id)| Queued {
                        id,
                        loaded: None,
                        durable: true,
                    })
                    .collect();
                act.state = Some(Arc::new(StateCache::new(state)));
                act.run_next(ctx);
            }
            Err(e) => {
                tracing::error!(owner = %act.owner, error = %e, "cannot activate object");
                ctx.stop();
            }
        }));
        let idle = Duration::from_millis(self.node.config().object_idle_ms);
        ctx.run_interval(idle.max(Duration::from_millis(100)) / 2, move |act, ctx| {
            act.in_order(ctx, move |act, ctx| {
                if act.is_idle() && act.idle_since.elapsed() >= idle {
                    act.passivate(ctx);
                }
            });
        });
    }
}

impl Handler<ObjectMsg> for ObjectActor {
    type Result = ();

    fn handle(&mut self, msg: ObjectMsg, ctx: &mut Context<Self>) {
        self.handle.pending.fetch_sub(1, Ordering::AcqRel);
        self.dispatch(msg, ctx);
    }
}

/// Bytes of an invocation's input, as held in memory while it waits in the queue.
fn input_bytes(invocation: &Invocation) -> u64 {
    match invocation.journal.first() {
        Some(crate::journal::Entry::Input { value }) => value.len() as u64,
        _ => 0,
    }
}
