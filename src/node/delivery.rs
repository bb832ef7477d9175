//! Delivery of outbox messages: creating invocations (calls, sends, delayed sends),
//! completing journal entries (call results, timers, awakeables) and durable promises.
//!
//! Invariant: a message takes effect exactly once. The receiver applies it in a batch of its
//! own partition (`core::apply` decides, dropping a duplicate); only then does the sender
//! delete the row that carried it, in a batch of *its* partition (`acknowledge`, riding with
//! the next group commit). A row still there after a crash is sent again as a redelivery and
//! recognised: a created invocation by its id (assigned by the sender, journaled with its
//! entry), a completion because its entry already has a result, a promise operation by its
//! waiter or completer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::core::Completer;
use crate::ids::InvocationId;
use crate::journal::CompletionResult;
use crate::node::attach::AttachTaken;
use crate::node::Node;
use crate::object::{CompleteError, ControlError};
use crate::object::{ObjectMsg, Owner, Staged, SubmitError};
use crate::placement::{client, Placement};
use crate::storage::{
    key_partition, InvokeMessage, OutboxMessage, PromiseMessage, StorageError, Table, TimerRecord, WriteBatch,
};

/// A completion message has taken effect (or never can: its entry is gone or already done).
fn delivered(result: Result<(), CompleteError>) -> bool {
    matches!(
        result,
        Ok(()) | Err(CompleteError::NotFound) | Err(CompleteError::AlreadyCompleted)
    )
}

/// Back-pressure a durable message waits out (its row stays durable meanwhile).
fn is_back_pressure(e: &SubmitError) -> bool {
    matches!(
        e,
        SubmitError::InboxFull(_)
            | SubmitError::InboxBytesFull(_)
            | SubmitError::MailboxFull(_)
            | SubmitError::Storage(StorageError::Overloaded)
    )
}

