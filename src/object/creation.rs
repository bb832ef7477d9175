//! Creating invocations in their owner: the ingress's `Submit`, a durable message's `Deliver`,
//! a fired timer's activation. A creation that must look its key up first holds the key in
//! `creating` until it is settled, so duplicates of one key are decided one after another.

use actix::prelude::*;

use super::{input_bytes, ObjectActor, ObjectMsg, Phase, Queued, SubmitError};
use crate::core::{Command, Transition};
use crate::ids::InvocationId;
use crate::invocation::Invocation;
use crate::storage::{
    keys, HandlerKind, InvocationStatus, InvokeMessage, StorageError, Table, TimerRecord, WriteBatch,
};

/// How a creation ended for its requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Created now (durable, or `unwritten` and running).
    New,
    /// It existed already (same idempotency key, workflow key or message id).
    Existing(InvocationId),
}

/// Answers the requester of a creation; dropped unanswered if the actor stops first.
pub type Reply = Box<dyn FnOnce(Result<Created, SubmitError>) + Send>;

impl ObjectActor {
    pub(super) fn submit(
        &mut self,
        invocation: Invocation,
        extra: WriteBatch,
        lookup: bool,
        admitted: bool,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) {
        if !lookup {
            return self.create(invocation, extra, admitted, reply, None, ctx);
        }
        // A workflow key runs once, whatever idempotency key each caller sends.
        let by_row = invocation
            .idempotency_row()
            .filter(|_| invocation.record.kind != HandlerKind::Workflow);
        // Keyed by id: an idempotency key's id is derived from it, so a call or send from a
        // handler with the same key (`deliver`) waits here too.
        let key = invocation.id.0.to_vec();
        if let Some(waiting) = self.creating.get_mut(&key) {
            waiting.push(ObjectMsg::Submit {
                invocation,
                extra,
                lookup,
                admitted,
                reply,
            });
            return;
        }
        self.creating.insert(key.clone(), Vec::new());
        let (store, id) = (self.node.store().clone(), invocation.id);
        let look_up = async move {
            tokio::task::spawn_blocking(move || -> Result<Option<InvocationId>, StorageError> {
                Ok(match by_row {
                    Some(row) => store.idempotency(&row)?.map(|r| r.invocation_id),
                    None => store.invocation(&id)?.map(|_| id),
                })
            })
            .await
            .map_err(|e| StorageError::Io(e.to_string()))?
        };
        self.spawn_then(ctx, look_up, move |act, found, ctx| match found {
            Ok(None) => act.create(invocation, extra, admitted, reply, Some(key), ctx),
            Ok(Some(existing)) => {
                reply(Ok(Created::Existing(existing)));
                act.settle(key, ctx);
            }
            Err(e) => {
                reply(Err(e.into()));
                act.settle(key, ctx);
            }
        });
    }

    /// A durable message creating an invocation: applied once (`core::invoke` drops a message
    /// sent again, answers a second caller of a workflow key, refuses a call cycle).
    pub(super) fn deliver(&mut self, message: InvokeMessage, redelivery: bool, reply: Reply, ctx: &mut Context<Self>) {
        let (id, partition) = (message.id, message.id.partition());
        let command = Command::Invoke { message, redelivery };
        if !command.reads_storage() {
            // Decided here, without a read or a thread hop.
            let decided = crate::core::apply(self.node.store(), command).map_err(|e| StorageError::Io(e.0));
            return self.delivered(id, partition, decided, reply, None, ctx);
        }
        let key = id.0.to_vec();
        if let Some(waiting) = self.creating.get_mut(&key) {
            let Command::Invoke { message, redelivery } = command else {
                unreachable!("built above")
            };
            waiting.push(ObjectMsg::Deliver {
                message,
                redelivery,
                reply,
            });
            return;
        }
        self.creating.insert(key.clone(), Vec::new());
        let node = self.node.clone();
        let decide = async move { node.decide(command).await };
        self.spawn_then(ctx, decide, move |act, decided, ctx| {
            act.delivered(id, partition, decided, reply, Some(key), ctx)
        });
    }

    /// Carries out what the core decided about a delivered invocation.
    fn delivered(
        &mut self,
        id: InvocationId,
        partition: u16,
        decided: Result<Transition, StorageError>,
        reply: Reply,
        settles: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) {
        let transition = match decided {
            Ok(Transition {
                create: Some(message), ..
            }) => return self.create(message.into_invocation(), WriteBatch::new(), true, reply, settles, ctx),
            Ok(transition) => transition,
            Err(e) => {
                tracing::error!(error = %e, "cannot check for a duplicate; retried on restart");
                reply(Err(e.into()));
                settle_if(self, settles, ctx);
                return;
            }
        };
        // A duplicate, a second caller of a workflow answered from its record, a refused cycle.
        let node = self.node.clone();
        let mut batch = WriteBatch::new();
        let staged = node.stage_writes(&mut batch, partition, transition.writes);
        settle_if(self, settles, ctx);
        actix_rt::spawn(async move {
            match node.store().log.append_retrying(batch).await {
                Ok(()) => {
                    reply(Ok(Created::Existing(id)));
                    node.deliver_all(staged).await;
                }
                Err(e) => reply(Err(e.into())),
            }
        });
    }

