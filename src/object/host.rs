//! What an owner needs of the node it runs on, as a trait (`node::Node` implements it), so the
//! owners name nothing above them: the node wires them to storage, the schema, the cluster's
//! placement and the delivery of their outbox messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::ObjectRegistry;
use crate::config::Config;
use crate::core::{Command, Transition, Write};
use crate::ids::InvocationId;
use crate::invocation::{Invocation, LiveTable};
use crate::invoker::AttemptHost;
use crate::journal::Output;
use crate::schema::SchemaRegistry;
use crate::storage::{
    blocking, encode, now_ms, InvocationRecord, InvocationStatus, OutboxMessage, StorageError, Store, Table, WriteBatch,
};
use crate::timers::TimerService;

/// An outbox row staged in a batch, with its message: delivered once the batch is durable.
pub type Staged = (Vec<u8>, OutboxMessage);

pub trait OwnerHost: AttemptHost + Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn store(&self) -> &Store;
    fn schema(&self) -> &SchemaRegistry;
    fn live(&self) -> &LiveTable;
    fn timers(&self) -> &TimerService;
    fn owners(&self) -> &ObjectRegistry;
    /// This node serves `partition` now.
    fn owns(&self, partition: u16) -> bool;
    /// Counts a new unfinished invocation in, unless the node is at its in-flight limit and the
    /// invocation is not `admitted` (carried by a durable message or timer).
    fn admit(&self, admitted: bool) -> bool;
    /// Undoes `admit` for a creation that failed.
    fn release_inflight(&self);
    /// An invocation's end is durable: wake its waiters; `counted` if it was counted in flight.
    fn finished_counted(&self, id: InvocationId, output: &Output, counted: bool);
    /// Delivers `staged` messages (durable outbox rows) one after another, here or at the
    /// node that serves their target.
    fn deliver_all(self: Arc<Self>, staged: Vec<Staged>) -> Pin<Box<dyn Future<Output = ()>>>;
}

impl dyn OwnerHost {
    pub fn finished(&self, id: InvocationId, output: &Output) {
        self.finished_counted(id, output, true);
    }

    /// `deliver_all` in a task of its own (an owner never waits for a receiver).
    pub fn deliver_in_background(self: &Arc<Self>, staged: Vec<Staged>) {
        if !staged.is_empty() {
            actix_rt::spawn(self.clone().deliver_all(staged));
        }
    }

    /// Adds a transition's `writes` to `batch`, its messages as outbox rows of `partition` (the
    /// command's); returns those messages with their rows, to deliver once `batch` is durable.
    pub fn stage_writes(&self, batch: &mut WriteBatch, partition: u16, writes: Vec<Write>) -> Vec<Staged> {
        let mut staged = Vec::new();
        batch.put_writes(writes, |batch, message| {
            let key = self.outbox_key(partition);
            batch.put(Table::Outbox, key.clone(), encode(&message));
            staged.push((key, message));
        });
        staged
    }

    /// Adds the writes that finish invocation `id` with `output` and `status` to `batch` (as
    /// `core::finish` decides); returns the message completing its caller's `call` entry,
    /// staged in the same batch. Its one action, `Finished`, is `finished`: the caller runs it
    /// once the batch is durable.
    pub fn finish_writes(
        &self,
        id: &InvocationId,
        record: &InvocationRecord,
        status: InvocationStatus,
        output: &Output,
        batch: &mut WriteBatch,
    ) -> Option<Staged> {
        let retention_ms = self.config().idempotency_retention_secs * 1000;
        let transition = crate::core::finish::apply(*id, record, status, output.clone(), now_ms(), retention_ms);
        self.stage_writes(batch, id.partition(), transition.writes).pop()
    }

    /// What the core decides `command` does, given what storage holds. Commands that read
    /// storage are decided on the blocking pool; the others here, without a thread hop.
    pub async fn decide(&self, command: Command) -> Result<Transition, StorageError> {
        let decided = if command.reads_storage() {
            let store = self.store().clone();
            tokio::task::spawn_blocking(move || crate::core::apply(&store, command))
                .await
                .map_err(|e| StorageError::Io(e.to_string()))?
        } else {
            crate::core::apply(self.store(), command)
        };
        decided.map_err(|e| StorageError::Io(e.0))
    }
}

/// Loads an invocation and its journal.
pub async fn load(store: &Store, id: InvocationId) -> Result<Option<Invocation>, StorageError> {
    blocking(store, move |store| {
        let Some(record) = store.invocation(&id)? else {
            return Ok(None);
        };
        let journal = store.journal(&id)?;
        Ok(Some(Invocation::new(id, record, journal)))
    })
    .await
}
