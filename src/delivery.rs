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

use crate::cluster::{peer, Placement};
pub use crate::core::Completer;
use crate::core::{Action, Command, Refusal, Transition, Write};
use crate::ids::InvocationId;
use crate::invocation::Invocation;
use crate::invoker::AttemptSignal;
use crate::journal::CompletionResult;
use crate::node::{Creation, Node};
use crate::object::SubmitError;
use crate::storage::{
    encode, key_partition, HandlerKind, InvokeMessage, OutboxMessage, PromiseMessage, StorageError, Table, WriteBatch,
};

#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error("no such entry to complete")]
    NotFound,
    #[error("already completed")]
    AlreadyCompleted,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A completion message has taken effect (or never can: its entry is gone or already done).
fn delivered(result: Result<(), CompleteError>) -> bool {
    matches!(
        result,
        Ok(()) | Err(CompleteError::NotFound) | Err(CompleteError::AlreadyCompleted)
    )
}

impl Node {
    /// Adds `message` as an outbox row of `partition` to `batch`; deliver it after the commit.
    pub(crate) fn stage(
        &self,
        batch: &mut WriteBatch,
        partition: u16,
        message: OutboxMessage,
    ) -> (Vec<u8>, OutboxMessage) {
        let key = self.next_outbox_key(partition);
        batch.put(Table::Outbox, key.clone(), encode(&message));
        (key, message)
    }

    /// Adds a transition's `writes` to `batch`, its messages as outbox rows of `partition` (the
    /// command's); returns those messages with their rows, to deliver once `batch` is durable.
    pub(crate) fn stage_writes(
        &self,
        batch: &mut WriteBatch,
        partition: u16,
        writes: Vec<Write>,
    ) -> Vec<(Vec<u8>, OutboxMessage)> {
        let mut staged = Vec::new();
        batch.put_writes(writes, |batch, message| {
            staged.push(self.stage(batch, partition, message))
        });
        staged
    }

