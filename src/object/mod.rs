//! One actix actor per active virtual object (or workflow): it owns the object's inbox queue
//! and its committed state cache, runs exclusive invocations one at a time in inbox order, and
//! runs shared invocations concurrently on snapshots of state.
//!
//! Invariant: at most one exclusive invocation of an object runs (or is suspended) at a time:
//! the actor is the only place that starts them, and the registry keeps one actor per object.
//! Boundary: the actor holds nothing that storage does not also hold, except ingress calls
//! not written yet (`Invocation::unwritten`: nothing acknowledged them); it can be stopped at
//! any time it is idle and re-created from storage.

mod registry;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

pub use registry::{ActorHandle, ObjectRegistry, SubmitError};

use crate::ids::{InvocationId, ObjectId};
use crate::invocation::{drive, DriveEnd, Invocation};
use crate::invoker::StateCache;
use crate::node::Node;
use crate::storage::{InvocationStatus, StorageError, WriteBatch};

/// Messages an object actor handles.
pub enum ObjectMsg {
    /// Persist a new invocation of this object (with `extra` writes in the same batch), then
    /// run it (exclusive: through the inbox).
    Submit {
        invocation: Invocation,
        extra: WriteBatch,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    /// Run an already-durable shared invocation again (recovery, resumption).
    ResumeShared(Invocation),
    /// The suspended exclusive invocation at the head of the inbox can go on.
    Resume(InvocationId),
    /// The invocation was ended elsewhere (killed while queued or suspended): drop it.
    Forget(InvocationId),
    /// The object's partition moved to another node: stop now, dropping running attempts
    /// (they can no longer commit; the new owner replays them).
    Evict,
}

impl Message for ObjectMsg {
    type Result = ();
}

struct Queued {
    id: InvocationId,
    /// The invocation, when this actor created it (saves a read); loaded from storage otherwise.
    loaded: Option<Invocation>,
    /// Its creation batch is on disk, or it need not be before it runs (`unwritten`). Entries
    /// join the queue in mailbox order, before that.
    durable: bool,
}

pub struct ObjectActor {
    node: Arc<Node>,
    object: ObjectId,
    handle: Arc<ActorHandle>,
    state: Option<Arc<StateCache>>,
    queue: VecDeque<Queued>,
    running_exclusive: bool,
    /// The head of the queue is suspended: it keeps the lock; nothing runs until `Resume`.
    head_suspended: bool,
    running_shared: usize,
    next_seq: u64,
    /// Bytes of the inputs of queued invocations held in `Queued::loaded` (capped by
    /// `max_inbox_bytes_per_object`); those read back from storage cost nothing until they run.
    held_bytes: u64,
    idle_since: Instant,
}

impl ObjectActor {
    fn new(node: Arc<Node>, object: ObjectId, handle: Arc<ActorHandle>) -> Self {
        Self {
            node,
            object,
            handle,
            state: None,
            queue: VecDeque::new(),
            running_exclusive: false,
            head_suspended: false,
            running_shared: 0,
            next_seq: 0,
            held_bytes: 0,
            idle_since: Instant::now(),
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.running_exclusive && self.running_shared == 0
    }

    fn state(&self) -> Arc<StateCache> {
        self.state.clone().expect("state is loaded in started()")
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

    fn run_next(&mut self, ctx: &mut Context<Self>) {
        if self.running_exclusive || self.head_suspended {
            return;
        }
        let Some(head) = self.queue.front_mut().filter(|h| h.durable) else {
            self.idle_since = Instant::now();
            return;
        };
        self.running_exclusive = true;
        let id = head.id;
        let loaded = head.loaded.take();
        self.held_bytes -= loaded.as_ref().map_or(0, input_bytes);
        let node = self.node.clone();
        let state = self.state();
        let fut = async move {
            let invocation = match loaded {
                Some(inv) => inv,
                None => match crate::control::load(&node, id).await {
                    Ok(Some(inv)) if !inv.record.status.is_finished() => inv,
                    Ok(_) => return DriveEnd::Finished,
                    Err(e) => {
                        // Cannot read our own data: the node is unhealthy; retried on restart.
                        tracing::error!(invocation_id = %id, error = %e, "cannot load invocation");
                        return DriveEnd::Finished;
                    }
                },
            };
            let mut invocation = invocation;
            invocation.record.cancel_requested |= node.cancel_requests.lock().expect("cancel lock").contains(&id);
            if invocation.record.status == InvocationStatus::Suspended && !invocation.can_resume() {
                // Recovered while suspended: wait for a completion without replaying it.
                let _guard = node.stripe(&id).lock().await;
                node.suspended
                    .lock()
                    .expect("suspended lock")
                    .insert(id, invocation.record.waiting_on.clone());
                return DriveEnd::Suspended;
            }
            drive(node, invocation, Some(state)).await
        };
        ctx.spawn(fut.into_actor(self).map(|end, act, ctx| {
            if end == DriveEnd::Moved {
                return; // the partition moved away; this actor is being evicted
            }
            act.running_exclusive = false;
            if end == DriveEnd::Suspended {
                act.head_suspended = true;
                return;
            }
            act.queue.pop_front();
            act.run_next(ctx);
        }));
    }

    fn resume(&mut self, id: InvocationId, ctx: &mut Context<Self>) {
        if self.head_suspended && self.queue.front().is_some_and(|h| h.id == id) {
            self.head_suspended = false;
            self.run_next(ctx);
        }
    }

    fn forget(&mut self, id: InvocationId, ctx: &mut Context<Self>) {
        let head = self.queue.front().is_some_and(|h| h.id == id);
        if head && self.running_exclusive {
            return; // its driver sees the kill and returns
        }
        self.dequeue(id);
        self.node.killed.lock().expect("killed lock").remove(&id);
        if head {
            self.head_suspended = false;
            self.run_next(ctx);
        }
    }

    fn run_shared(&mut self, invocation: Invocation, ctx: &mut Context<Self>) {
        self.running_shared += 1;
        let fut = drive(self.node.clone(), invocation, Some(self.state()));
        ctx.spawn(fut.into_actor(self).map(|_, act, _| {
            act.running_shared -= 1;
            act.idle_since = Instant::now();
        }));
    }

    fn submit(
        &mut self,
        mut invocation: Invocation,
        extra: WriteBatch,
        reply: oneshot::Sender<Result<(), SubmitError>>,
        ctx: &mut Context<Self>,
    ) {
        let exclusive = invocation.record.kind.is_exclusive();
        if exclusive {
            if self.queue.len() >= self.node.config.max_inbox_per_object {
                let _ = reply.send(Err(SubmitError::InboxFull(self.object.clone())));
                return;
            }
            let bytes = input_bytes(&invocation);
            if self.held_bytes + bytes > self.node.config.max_inbox_bytes_per_object {
                let _ = reply.send(Err(SubmitError::InboxBytesFull(self.object.clone())));
                return;
            }
            self.held_bytes += bytes;
            invocation.record.inbox_seq = Some(self.next_seq);
            self.next_seq += 1;
        }
        let id = invocation.id;
        if invocation.unwritten {
            debug_assert!(extra.is_empty(), "only ingress calls are created unwritten");
            // Written with its attempt's first commit; its caller waits for the output.
            let _ = reply.send(Ok(()));
            if exclusive {
                self.queue.push_back(Queued {
                    id,
                    loaded: Some(invocation),
                    durable: true,
                });
                self.run_next(ctx);
            } else {
                self.run_shared(invocation, ctx);
            }
            return;
        }
        let mut batch = invocation.creation_batch();
        batch.append(extra);
        let commit = self.node.store.writer.commit(batch);
        let shared = if exclusive {
            self.queue.push_back(Queued {
                id,
                loaded: Some(invocation),
                durable: false,
            });
            None
        } else {
            self.running_shared += 1; // keeps the actor from passivating before it runs
            Some(invocation)
        };
        ctx.spawn(
            commit
                .into_actor(self)
                .map(move |result: Result<(), StorageError>, act, ctx| {
                    if shared.is_some() {
                        act.running_shared -= 1;
                    }
                    match result {
                        Err(e) => {
                            act.dequeue(id);
                            let _ = reply.send(Err(SubmitError::Storage(e)));
                        }
                        Ok(()) => {
                            let _ = reply.send(Ok(()));
                            match shared {
                                Some(invocation) => act.run_shared(invocation, ctx),
                                None => {
                                    if let Some(q) = act.queue.iter_mut().find(|q| q.id == id) {
                                        q.durable = true;
                                    }
                                    act.run_next(ctx);
                                }
                            }
                        }
                    }
                }),
        );
    }
}

impl Actor for ObjectActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(registry::MAILBOX_CAPACITY);
        // Activation: rebuild the queue and the state cache from storage before any message.
        let store = self.node.store.clone();
        let object = self.object.clone();
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
                tracing::error!(object = %act.object, error = %e, "cannot activate object");
                ctx.stop();
            }
        }));
        let idle = Duration::from_millis(self.node.config.object_idle_ms);
        ctx.run_interval(idle.max(Duration::from_millis(100)) / 2, move |act, ctx| {
            if act.is_idle()
                && act.idle_since.elapsed() >= idle
                && act.node.objects.try_passivate(&act.object, &act.handle)
            {
                tracing::trace!(object = %act.object, "object.passivate");
                ctx.stop();
            }
        });
    }
}

impl Handler<ObjectMsg> for ObjectActor {
    type Result = ();

    fn handle(&mut self, msg: ObjectMsg, ctx: &mut Context<Self>) {
        self.handle.pending.fetch_sub(1, Ordering::AcqRel);
        match msg {
            ObjectMsg::Submit {
                invocation,
                extra,
                reply,
            } => self.submit(invocation, extra, reply, ctx),
            ObjectMsg::ResumeShared(invocation) => self.run_shared(invocation, ctx),
            ObjectMsg::Resume(id) => self.resume(id, ctx),
            ObjectMsg::Forget(id) => self.forget(id, ctx),
            ObjectMsg::Evict => {
                self.queue.clear();
                self.held_bytes = 0;
                ctx.stop();
            }
        }
    }
}

/// Bytes of an invocation's input, as held in memory while it waits in the queue.
fn input_bytes(invocation: &Invocation) -> u64 {
    match invocation.journal.first() {
        Some(crate::journal::Entry::Input { value }) => value.len() as u64,
        _ => 0,
    }
}
