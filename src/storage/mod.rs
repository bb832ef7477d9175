//! Durable storage: the only module that touches fjall.
//!
//! Reads go straight to fjall (they are thread-safe and mostly served from memory); every
//! write goes through the group-commit [`PartitionLog`], which fdatasyncs before it answers.
//! Call the blocking reads from a blocking context (`web::block`, `spawn_blocking`) or
//! only where a short wait is acceptable (start-up, actor activation).

mod batch;
mod disk;
mod gate;
mod indexes;
pub mod keys;
mod log;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, Readable};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::core::records::*;
use crate::ids::{InvocationId, ObjectId};
use crate::journal::Entry;
pub use batch::{Table, WriteBatch};
pub use gate::{key_partition, PartitionGate, PartitionState};
use indexes::build_indexes;
pub use indexes::Expired;
pub use log::{LogStats, PartitionLog};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("corrupt record in table {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    #[error("partition log queue is full")]
    Overloaded,
    #[error("partition log has stopped")]
    Stopped,
    #[error("partition {0} is not served by this node (it moved or is moving)")]
    NotOwner(u16),
    /// A bug: every batch writes one partition (the unit a replicated log would carry).
    #[error("a batch wrote partitions {0} and {1}: every batch must write one partition")]
    SpansPartitions(u16, u16),
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// A raw row of a table: (key, value).
pub type Row = (Vec<u8>, Vec<u8>);

/// Encodes a stored value (MessagePack, named fields).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("storage types always serialize")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    rmp_serde::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        table,
        message: e.to_string(),
    })
}

/// Open keyspaces. Their names are on-disk format and never change.
#[derive(Clone)]
pub(crate) struct Tables {
    db: Database,
    invocations: Keyspace,
    journal: Keyspace,
    state: Keyspace,
    inbox: Keyspace,
    idempotency: Keyspace,
    deployments: Keyspace,
    outbox: Keyspace,
    timers: Keyspace,
    promises: Keyspace,
    cluster: Keyspace,
    /// Index of unfinished invocations (see `keys::unfinished`).
    unfinished: Keyspace,
    /// Index of finished invocations by retention deadline (see `keys::expiry`).
    expiry: Keyspace,
    /// The metadata Raft group (`metadata::log`, `metadata::machine`).
    raft: Keyspace,
}

impl Tables {
    /// Seals every table's memtable; fjall flushes them in the background. An empty one is
    /// left alone. Never blocks on the flush.
    fn seal_memtables(&self) {
        for keyspace in self.all() {
            // `rotate_memtable` is what fjall itself does when a memtable is full: public but
            // hidden from its docs, and fjall 3.1 has no other way to ask for it.
            if let Err(e) = keyspace.rotate_memtable() {
                tracing::warn!(error = %e, "storage.seal_memtable_failed");
            }
        }
    }

    fn all(&self) -> [&Keyspace; 13] {
        [
            &self.invocations,
            &self.journal,
            &self.state,
            &self.inbox,
            &self.idempotency,
            &self.deployments,
            &self.outbox,
            &self.timers,
            &self.promises,
            &self.cluster,
            &self.unfinished,
            &self.expiry,
            &self.raft,
        ]
    }
}

impl Tables {
    fn get(&self, table: Table) -> &Keyspace {
        match table {
            Table::Invocations => &self.invocations,
            Table::Journal => &self.journal,
            Table::State => &self.state,
            Table::Inbox => &self.inbox,
            Table::Idempotency => &self.idempotency,
            Table::Deployments => &self.deployments,
            Table::Outbox => &self.outbox,
            Table::Timers => &self.timers,
            Table::Promises => &self.promises,
            Table::Cluster => &self.cluster,
            Table::Unfinished => &self.unfinished,
            Table::Expiry => &self.expiry,
            Table::Raft => &self.raft,
        }
    }
}

/// Counters of reads, for metrics and for tests that check what a scan costs.
#[derive(Default, Debug)]
pub struct StoreStats {
    /// Rows of `invocations` read (scanned or looked up) by the invocation reads of `Store`.
    pub invocation_rows_read: AtomicU64,
    /// Rows of the `unfinished` and `expiry` indexes read.
    pub index_rows_read: AtomicU64,
}