/// Sends a command to `owner` (built around its reply channel) until its mailbox takes it,
/// and waits for the answer. `None`: the owner stopped before answering.
async fn ask<T>(node: &Arc<Node>, owner: &Owner, msg: impl Fn(oneshot::Sender<T>) -> ObjectMsg) -> Option<T> {
    let mut delay = Duration::from_millis(10);
    loop {
        let (reply, answer) = oneshot::channel();
        match node.objects.send(&node.host(), owner, msg(reply)) {
            Ok(()) => return answer.await.ok(),
            Err(SubmitError::MailboxFull(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(%owner, error = %e, "owner unreachable");
                return None;
            }
        }
    }
}

impl Node {
    /// Delivers one message, here or at the node that owns its target. `key` is its outbox
    /// row, deleted with (or, for another node, after) the message's effect. Returns whether
    /// the effect is durable; if not, the row stays and is delivered again later.
    pub async fn deliver(self: &Arc<Self>, key: Option<Vec<u8>>, message: OutboxMessage, redelivery: bool) -> bool {
        let target = message.target_partition();
        if !self.cluster.owns(target) {
            return self.deliver_remote(key, message).await;
        }
        if !self.cluster.is_clustered() {
            return self.deliver_here(key, message, redelivery).await;
        }
        // In a cluster the target may move away mid-delivery: keep a copy to send on.
        if self.deliver_here(key.clone(), message.clone(), redelivery).await {
            return true;
        }
        if self.cluster.owns(target) || key.as_ref().is_some_and(|k| !self.cluster.owns(key_partition(k))) {
            return false; // a failure here, or our copy moved: retried by whoever holds the row
        }
        self.deliver_remote(key, message).await
    }

    async fn deliver_here(self: &Arc<Self>, key: Option<Vec<u8>>, message: OutboxMessage, redelivery: bool) -> bool {
        let delivered = match message {
            OutboxMessage::Attach { target, reply_to } => {
                return match self.take_up_attach(key.clone(), target, reply_to).await {
                    AttachTaken::Held => true,
                    AttachTaken::Moved => {
                        if let Some(key) = key {
                            self.acknowledge(key);
                        }
                        true
                    }
                    AttachTaken::NotYet => false,
                };
            }
            OutboxMessage::Cancel { target } => match self.cancel(target).await {
                Ok(()) | Err(ControlError::NotFound(_) | ControlError::Finished(_)) => true,
                Err(e) => {
                    tracing::warn!(invocation_id = %target, error = %e, "cancel not delivered; retried");
                    false
                }
            },
            OutboxMessage::Invoke(invoke) => self.deliver_invoke(invoke, redelivery).await,
            OutboxMessage::Complete { target, index, result } => delivered(
                self.complete(target, index, result, WriteBatch::new(), Completer::Message)
                    .await,
            ),
            OutboxMessage::Promise(promise) => self.deliver_promise(promise).await,
        };
        if delivered {
            if let Some(key) = key {
                self.acknowledge(key);
            }
        }
        delivered
    }

    /// The sender's side of a delivered message: its outbox row goes in a batch of the
    /// sender's own partition, riding with the next group commit. Lost in a crash, the
    /// message is sent again and the receiver drops it as a duplicate.
    fn acknowledge(&self, key: Vec<u8>) {
        let mut batch = WriteBatch::new();
        batch.delete(Table::Outbox, key);
        self.store.log.piggyback(batch);
    }

    /// Sends `message` to the node that owns its target until that node has applied it, then
    /// deletes the outbox row. The receiver drops duplicates (same invocation id, a completed
    /// entry), so a resend after a lost answer is harmless.
    async fn deliver_remote(self: &Arc<Self>, key: Option<Vec<u8>>, message: OutboxMessage) -> bool {
        let target = message.target_partition();
        let source = key.as_deref().map(key_partition);
        let mut delay = Duration::from_millis(20);
        loop {
            if source.is_some_and(|s| !self.cluster.owns(s)) {
                return false; // our row moved with its partition; the new owner sends it
            }
            match self.cluster.placement(target) {
                Placement::Local => return Box::pin(self.deliver_here(key, message, true)).await,
                Placement::Moving => tokio::time::sleep(Duration::from_millis(10)).await,
                Placement::Remote(peer) => match client::deliver(&peer.peer_addr, &message).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(node = %peer.id, error = %e, "delivery.remote_retry");
                        if e.misdirected() {
                            // In the background: adopting may start invocations, which deliver.
                            let (node, addr) = (self.clone(), peer.peer_addr.clone());
                            actix_rt::spawn(async move { node.pull_membership(&addr).await });
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                },
            }
        }
        if let Some(key) = key {
            self.acknowledge(key);
        }
        true
    }

    /// Hands a durable message creating an invocation to its owner, waiting out
    /// back-pressure; returns whether it took effect.
    async fn deliver_invoke(self: &Arc<Self>, invoke: InvokeMessage, redelivery: bool) -> bool {
        let (id, owner) = (invoke.id, Owner::of_message(&invoke));
        let mut delay = Duration::from_millis(20);
        loop {
            let created = ask(self, &owner, |reply| ObjectMsg::Deliver {
                message: invoke.clone(),
                redelivery,
                reply: Box::new(move |created| {
                    let _ = reply.send(created);
                }),
            })
            .await;
            let created = match created {
                Some(created) => created,
                None => self.answered(id, None).await,
            };
            match created {
                Ok(_) => return true,
                Err(e) if is_back_pressure(&e) => {
                    tracing::debug!(error = %e, invocation_id = %id, "delivery.backoff");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(SubmitError::Storage(StorageError::NotOwner(p))) => {
                    // A partition moved away meanwhile; nothing was written.
                    tracing::debug!(partition = p, invocation_id = %id, "delivery.moved");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, invocation_id = %id, "cannot create invocation; retried on restart");
                    return false;
                }
            }
        }
    }

    /// Completes entry `index` of `target` with `result` (once), committing `extra` with it,
    /// through the target's owner, which then wakes it.
    pub async fn complete(
        self: &Arc<Self>,
        target: InvocationId,
        index: u32,
        result: CompletionResult,
        extra: WriteBatch,
        completer: Completer,
    ) -> Result<(), CompleteError> {
        let Some(owner) = self.owner_of(target).await? else {
            // No such invocation (swept): the carrying row goes anyway.
            self.store.log.append_retrying(extra).await?;
            return Err(CompleteError::NotFound);
        };
        ask(self, &owner, |reply| ObjectMsg::Complete {
            target,
            index,
            result: result.clone(),
            extra: extra.clone(),
            by: completer,
            reply,
        })
        .await
        .unwrap_or(Err(CompleteError::Storage(StorageError::Io("owner stopped".into()))))
    }

    async fn deliver_promise(self: &Arc<Self>, message: PromiseMessage) -> bool {
        let owner = Owner::Object(message.object.clone());
        ask(self, &owner, |reply| ObjectMsg::Promise {
            message: message.clone(),
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// A due timer's effect, with its row (`key`) deleted in the same batch.
    pub(crate) async fn fire(self: &Arc<Self>, key: Vec<u8>, timer: TimerRecord) {
        match timer {
            TimerRecord::Wake { invocation, index } => {
                let mut extra = WriteBatch::new();
                extra.delete(Table::Timers, key);
                let woken = self
                    .complete(
                        invocation,
                        index,
                        CompletionResult::default(),
                        extra,
                        Completer::Message,
                    )
                    .await;
                if let Err(e @ CompleteError::Storage(_)) = woken {
                    tracing::warn!(invocation_id = %invocation, error = %e, "timer not fired; retried on restart");
                }
            }
            TimerRecord::Activate { invocation } => self.activate(invocation, key).await,
        }
    }

    /// Turns a scheduled invocation into a pending one (its timer fired), through its owner.
    pub(crate) async fn activate(self: &Arc<Self>, id: InvocationId, timer_key: Vec<u8>) {
        match self.owner_of(id).await {
            Ok(Some(owner)) => {
                if let Err(e) = self
                    .objects
                    .send(&self.host(), &owner, ObjectMsg::Activate { id, timer_key })
                {
                    tracing::warn!(invocation_id = %id, error = %e, "activation deferred");
                }
            }
            Ok(None) => {
                let mut batch = WriteBatch::new();
                batch.delete(Table::Timers, timer_key);
                let _ = self.store.log.append_retrying(batch).await;
            }
            Err(e) => tracing::error!(error = %e, invocation_id = %id, "cannot activate; retried on restart"),
        }
    }

    /// Delivers `staged` messages (durable outbox rows) one after another, in order.
    pub(crate) async fn deliver_all(self: &Arc<Self>, staged: Vec<Staged>) {
        for (key, message) in staged {
            Box::pin(self.deliver(Some(key), message, false)).await;
        }
    }
}
