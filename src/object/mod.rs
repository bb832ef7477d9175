//! One actix actor per active virtual object: it owns the object's inbox queue and its
//! committed state cache, runs exclusive invocations one at a time in inbox order, and runs
//! shared invocations concurrently on snapshots of state.
//!
//! Invariant: at most one exclusive invocation of an object runs at a time (the actor is the
//! only place that starts them, and the registry keeps one actor per object).
//! Boundary: the actor holds nothing that storage does not also hold; it can be stopped at
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
use crate::invocation::{drive, Invocation};
use crate::invoker::StateCache;
use crate::node::Node;
use crate::storage::{HandlerKind, StorageError};

/// Messages an object actor handles.
pub enum ObjectMsg {
    /// Persist a new invocation of this object, then run it (exclusive: through the inbox).
    Submit {
        invocation: Invocation,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    /// Run an already-durable shared invocation again (recovery).
    ResumeShared(Invocation),
}

impl Message for ObjectMsg {
    type Result = ();
}

struct Queued {
    id: InvocationId,
    /// The invocation, when this actor created it (saves a read); loaded from storage otherwise.
    loaded: Option<Invocation>,
}

pub struct ObjectActor {
    node: Arc<Node>,
    object: ObjectId,
    handle: Arc<ActorHandle>,
    state: Option<Arc<StateCache>>,
    queue: VecDeque<Queued>,
    /// Submissions whose creation batch is not yet durable (count towards the inbox limit).
    submitting: usize,
    running_exclusive: bool,
    running_shared: usize,
    next_seq: u64,
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
            submitting: 0,
            running_exclusive: false,
            running_shared: 0,
            next_seq: 0,
            idle_since: Instant::now(),
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.submitting == 0
            && !self.running_exclusive
            && self.running_shared == 0
    }

    fn state(&self) -> Arc<StateCache> {
        self.state.clone().expect("state is loaded in started()")
    }

    fn run_next(&mut self, ctx: &mut Context<Self>) {
        if self.running_exclusive {
            return;
        }
        let Some(head) = self.queue.front_mut() else {
            self.idle_since = Instant::now();
            return;
        };
        self.running_exclusive = true;
        let id = head.id;
        let loaded = head.loaded.take();
        let node = self.node.clone();
        let state = self.state();
        let fut = async move {
            let invocation = match loaded {
                Some(inv) => inv,
                None => match load(&node, id).await {
                    Ok(Some(inv)) => inv,
                    Ok(None) => return,
                    Err(e) => {
                        // Cannot read our own data: the node is unhealthy; leave it queued.
                        tracing::error!(invocation_id = %id, error = %e, "cannot load invocation");
                        return;
                    }
                },
            };
            drive(node, invocation, Some(state)).await;
        };
        ctx.spawn(fut.into_actor(self).map(|(), act, ctx| {
            act.running_exclusive = false;
            act.queue.pop_front();
            act.run_next(ctx);
        }));
    }

    fn run_shared(&mut self, invocation: Invocation, ctx: &mut Context<Self>) {
        self.running_shared += 1;
        let fut = drive(self.node.clone(), invocation, Some(self.state()));
        ctx.spawn(fut.into_actor(self).map(|(), act, _| {
            act.running_shared -= 1;
            act.idle_since = Instant::now();
        }));
    }

    fn submit(
        &mut self,
        mut invocation: Invocation,
        reply: oneshot::Sender<Result<(), SubmitError>>,
        ctx: &mut Context<Self>,
    ) {
        let exclusive = invocation.record.kind == HandlerKind::Exclusive;
        if exclusive {
            if self.queue.len() + self.submitting >= self.node.config.max_inbox_per_object {
                let _ = reply.send(Err(SubmitError::InboxFull(self.object.clone())));
                return;
            }
            invocation.record.inbox_seq = Some(self.next_seq);
            self.next_seq += 1;
        }
        self.submitting += 1;
        let commit = self.node.store.writer.commit(invocation.creation_batch());
        ctx.spawn(commit.into_actor(self).map(
            move |result: Result<(), StorageError>, act, ctx| {
                act.submitting -= 1;
                match result {
                    Err(e) => {
                        let _ = reply.send(Err(SubmitError::Storage(e)));
                    }
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                        if exclusive {
                            act.queue.push_back(Queued {
                                id: invocation.id,
                                loaded: Some(invocation),
                            });
                            act.run_next(ctx);
                        } else {
                            act.run_shared(invocation, ctx);
                        }
                    }
                }
            },
        ));
    }
}

async fn load(node: &Arc<Node>, id: InvocationId) -> Result<Option<Invocation>, StorageError> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || {
        let Some(record) = store.invocation(&id)? else {
            return Ok(None);
        };
        if record.status.is_finished() {
            return Ok(None);
        }
        let journal = store.journal(&id)?;
        Ok(Some(Invocation {
            id,
            record,
            journal,
        }))
    })
    .await
    .map_err(|e| StorageError::Io(e.to_string()))?
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
        ctx.wait(
            loading
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok((inbox, state)) => {
                        act.next_seq = inbox.last().map(|(seq, _)| seq + 1).unwrap_or(0);
                        act.queue = inbox
                            .into_iter()
                            .map(|(_, id)| Queued { id, loaded: None })
                            .collect();
                        act.state = Some(Arc::new(StateCache::new(state)));
                        act.run_next(ctx);
                    }
                    Err(e) => {
                        tracing::error!(object = %act.object, error = %e, "cannot activate object");
                        ctx.stop();
                    }
                }),
        );
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
            ObjectMsg::Submit { invocation, reply } => self.submit(invocation, reply, ctx),
            ObjectMsg::ResumeShared(invocation) => self.run_shared(invocation, ctx),
        }
    }
}