    /// What the core decides `command` does, given what storage holds. Commands that read
    /// storage are decided on the blocking pool; the others here, without a thread hop.
    pub(crate) async fn decide(&self, command: Command) -> Result<Transition, StorageError> {
        let decided = if command.reads_storage() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || crate::core::apply(&store, command))
                .await
                .map_err(|e| StorageError::Io(e.to_string()))?
        } else {
            crate::core::apply(&self.store, command)
        };
        decided.map_err(|e| StorageError::Io(e.0))
    }

    /// Commits `batch`, retrying while the writer is only overloaded.
    pub(crate) async fn commit_retrying(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut delay = Duration::from_millis(10);
        loop {
            match self.store.writer.commit(batch.clone()).await {
                Err(StorageError::Overloaded) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Creates an invocation, waiting out back-pressure (a full inbox, mailbox, writer queue or
    /// in-flight limit): the row that carries it stays durable meanwhile. Any other error is
    /// logged; the carrying row is then retried on restart. Returns whether it was created.
    async fn create_retrying(self: &Arc<Self>, invocation: Invocation, extra: WriteBatch, what: &str) -> bool {
        let id = invocation.id;
        let mut delay = Duration::from_millis(20);
        loop {
            let creation = Creation {
                invocation: invocation.clone(),
                extra: extra.clone(),
                admitted: true,
            };
            match self.create(creation).await {
                Ok(()) => return true,
                Err(e @ (SubmitError::InboxFull(_) | SubmitError::InboxBytesFull(_) | SubmitError::MailboxFull(_)))
                | Err(e @ SubmitError::Storage(StorageError::Overloaded)) => {
                    tracing::debug!(error = %e, invocation_id = %id, what, "delivery.backoff");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(SubmitError::Storage(StorageError::NotOwner(p))) => {
                    // A partition moved away meanwhile; nothing was written.
                    tracing::debug!(partition = p, invocation_id = %id, what, "delivery.moved");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, invocation_id = %id, what, "cannot create invocation; retried on restart");
                    return false;
                }
            }
        }
    }

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
        let extra = WriteBatch::new();
        let delivered = match message {
            OutboxMessage::Invoke(invoke) => self.deliver_invoke(invoke, extra, redelivery).await,
            OutboxMessage::Complete { target, index, result } => {
                delivered(self.complete(target, index, result, extra, Completer::Message).await)
            }
            OutboxMessage::Promise(promise) => self.deliver_promise(promise, extra).await,
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
        self.store.writer.piggyback(batch);
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
                Placement::Remote(peer) => match peer::client::deliver(&peer.peer_addr, &message).await {
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

    async fn deliver_invoke(self: &Arc<Self>, invoke: InvokeMessage, mut extra: WriteBatch, redelivery: bool) -> bool {
        let partition = invoke.id.partition();
        // A message sent again (after a crash or a lost answer) may be applied concurrently
        // with its first copy, and a workflow run may be created by an ingress request at the
        // same time: decide and create under the id's lock (the one `Node::submit` takes).
        let _dedup = if redelivery || invoke.kind == HandlerKind::Workflow {
            Some(self.stripe(&invoke.id).lock().await)
        } else {
            None
        };
        let transition = match self
            .decide(Command::Invoke {
                message: invoke,
                redelivery,
            })
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot check for a duplicate; retried on restart");
                return false;
            }
        };
        if let Some(message) = transition.create {
            return self.create_retrying(message.into_invocation(), extra, "delivery").await;
        }
        let staged = self.stage_writes(&mut extra, partition, transition.writes);
        if self.commit_retrying(extra).await.is_err() {
            return false;
        }
        for (key, message) in staged {
            Box::pin(self.deliver(Some(key), message, false)).await;
        }
        true
    }

    /// Completes entry `index` of `target` with `result` (once), then wakes the invocation.
    pub async fn complete(
        self: &Arc<Self>,
        target: InvocationId,
        index: u32,
        result: CompletionResult,
        mut extra: WriteBatch,
        completer: Completer,
    ) -> Result<(), CompleteError> {
        let _guard = self.stripe(&target).lock().await;
        let transition = self
            .decide(Command::Complete {
                target,
                index,
                result,
                by: completer,
            })
            .await?;
        // The carrying row goes either way: a refused completion can never take effect.
        let staged = self.stage_writes(&mut extra, target.partition(), transition.writes);
        debug_assert!(staged.is_empty(), "a completion stages no messages");
        self.commit_retrying(extra).await?;
        match transition.refused {
            Some(Refusal::AlreadyCompleted) => return Err(CompleteError::AlreadyCompleted),
            Some(_) => return Err(CompleteError::NotFound),
            None => {}
        }
        for action in transition.actions {
            if let Action::Wake { target, index, result } = action {
                self.wake(target, AttemptSignal::Completion { index, result }, Some(index));
            }
        }
        Ok(())
    }

    /// Tells a running attempt about `signal`, or resumes a suspended invocation waiting on
    /// `index` (any index when `None`). Call with the invocation's stripe lock held.
    pub(crate) fn wake(self: &Arc<Self>, target: InvocationId, signal: AttemptSignal, index: Option<u32>) {
        if let Some(tx) = self.attempts.lock().expect("attempts lock").get(&target) {
            // If the channel is full or closed, the attempt is ending: its suspension check
            // (under the same stripe lock) reads the result from storage.
            let _ = tx.try_send(signal);
            return;
        }
        let resume = {
            let mut suspended = self.suspended.lock().expect("suspended lock");
            match suspended.get(&target) {
                Some(waiting) if index.is_none_or(|i| waiting.contains(&i)) => {
                    suspended.remove(&target);
                    true
                }
                _ => false,
            }
        };
        if resume {
            self.resume(target);
        }
    }

    async fn deliver_promise(self: &Arc<Self>, message: PromiseMessage, mut batch: WriteBatch) -> bool {
        let object = message.object.clone();
        let staged = {
            let _guard = self.object_stripe(&object).lock().await;
            let transition = match self.decide(Command::Promise(message)).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read promise; retried on restart");
                    return false;
                }
            };
            // Replies leave from the promise's partition: the one this node serves.
            let partition = crate::ids::partition_of(object.partition_key());
            let staged = self.stage_writes(&mut batch, partition, transition.writes);
            if let Err(e) = self.commit_retrying(batch).await {
                tracing::error!(error = %e, "cannot commit promise operation; retried on restart");
                return false;
            }
            staged
        };
        for (key, message) in staged {
            Box::pin(self.deliver(Some(key), message, false)).await;
        }
        true
    }

    /// Turns a scheduled invocation into a pending one (its timer fired).
    pub(crate) async fn activate(self: &Arc<Self>, id: InvocationId, timer_key: Vec<u8>) {
        let _guard = self.stripe(&id).lock().await;
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            Ok(match store.invocation(&id)? {
                Some(record) => Some((record, store.journal(&id)?)),
                None => None,
            })
        })
        .await;
        let mut extra = WriteBatch::new();
        extra.delete(Table::Timers, timer_key);
        match loaded {
            Ok(Ok(Some((record, journal)))) if let Some(pending) = crate::core::attempt::activated(&record) => {
                let invocation = Invocation::new(id, pending, journal);
                let _ = self.create_retrying(invocation, extra, "activation").await;
            }
            Ok(Ok(_)) => {
                let _ = self.commit_retrying(extra).await;
            }
            other => {
                tracing::error!(error = ?other.err(), invocation_id = %id, "cannot activate; retried on restart")
            }
        }
    }
}