impl StoreStats {
    fn invocation_rows(&self, n: u64) {
        self.invocation_rows_read.fetch_add(n, Ordering::Relaxed);
    }

    fn index_rows(&self, n: u64) {
        self.index_rows_read.fetch_add(n, Ordering::Relaxed);
    }
}

/// Read access to every table, plus the partition log (the way writes go in).
#[derive(Clone)]
pub struct Store {
    tables: Tables,
    pub log: PartitionLog,
    /// Which partitions the log accepts writes for.
    pub gate: Arc<PartitionGate>,
    pub stats: Arc<StoreStats>,
}

impl Store {
    /// Opens a store that owns every partition (a single node).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_gated(dir, Arc::new(PartitionGate::new(PartitionState::Owned)))
    }

    /// Opens a store whose log admits partitioned writes only where `gate` allows.
    pub fn open_gated(dir: &Path, gate: Arc<PartitionGate>) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(format!("{}: {e}", dir.display())))?;
        let db = Database::builder(dir).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let tables = Tables {
            invocations: ks("invocations")?,
            journal: ks("journal")?,
            state: ks("state")?,
            inbox: ks("inbox")?,
            idempotency: ks("idempotency")?,
            deployments: ks("deployments")?,
            outbox: ks("outbox")?,
            timers: ks("timers")?,
            promises: ks("promises")?,
            cluster: ks("cluster")?,
            raft: ks("raft")?,
            unfinished: ks("unfinished")?,
            expiry: ks("expiry")?,
            db,
        };
        build_indexes(&tables)?;
        let log = PartitionLog::start(tables.clone(), gate.clone(), dir.to_path_buf());
        Ok(Self {
            tables,
            log,
            gate,
            stats: Arc::new(StoreStats::default()),
        })
    }

    pub fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, StorageError> {
        self.stats.invocation_rows(1);
        match self.tables.invocations.get(keys::invocation(id))? {
            Some(v) => Ok(Some(decode("invocations", &v)?)),
            None => Ok(None),
        }
    }

    /// The record of `id` as of `snapshot` (a point read behind an index row).
    fn invocation_at(
        &self,
        snapshot: &fjall::Snapshot,
        id: &InvocationId,
    ) -> Result<Option<InvocationRecord>, StorageError> {
        self.stats.invocation_rows(1);
        match snapshot.get(&self.tables.invocations, keys::invocation(id))? {
            Some(v) => Ok(Some(decode("invocations", &v)?)),
            None => Ok(None),
        }
    }

    pub fn journal(&self, id: &InvocationId) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        for item in self.tables.journal.prefix(keys::journal_prefix(id)) {
            let (key, value) = item.into_inner()?;
            let index = u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
            if index as usize != entries.len() {
                return Err(StorageError::Corrupt {
                    table: "journal",
                    message: format!("{id}: entry {index} found where {} was expected", entries.len()),
                });
            }
            entries.push(decode("journal", &value)?);
        }
        Ok(entries)
    }

    pub fn object_state(&self, object: &ObjectId) -> Result<BTreeMap<String, Bytes>, StorageError> {
        let prefix = keys::object_prefix(object);
        let mut state = BTreeMap::new();
        for item in self.tables.state.prefix(&prefix) {
            let (key, value) = item.into_inner()?;
            let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            state.insert(name, Bytes::copy_from_slice(&value));
        }
        Ok(state)
    }

    /// The object's inbox in order: (sequence number, invocation).
    pub fn inbox(&self, object: &ObjectId) -> Result<Vec<(u64, InvocationId)>, StorageError> {
        let prefix = keys::object_prefix(object);
        let mut rows = Vec::new();
        for item in self.tables.inbox.prefix(&prefix) {
            let (key, value) = item.into_inner()?;
            let seq = u64::from_be_bytes(key[prefix.len()..].try_into().map_err(|_| StorageError::Corrupt {
                table: "inbox",
                message: "bad sequence number".into(),
            })?);
            rows.push((seq, decode("inbox", &value)?));
        }
        Ok(rows)
    }

    /// Rows of `table` in the partitions `owned` selects, one prefix scan per partition.
    fn owned_rows<'a>(
        &'a self,
        table: Table,
        owned: &'a dyn Fn(u16) -> bool,
    ) -> impl Iterator<Item = fjall::Guard> + 'a {
        let keyspace = self.tables.get(table);
        (0..crate::ids::PARTITIONS_COUNT as u16)
            .filter(move |p| owned(*p))
            .flat_map(move |p| keyspace.prefix(p.to_be_bytes()))
    }

    /// Every object with a non-empty inbox in the partitions `owned` selects (to re-activate).
    pub fn objects_with_inbox(&self, owned: &dyn Fn(u16) -> bool) -> Result<Vec<ObjectId>, StorageError> {
        let mut objects: Vec<ObjectId> = Vec::new();
        for item in self.owned_rows(Table::Inbox, owned) {
            let key = item.key()?;
            let (object, _) = keys::split_object_key(&key).ok_or(StorageError::Corrupt {
                table: "inbox",
                message: "bad key".into(),
            })?;
            if objects.last() != Some(&object) {
                objects.push(object);
            }
        }
        objects.dedup();
        Ok(objects)
    }

    pub fn idempotency(&self, key: &[u8]) -> Result<Option<IdempotencyRecord>, StorageError> {
        match self.tables.idempotency.get(key)? {
            Some(v) => Ok(Some(decode("idempotency", &v)?)),
            None => Ok(None),
        }
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StorageError> {
        let mut out = Vec::new();
        for item in self.tables.deployments.iter() {
            let value = item.value()?;
            out.push(decode("deployments", &value)?);
        }
        Ok(out)
    }

    pub fn journal_entry(&self, id: &InvocationId, index: u32) -> Result<Option<Entry>, StorageError> {
        match self.tables.journal.get(keys::journal_entry(id, index))? {
            Some(v) => Ok(Some(decode("journal", &v)?)),
            None => Ok(None),
        }
    }

    /// Every undelivered outbox message of the partitions `owned` selects, in key order (per
    /// partition, in production order).
    pub fn outbox(&self, owned: &dyn Fn(u16) -> bool) -> Result<Vec<(Vec<u8>, OutboxMessage)>, StorageError> {
        let mut out = Vec::new();
        for item in self.owned_rows(Table::Outbox, owned) {
            let (key, value) = item.into_inner()?;
            out.push((key.to_vec(), decode("outbox", &value)?));
        }
        Ok(out)
    }

    /// Timers due before `until_ms` in the partitions `owned` selects: (key, due, timer).
    pub fn timers_due_before(
        &self,
        until_ms: u64,
        owned: &dyn Fn(u16) -> bool,
    ) -> Result<Vec<(Vec<u8>, u64, TimerRecord)>, StorageError> {
        let mut out = Vec::new();
        for partition in (0..crate::ids::PARTITIONS_COUNT as u16).filter(|p| owned(*p)) {
            let start = partition.to_be_bytes().to_vec();
            let mut end = start.clone();
            end.extend_from_slice(&until_ms.to_be_bytes());
            for item in self.tables.timers.range(start..end) {
                let (key, value) = item.into_inner()?;
                let due = keys::timer_due(&key).unwrap_or(0);
                out.push((key.to_vec(), due, decode("timers", &value)?));
            }
        }
        Ok(out)
    }

    pub fn promise(&self, object: &ObjectId, name: &str) -> Result<Option<PromiseRecord>, StorageError> {
        match self.tables.promises.get(keys::promise(object, name))? {
            Some(v) => Ok(Some(decode("promises", &v)?)),
            None => Ok(None),
        }
    }

    /// Invocations in key order after `after` (exclusive), filtered, at most `limit`. A scan of
    /// the whole `invocations` table; see `list_unfinished_invocations` for live work.
    pub fn list_invocations(
        &self,
        after: Option<&InvocationId>,
        limit: usize,
        mut keep: impl FnMut(&InvocationId, &InvocationRecord) -> bool,
    ) -> Result<Vec<(InvocationId, InvocationRecord)>, StorageError> {
        let mut out = Vec::new();
        let iter = match after {
            Some(id) => {
                let mut start = keys::invocation(id);
                start.push(0);
                self.tables.invocations.range(start..)
            }
            None => self.tables.invocations.iter(),
        };
        for item in iter {
            let (key, value) = item.into_inner()?;
            self.stats.invocation_rows(1);
            let record: InvocationRecord = decode("invocations", &value)?;
            let id = InvocationId(key[2..18].try_into().expect("16 bytes"));
            if keep(&id, &record) {
                out.push((id, record));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether `partition` has no rows in a partitioned `table` (reads at most one row).
    pub fn partition_is_empty(&self, table: Table, partition: u16) -> Result<bool, StorageError> {
        match self.tables.get(table).prefix(partition.to_be_bytes()).next() {
            None => Ok(true),
            Some(item) => item.key().map(|_| false).map_err(Into::into),
        }
    }

    /// Every row of `partition` in a partitioned `table` (for a partition move).
    pub fn partition_rows(&self, table: Table, partition: u16) -> Result<Vec<Row>, StorageError> {
        let mut out = Vec::new();
        for item in self.tables.get(table).prefix(partition.to_be_bytes()) {
            let (key, value) = item.into_inner()?;
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// A row of the `raft` table.
    pub fn raft_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables.raft.get(key)?.map(|v| v.to_vec()))
    }

    /// Rows of the `raft` table from `from` (inclusive) to `to` (exclusive), in key order.
    pub fn raft_rows(&self, from: &[u8], to: &[u8]) -> Result<Vec<Row>, StorageError> {
        let mut rows = Vec::new();
        for guard in self.tables.raft.range(from.to_vec()..to.to_vec()) {
            let (k, v) = guard.into_inner()?;
            rows.push((k.to_vec(), v.to_vec()));
        }
        Ok(rows)
    }

    /// The last row of the `raft` table from `from` (inclusive) to `to` (exclusive).
    pub fn raft_last_row(&self, from: &[u8], to: &[u8]) -> Result<Option<Row>, StorageError> {
        match self.tables.raft.range(from.to_vec()..to.to_vec()).next_back() {
            Some(guard) => {
                let (k, v) = guard.into_inner()?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// A metadata value of the `cluster` table.
    pub fn cluster_value(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables.cluster.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn journal_keys(&self, id: &InvocationId) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::new();
        for item in self.tables.journal.prefix(keys::journal_prefix(id)) {
            out.push(item.key()?.to_vec());
        }
        Ok(out)
    }

    /// Writes every table's memtable out to disk and waits for it, so the next open skips the
    /// journal's items instead of re-inserting them (fjall replays only what is not flushed).
    /// Called on a clean stop; blocking.
    pub fn flush_memtables(&self) -> Result<(), StorageError> {
        for keyspace in self.tables.all() {
            // `rotate_memtable_and_wait` is fjall's own seal-and-flush, public but hidden from
            // its docs; fjall 3.1 has no other way to ask for a flush.
            keyspace.rotate_memtable_and_wait()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Wall-clock milliseconds: read by the shell, passed to the core as an input.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `read` on the blocking pool: fjall reads block, and never run on an async thread.
pub async fn blocking<T: Send + 'static>(
    store: &Store,
    read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?
}

/// The core reads a partition's committed state through this (on the blocking pool).
impl crate::core::PartitionRead for Store {
    fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, crate::core::ReadFailed> {
        Store::invocation(self, id).map_err(|e| crate::core::ReadFailed(e.to_string()))
    }

    fn journal_entry(&self, id: &InvocationId, index: u32) -> Result<Option<Entry>, crate::core::ReadFailed> {
        Store::journal_entry(self, id, index).map_err(|e| crate::core::ReadFailed(e.to_string()))
    }

    fn promise(&self, object: &ObjectId, name: &str) -> Result<Option<PromiseRecord>, crate::core::ReadFailed> {
        Store::promise(self, object, name).map_err(|e| crate::core::ReadFailed(e.to_string()))
    }
}
