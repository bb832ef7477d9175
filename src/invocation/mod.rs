//! An invocation in memory (record, durable journal, whether its creation is written yet),
//! the writes that create and finish it, the callers waiting for its output (`waiters.rs`)
//! and the in-memory status of running attempts (`live.rs`). Its life — attempts, back-off,
//! suspension, end — is run by its owner (`object::lifecycle`).

mod live;
mod waiters;

use std::sync::Mutex;

pub use live::{LiveStatus, LiveTable};
pub use waiters::Waiters;

use crate::ids::{InvocationId, ObjectId};
use crate::journal::Entry;
use crate::storage::{encode, keys, InvocationRecord, Table, WriteBatch};

/// An invocation in memory: its record and its durable journal.
#[derive(Clone)]
pub struct Invocation {
    pub id: InvocationId,
    pub record: InvocationRecord,
    pub journal: Vec<Entry>,
    /// Its creation is not on disk yet. Only an ingress call without idempotency key is
    /// created this way: its response is its only acknowledgement, so its creation can wait
    /// for the first commit of its first attempt and share that fdatasync. Whatever writes the
    /// record first writes the creation with it (`Invocation::written_with`).
    pub unwritten: bool,
}

impl Invocation {
    /// An invocation read back from storage (or about to be created there).
    pub fn new(id: InvocationId, record: InvocationRecord, journal: Vec<Entry>) -> Self {
        Self {
            id,
            record,
            journal,
            unwritten: false,
        }
    }

    /// Adds its creation to `batch` if it is not on disk yet, ahead of the batch's own writes
    /// (the last write of a key in a batch wins, so a later record or inbox delete overrides).
    pub(crate) fn written_with(creation: &Mutex<Option<WriteBatch>>, batch: &mut WriteBatch) {
        if let Some(creation) = creation.lock().expect("creation lock").take() {
            let own = std::mem::replace(batch, creation);
            batch.append(own);
        }
    }

    pub fn object(&self) -> ObjectId {
        ObjectId::new(&self.record.service, &self.record.key)
    }

    /// Key of this invocation's idempotency row, if it has an idempotency key.
    pub fn idempotency_row(&self) -> Option<Vec<u8>> {
        let target = keys::Target {
            service: &self.record.service,
            key: &self.record.key,
            handler: &self.record.handler,
        };
        self.record
            .idempotency_key
            .as_deref()
            .map(|k| keys::idempotency(self.id.partition_key(), &target, k))
    }

    /// Writes that create the invocation: its record, its input entry, its idempotency row,
    /// its inbox row.
    pub fn creation_batch(&self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put_invocation(&self.id, &self.record);
        for (i, entry) in self.journal.iter().enumerate() {
            batch.put(Table::Journal, keys::journal_entry(&self.id, i as u32), encode(entry));
        }
        if let Some(row) = self.idempotency_row() {
            batch.put(
                Table::Idempotency,
                row,
                encode(&crate::storage::IdempotencyRecord { invocation_id: self.id }),
            );
        }
        if let Some(seq) = self.record.inbox_seq {
            batch.put(Table::Inbox, keys::inbox_entry(&self.object(), seq), encode(&self.id));
        }
        batch
    }

    /// Its creation if it is not on disk yet, else an empty batch: the start of the batch of
    /// whichever write of its record comes first.
    pub(crate) fn unwritten_creation(&self) -> WriteBatch {
        if self.unwritten {
            self.creation_batch()
        } else {
            WriteBatch::new()
        }
    }

    /// A suspended invocation may run again once one of the entries it waits on is completed.
    pub fn can_resume(&self) -> bool {
        crate::core::attempt::resumable(&self.record, &self.journal)
    }

    /// A completable entry without a result: a new attempt must re-read the journal first.
    pub(crate) fn awaits_completions(&self) -> bool {
        self.journal.iter().any(Entry::awaits_completion)
    }
}