    /// The end of a look-up or creation of `key`: handle what waited for it, in order.
    fn settle(&mut self, key: Vec<u8>, ctx: &mut Context<Self>) {
        for msg in self.creating.remove(&key).unwrap_or_default() {
            self.dispatch(msg, ctx);
        }
    }

    /// Persists a new invocation (with `extra`) and runs it — or, if it is scheduled for
    /// later, persists it with its timer. `settles`: the look-up key this creation ends.
    pub(super) fn create(
        &mut self,
        mut invocation: Invocation,
        extra: WriteBatch,
        admitted: bool,
        reply: Reply,
        settles: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) {
        let settle = move |act: &mut Self, ctx: &mut Context<Self>| settle_if(act, settles, ctx);
        let id = invocation.id;
        if invocation.record.status == InvocationStatus::Scheduled {
            let due = invocation.record.not_before_ms.unwrap_or(0);
            let timer_key = keys::timer(&id, due, u32::MAX);
            let timer = TimerRecord::Activate { invocation: id };
            let mut batch = invocation.creation_batch();
            batch.append(extra);
            batch.put(Table::Timers, timer_key.clone(), crate::storage::encode(&timer));
            self.committing += 1;
            let commit = self.node.store().log.append(batch);
            self.spawn_then(ctx, commit, move |act, result, ctx| {
                act.committing -= 1;
                match result {
                    Ok(()) => {
                        act.node.timers().register(timer_key, due, timer);
                        reply(Ok(Created::New));
                    }
                    Err(e) => reply(Err(e.into())),
                }
                settle(act, ctx);
            });
            return;
        }
        if !self.node.admit(admitted) {
            reply(Err(SubmitError::TooManyInvocations));
            return settle(self, ctx);
        }
        let exclusive = invocation.record.kind.is_exclusive();
        if exclusive {
            let refused = if self.queue.len() >= self.node.config().max_inbox_per_object {
                Some(SubmitError::InboxFull(self.owner.clone()))
            } else if self.held_bytes + input_bytes(&invocation) > self.node.config().max_inbox_bytes_per_object {
                Some(SubmitError::InboxBytesFull(self.owner.clone()))
            } else {
                None
            };
            if let Some(refused) = refused {
                self.node.release_inflight();
                reply(Err(refused));
                return settle(self, ctx);
            }
            self.held_bytes += input_bytes(&invocation);
            invocation.record.inbox_seq = Some(self.next_seq);
            self.next_seq += 1;
        }
        if invocation.unwritten {
            debug_assert!(extra.is_empty(), "only ingress calls are created unwritten");
            // Written with its attempt's first commit; its caller waits for the output.
            reply(Ok(Created::New));
            if exclusive {
                self.queue.push_back(Queued {
                    id,
                    loaded: Some(invocation),
                    durable: true,
                });
                self.run_next(ctx);
            } else {
                self.begin(id, Some(invocation), ctx);
            }
            return settle(self, ctx);
        }
        let mut batch = invocation.creation_batch();
        batch.append(extra);
        let commit = self.node.store().log.append(batch);
        if exclusive {
            self.queue.push_back(Queued {
                id,
                loaded: Some(invocation),
                durable: false,
            });
        } else {
            self.held.insert(id, Phase::Creating(invocation));
        }
        self.spawn_then(ctx, commit, move |act, result: Result<(), StorageError>, ctx| {
            match result {
                Err(e) => {
                    act.node.release_inflight();
                    act.held.remove(&id);
                    act.dequeue(id);
                    reply(Err(SubmitError::Storage(e)));
                }
                Ok(()) => {
                    reply(Ok(Created::New));
                    if exclusive {
                        // Killed meanwhile: no longer queued.
                        if let Some(q) = act.queue.iter_mut().find(|q| q.id == id) {
                            q.durable = true;
                        }
                        act.run_next(ctx);
                    } else if let Some(Phase::Creating(invocation)) = act.held.remove(&id) {
                        act.begin(id, Some(invocation), ctx);
                    }
                }
            }
            settle(act, ctx);
        });
    }
}

/// Settles `settles`, the look-up key a creation ends, if it had one.
fn settle_if(act: &mut ObjectActor, settles: Option<Vec<u8>>, ctx: &mut Context<ObjectActor>) {
    if let Some(key) = settles {
        act.settle(key, ctx);
    }
}
