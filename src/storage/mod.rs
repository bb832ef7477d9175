//! Durable storage: the only module that touches fjall.
//!
//! Reads go straight to fjall (they are thread-safe and mostly served from memory); every
//! write goes through the group-commit [`Writer`], which fdatasyncs before it answers.
//! Call the blocking reads from a blocking context (`web::block`, `spawn_blocking`) or
//! only where a short wait is acceptable (start-up, actor activation).

mod gate;
pub mod keys;
pub mod records;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{InvocationId, ObjectId};
use crate::journal::Entry;
pub use gate::{key_partition, PartitionGate, PartitionState};
pub use records::*;
pub use writer::{Table, WriteBatch, Writer, WriterStats};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("corrupt record in table {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    #[error("storage writer queue is full")]
    Overloaded,
    #[error("storage writer has stopped")]
    Stopped,
    #[error("partition {0} is not served by this node (it moved or is moving)")]
    NotOwner(u16),
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
        }
    }
}

/// Key ranges `[a] .. [b+1]` covering each run of consecutive partitions `owned` selects (all
/// partitions: one range), for scans of a table whose keys start with the partition.
fn owned_runs(owned: &dyn Fn(u16) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let count = crate::ids::PARTITIONS_COUNT as u16;
    let mut runs = Vec::new();
    let mut p = 0u16;
    while p < count {
        if !owned(p) {
            p += 1;
            continue;
        }
        let start = p;
        while p < count && owned(p) {
            p += 1;
        }
        // `p` is one past the run (at most PARTITIONS_COUNT, above every stored partition).
        runs.push((start.to_be_bytes().to_vec(), p.to_be_bytes().to_vec()));
    }
    runs
}

/// Key in the `cluster` table of the version of the derived indexes (`unfinished`, `expiry`)
/// this data directory holds; absent in directories written before the indexes existed.
const INDEX_VERSION_KEY: &[u8] = b"index_version";
/// Bump to rebuild the indexes on the next open (after changing what they hold).
const INDEX_VERSION: u64 = 1;

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

/// What one sweep scan found: invocations past retention, and `expiry` rows that no longer
/// match their record (to delete with them).
#[derive(Default)]
pub struct Expired {
    pub invocations: Vec<(InvocationId, InvocationRecord)>,
    /// Keys of `Table::Expiry` rows whose record is gone, unfinished or has another deadline.
    pub stale_index_rows: Vec<Vec<u8>>,
}

/// Read access to every table, plus the writer.
#[derive(Clone)]
pub struct Store {
    tables: Tables,
    pub writer: Writer,
    /// Which partitions the writer accepts writes for.
    pub gate: Arc<PartitionGate>,
    pub stats: Arc<StoreStats>,
}

impl Store {
    /// Opens a store that owns every partition (a single node).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_gated(dir, Arc::new(PartitionGate::new(PartitionState::Owned)))
    }

    /// Opens a store whose writer admits partitioned writes only where `gate` allows.
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
            unfinished: ks("unfinished")?,
            expiry: ks("expiry")?,
            db,
        };
        build_indexes(&tables)?;
        let writer = Writer::start(tables.clone(), gate.clone());
        Ok(Self {
            tables,
            writer,
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

    /// Every unfinished invocation in the partitions `owned` selects, for recovery: one range
    /// scan of the `unfinished` index per run of consecutive owned partitions, then a point read
    /// per row (both in one snapshot), so the cost follows live work, not finished history.
    pub fn unfinished_invocations(
        &self,
        owned: &dyn Fn(u16) -> bool,
    ) -> Result<Vec<(InvocationId, InvocationRecord)>, StorageError> {
        let snapshot = self.tables.db.snapshot();
        let mut out = Vec::new();
        for (start, end) in owned_runs(owned) {
            for item in snapshot.range(&self.tables.unfinished, start..end) {
                let key = item.key()?;
                self.stats.index_rows(1);
                let id = keys::unfinished_id(&key).ok_or(StorageError::Corrupt {
                    table: "unfinished",
                    message: "bad key".into(),
                })?;
                match self.invocation_at(&snapshot, &id)? {
                    Some(record) if !record.status.is_finished() => out.push((id, record)),
                    // Not written by `put_invocation` (the indexes are kept in the same batch).
                    _ => tracing::warn!(invocation_id = %id, "storage.unfinished_index_row_without_record"),
                }
            }
        }
        Ok(out)
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

    /// Finished invocations (and their journals and idempotency rows) past their retention, at
    /// most `limit`. Reads only the `expiry` rows `[p][0] .. [p][now+1]` of each partition.
    pub fn expired_invocations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(InvocationId, InvocationRecord)>, StorageError> {
        Ok(self.expired(now_ms, limit, &|_| true)?.invocations)
    }

    /// What the sweep deletes in the partitions `owned` selects: at most `limit` invocations
    /// past retention (each checked against its record), plus stale `expiry` rows.
    pub fn expired(&self, now_ms: u64, limit: usize, owned: &dyn Fn(u16) -> bool) -> Result<Expired, StorageError> {
        let snapshot = self.tables.db.snapshot();
        let mut out = Expired::default();
        for partition in (0..crate::ids::PARTITIONS_COUNT as u16).filter(|p| owned(*p)) {
            let start = partition.to_be_bytes().to_vec();
            let end = keys::expiry_until(partition, now_ms);
            for item in snapshot.range(&self.tables.expiry, start..end) {
                if out.invocations.len() >= limit {
                    return Ok(out);
                }
                let key = item.key()?;
                self.stats.index_rows(1);
                let (at, id) = keys::split_expiry(&key).ok_or(StorageError::Corrupt {
                    table: "expiry",
                    message: "bad key".into(),
                })?;
                match self.invocation_at(&snapshot, &id)? {
                    Some(record) if record.status.is_finished() && record.expires_at_ms == Some(at) => {
                        out.invocations.push((id, record))
                    }
                    _ => out.stale_index_rows.push(key.to_vec()),
                }
            }
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

    /// Like `list_invocations` (same key order, so the same `after` cursor), but only
    /// unfinished invocations, paged through the `unfinished` index.
    pub fn list_unfinished_invocations(
        &self,
        after: Option<&InvocationId>,
        limit: usize,
        mut keep: impl FnMut(&InvocationId, &InvocationRecord) -> bool,
    ) -> Result<Vec<(InvocationId, InvocationRecord)>, StorageError> {
        let snapshot = self.tables.db.snapshot();
        let mut out = Vec::new();
        let iter = match after {
            Some(id) => {
                let mut start = keys::unfinished(id);
                start.push(0);
                snapshot.range(&self.tables.unfinished, start..)
            }
            None => snapshot.iter(&self.tables.unfinished),
        };
        for item in iter {
            let key = item.key()?;
            self.stats.index_rows(1);
            let Some(id) = keys::unfinished_id(&key) else {
                continue;
            };
            let Some(record) = self.invocation_at(&snapshot, &id)? else {
                continue;
            };
            if !record.status.is_finished() && keep(&id, &record) {
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
}

/// Builds the `unfinished` and `expiry` indexes of a data directory that has none yet (written
/// before they existed, or after a change of `INDEX_VERSION`): one full scan of `invocations`,
/// then one batch with every index row and the marker. A fresh directory only gets the marker.
///
/// Runs in `open_gated` before the writer thread starts, committing its own `SyncData` batch
/// directly: nothing else writes yet, so the single-writer rule holds, and going through the
/// writer is not possible here — its commit is async and the gate of a starting node refuses
/// every partition (it owns none until the membership is read). The batch is atomic: a crash
/// leaves no marker and the next open builds again.
fn build_indexes(tables: &Tables) -> Result<(), StorageError> {
    if let Some(v) = tables.cluster.get(INDEX_VERSION_KEY)? {
        if v.len() == 8 && u64::from_be_bytes(v[..].try_into().expect("8 bytes")) >= INDEX_VERSION {
            return Ok(());
        }
    }
    let started = std::time::Instant::now();
    let mut unfinished: HashSet<Vec<u8>> = HashSet::new();
    let mut expiry: HashSet<Vec<u8>> = HashSet::new();
    let mut records = 0u64;
    for item in tables.invocations.iter() {
        let (key, value) = item.into_inner()?;
        let id = keys::unfinished_id(&key).ok_or(StorageError::Corrupt {
            table: "invocations",
            message: "bad key".into(),
        })?;
        let record: InvocationRecord = decode("invocations", &value)?;
        let (u, e) = writer::index_rows(&id, &record);
        unfinished.extend(u);
        expiry.extend(e);
        records += 1;
    }
    let mut batch = tables.db.batch().durability(Some(PersistMode::SyncData));
    // Rows that do not follow from a record go (only possible after a manual edit or a
    // version bump); the rest are (re)written. Every key is written once: a batch applies
    // all its writes at one sequence number.
    for (keyspace, wanted) in [(&tables.unfinished, &unfinished), (&tables.expiry, &expiry)] {
        for item in keyspace.iter() {
            let key = item.key()?;
            if !wanted.contains(&key[..]) {
                batch.remove(keyspace, key.to_vec());
            }
        }
        for key in wanted {
            batch.insert(keyspace, key.clone(), Vec::<u8>::new());
        }
    }
    batch.insert(
        &tables.cluster,
        INDEX_VERSION_KEY.to_vec(),
        INDEX_VERSION.to_be_bytes().to_vec(),
    );
    batch.commit()?;
    if records > 0 {
        tracing::info!(
            records,
            unfinished = unfinished.len(),
            expiry = expiry.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage.indexes_built"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Entry;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn committed_batches_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = InvocationId::new(7);
        let object = ObjectId::new("Counter", "a");
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Journal,
                keys::journal_entry(&id, 0),
                encode(&Entry::Input { value: b"1".to_vec() }),
            );
            batch.put(Table::State, keys::state_entry(&object, "count"), b"41".to_vec());
            batch.put(Table::Inbox, keys::inbox_entry(&object, 3), encode(&id));
            rt().block_on(store.writer.commit(batch)).unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.journal(&id).unwrap().len(), 1);
        assert_eq!(store.object_state(&object).unwrap()["count"], Bytes::from_static(b"41"));
        assert_eq!(store.inbox(&object).unwrap(), vec![(3, id)]);
        assert_eq!(store.objects_with_inbox(&|_| true).unwrap(), vec![object]);
    }

    #[test]
    fn the_gate_refuses_writes_to_partitions_not_owned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = InvocationId::new(5); // partition 5
        let write = || {
            let mut b = WriteBatch::new();
            b.put(Table::Journal, keys::journal_entry(&id, 0), vec![1]);
            b
        };
        rt().block_on(async {
            store.writer.commit(write()).await.unwrap();
            store.gate.set(id.partition(), PartitionState::Frozen);
            let refused = store.writer.commit(write()).await;
            assert!(matches!(refused, Err(StorageError::NotOwner(5))), "{refused:?}");
            // Metadata is not partitioned; a partition move passes.
            let mut meta = WriteBatch::new();
            meta.put(Table::Cluster, b"membership".to_vec(), vec![1]);
            store.writer.commit(meta).await.unwrap();
            let mut moved = WriteBatch::for_partition_move();
            moved.delete(Table::Journal, keys::journal_entry(&id, 0));
            store.writer.commit(moved).await.unwrap();
        });
        assert!(store.journal(&id).unwrap().is_empty());
    }

    #[test]
    fn concurrent_commits_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        rt().block_on(async {
            let futures: Vec<_> = (0..200u32)
                .map(|i| {
                    let mut b = WriteBatch::new();
                    b.put(Table::Journal, keys::journal_entry(&InvocationId::new(1), i), vec![1]);
                    store.writer.commit(b)
                })
                .collect();
            for f in futures {
                f.await.unwrap();
            }
        });
        let fsyncs = store.writer.stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        assert!(fsyncs < 200, "expected grouped fsyncs, got {fsyncs}");
    }

    fn record(status: InvocationStatus, expires_at_ms: Option<u64>) -> InvocationRecord {
        InvocationRecord {
            service: "Svc".into(),
            handler: "run".into(),
            key: String::new(),
            kind: HandlerKind::Stateless,
            deployment_id: "dp_1".into(),
            status,
            attempts: 0,
            last_error: None,
            next_retry_at_ms: None,
            created_at_ms: 1,
            modified_at_ms: 1,
            idempotency_key: None,
            inbox_seq: None,
            output: None,
            expires_at_ms,
            caller: None,
            call_chain: vec![],
            waiting_on: vec![],
            cancel_requested: false,
            not_before_ms: None,
        }
    }

    /// Opens `dir` again once the writer thread of a dropped store has let go of it.
    fn reopen(dir: &Path) -> Store {
        for _ in 0..200 {
            match Store::open(dir) {
                Err(StorageError::Io(e)) if e.contains("Locked") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
        panic!("{} stays locked", dir.display());
    }

    fn commit(store: &Store, batch: WriteBatch) {
        rt().block_on(store.writer.commit(batch)).unwrap();
    }

    fn rows(store: &Store, table: Table) -> Vec<Vec<u8>> {
        store
            .tables
            .get(table)
            .iter()
            .map(|i| i.key().unwrap().to_vec())
            .collect()
    }

    fn reads(store: &Store) -> (u64, u64) {
        (
            store.stats.invocation_rows_read.load(Ordering::Relaxed),
            store.stats.index_rows_read.load(Ordering::Relaxed),
        )
    }

    /// The pre-index recovery scan (every record of every owned partition), for comparison.
    fn unfinished_by_full_scan(store: &Store) -> Vec<InvocationId> {
        let mut out = Vec::new();
        for item in store.owned_rows(Table::Invocations, &|_| true) {
            let (key, value) = item.into_inner().unwrap();
            let record: InvocationRecord = decode("invocations", &value).unwrap();
            if !record.status.is_finished() {
                out.push(keys::unfinished_id(&key).unwrap());
            }
        }
        out
    }

    #[test]
    fn owned_runs_cover_exactly_the_owned_partitions() {
        assert_eq!(owned_runs(&|_| true), vec![(vec![0, 0], vec![4, 0])]);
        assert!(owned_runs(&|_| false).is_empty());
        let runs = owned_runs(&|p| p == 3 || p == 4 || p == 9 || p == 1023);
        assert_eq!(
            runs,
            vec![
                (vec![0, 3], vec![0, 5]),
                (vec![0, 9], vec![0, 10]),
                (vec![3, 255], vec![4, 0])
            ]
        );
    }

    #[test]
    fn index_rows_follow_the_record_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = InvocationId::new(42);
        let put = |status, expires| {
            let mut b = WriteBatch::new();
            b.put_invocation(&id, &record(status, expires));
            commit(&store, b);
        };
        for status in [
            InvocationStatus::Scheduled,
            InvocationStatus::Pending,
            InvocationStatus::Running,
            InvocationStatus::Suspended,
            InvocationStatus::BackingOff,
        ] {
            put(status, None);
            assert_eq!(
                rows(&store, Table::Unfinished),
                vec![keys::unfinished(&id)],
                "{status:?}"
            );
            assert!(rows(&store, Table::Expiry).is_empty());
            assert_eq!(store.unfinished_invocations(&|_| true).unwrap().len(), 1);
        }
        put(InvocationStatus::Completed, Some(1_000));
        assert!(rows(&store, Table::Unfinished).is_empty());
        assert_eq!(rows(&store, Table::Expiry), vec![keys::expiry(&id, 1_000)]);
        assert!(store.unfinished_invocations(&|_| true).unwrap().is_empty());
        assert!(store.expired_invocations(999, 10).unwrap().is_empty());
        let expired = store.expired_invocations(1_000, 10).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, id);

        let mut b = WriteBatch::new();
        b.delete_invocation(&id, &expired[0].1);
        commit(&store, b);
        assert!(store.invocation(&id).unwrap().is_none());
        assert!(rows(&store, Table::Unfinished).is_empty());
        assert!(rows(&store, Table::Expiry).is_empty());

        // Finished without a deadline: in neither index.
        put(InvocationStatus::Killed, None);
        assert!(rows(&store, Table::Unfinished).is_empty());
        assert!(rows(&store, Table::Expiry).is_empty());
    }

    #[test]
    fn the_last_write_of_a_batch_decides_the_index_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (InvocationId::new(1), InvocationId::new(2));
        let mut batch = WriteBatch::new();
        batch.put_invocation(&a, &record(InvocationStatus::Pending, None));
        batch.put_invocation(&a, &record(InvocationStatus::Failed, Some(5)));
        batch.put_invocation(&b, &record(InvocationStatus::Pending, None));
        batch.put_invocation(&b, &record(InvocationStatus::Running, None));
        commit(&store, batch);
        // Separate commits folded into one writer group behave the same.
        rt().block_on(async {
            let mut first = WriteBatch::new();
            first.put_invocation(&b, &record(InvocationStatus::Suspended, None));
            let mut second = WriteBatch::new();
            second.put_invocation(&b, &record(InvocationStatus::Completed, Some(7)));
            let (x, y) = (store.writer.commit(first), store.writer.commit(second));
            x.await.unwrap();
            y.await.unwrap();
        });
        assert!(rows(&store, Table::Unfinished).is_empty());
        let mut expiry = vec![keys::expiry(&a, 5), keys::expiry(&b, 7)];
        expiry.sort();
        assert_eq!(rows(&store, Table::Expiry), expiry);
    }

    #[test]
    fn recovery_and_sweep_read_only_index_ranges() {
        const FINISHED: u64 = 5_000;
        const UNFINISHED: u64 = 10;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = now_ms();
        let mut batch = WriteBatch::new();
        let mut live = Vec::new();
        for i in 0..FINISHED {
            let status = [InvocationStatus::Completed, InvocationStatus::Failed][i as usize % 2];
            batch.put_invocation(&InvocationId::new(i), &record(status, Some(now + 3_600_000 + i)));
        }
        for i in 0..UNFINISHED {
            let id = InvocationId::new(i * 101);
            let status = [InvocationStatus::Pending, InvocationStatus::Scheduled][i as usize % 2];
            batch.put_invocation(&id, &record(status, None));
            live.push(id);
        }
        commit(&store, batch);

        let before = reads(&store);
        let started = std::time::Instant::now();
        let mut found: Vec<InvocationId> = store
            .unfinished_invocations(&|_| true)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let indexed = started.elapsed();
        let after = reads(&store);
        found.sort();
        live.sort();
        assert_eq!(found, live);
        assert_eq!(after.0 - before.0, UNFINISHED, "records read by recovery");
        assert_eq!(after.1 - before.1, UNFINISHED, "index rows read by recovery");
        // Only the owned partitions' ranges.
        let one = live[0].partition();
        assert_eq!(store.unfinished_invocations(&|p| p == one).unwrap().len(), 1);

        // Nothing has expired yet: the sweep reads nothing at all.
        let before = reads(&store);
        assert!(store.expired_invocations(now, 10_000).unwrap().is_empty());
        assert_eq!(reads(&store), before, "the sweep read rows with nothing expired");

        // Once some have: only those (and the limit holds).
        let before = reads(&store);
        let expired = store.expired_invocations(now + 3_600_000 + 99, 10_000).unwrap();
        assert_eq!(expired.len(), 100);
        assert_eq!(reads(&store).0 - before.0, 100);
        assert_eq!(store.expired_invocations(u64::MAX - 1, 250).unwrap().len(), 250);

        let started = std::time::Instant::now();
        let mut scanned = unfinished_by_full_scan(&store);
        let full = started.elapsed();
        scanned.sort();
        assert_eq!(scanned, live);
        eprintln!(
            "unfinished scan with {FINISHED} finished + {UNFINISHED} unfinished: index {:.2} ms, full scan {:.2} ms",
            indexed.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3
        );
    }

    /// `cargo test --lib measure_unfinished_scan -- --ignored --nocapture` (timings only).
    /// Each invocation is written as a real one is: unfinished first, finished later (so the
    /// `unfinished` index holds a tombstone per finished invocation until compaction drops it).
    #[test]
    #[ignore]
    fn measure_unfinished_scan_with_50k_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<InvocationId> = (0..50_000u64).map(InvocationId::new).collect();
        for status in [InvocationStatus::Running, InvocationStatus::Completed] {
            let mut batch = WriteBatch::new();
            for (i, id) in ids.iter().enumerate() {
                let expires = status.is_finished().then_some(u64::MAX - i as u64);
                batch.put_invocation(id, &record(status, expires));
            }
            commit(&store, batch);
        }
        for i in 0..10u64 {
            let mut batch = WriteBatch::new();
            batch.put_invocation(
                &InvocationId::new(100_000 + i * 7),
                &record(InvocationStatus::Suspended, None),
            );
            commit(&store, batch);
        }
        drop(store);
        let measure = |store: &Store, label: &str| {
            for round in 0..3 {
                let t = std::time::Instant::now();
                let full = unfinished_by_full_scan(store).len();
                let full_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = std::time::Instant::now();
                let indexed = store.unfinished_invocations(&|_| true).unwrap().len();
                let indexed_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = std::time::Instant::now();
                let expired = store.expired_invocations(now_ms(), 10_000).unwrap().len();
                let sweep_ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!((full, indexed, expired), (10, 10, 0));
                eprintln!(
                    "{label} round {round}: 50k finished + 10 unfinished: full scan {full_ms:.1} ms, \
                     index {indexed_ms:.2} ms, sweep (nothing expired) {sweep_ms:.2} ms"
                );
            }
        };
        // Reopen, as a restart does (memtables recovered from the journal).
        let store = reopen(dir.path());
        measure(&store, "after reopen");
        for keyspace in [
            &store.tables.unfinished,
            &store.tables.expiry,
            &store.tables.invocations,
        ] {
            keyspace.rotate_memtable_and_wait().unwrap();
            keyspace.major_compact().unwrap();
        }
        measure(&store, "after compaction");
    }

    #[test]
    fn the_sweep_drops_stale_expiry_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, orphan) = (InvocationId::new(9), InvocationId::new(10));
        let mut b = WriteBatch::new();
        b.put_invocation(&id, &record(InvocationStatus::Completed, Some(100)));
        commit(&store, b);
        // Rewritten with another deadline: the first row is stale.
        let mut b = WriteBatch::new();
        b.put_invocation(&id, &record(InvocationStatus::Completed, Some(200)));
        b.put(Table::Expiry, keys::expiry(&orphan, 50), vec![]);
        commit(&store, b);
        let found = store.expired(150, 10, &|_| true).unwrap();
        assert!(found.invocations.is_empty());
        let mut stale = found.stale_index_rows.clone();
        stale.sort();
        assert_eq!(stale, vec![keys::expiry(&id, 100), keys::expiry(&orphan, 50)]);
        let found = store.expired(250, 10, &|p| p == id.partition()).unwrap();
        assert_eq!(found.invocations.len(), 1);
        assert_eq!(found.stale_index_rows, vec![keys::expiry(&id, 100)]);
    }

    #[test]
    fn listing_unfinished_pages_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        let mut live = Vec::new();
        for i in 0..500u64 {
            let id = InvocationId::new(i);
            if i % 50 == 0 {
                batch.put_invocation(&id, &record(InvocationStatus::Running, None));
                live.push(id);
            } else {
                batch.put_invocation(&id, &record(InvocationStatus::Completed, Some(u64::MAX)));
            }
        }
        commit(&store, batch);
        live.sort_by_key(keys::invocation);
        let before = reads(&store);
        let first = store.list_unfinished_invocations(None, 4, |_, _| true).unwrap();
        let cursor = first.last().map(|(id, _)| *id);
        let rest = store
            .list_unfinished_invocations(cursor.as_ref(), 100, |_, _| true)
            .unwrap();
        assert_eq!(reads(&store).0 - before.0, live.len() as u64);
        let paged: Vec<InvocationId> = first.iter().chain(&rest).map(|(id, _)| *id).collect();
        assert_eq!(paged, live);
        // Same order and cursor as the full listing.
        let full: Vec<InvocationId> = store
            .list_invocations(None, 1000, |_, r| !r.status.is_finished())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(full, live);
    }

    #[test]
    fn opening_builds_missing_indexes_once() {
        let dir = tempfile::tempdir().unwrap();
        let (pending, done, forever, gone) = (
            InvocationId::new(1),
            InvocationId::new(2),
            InvocationId::new(3),
            InvocationId::new(4),
        );
        {
            let store = Store::open(dir.path()).unwrap();
            // A fresh directory gets the marker (and nothing else).
            assert_eq!(
                store.cluster_value("index_version").unwrap(),
                Some(INDEX_VERSION.to_be_bytes().to_vec())
            );
            // What an older version left: records without index rows, no marker, plus an index
            // row that no record backs.
            let mut raw = WriteBatch::new();
            raw.put(
                Table::Invocations,
                keys::invocation(&pending),
                encode(&record(InvocationStatus::Suspended, None)),
            );
            raw.put(
                Table::Invocations,
                keys::invocation(&done),
                encode(&record(InvocationStatus::Completed, Some(500))),
            );
            raw.put(
                Table::Invocations,
                keys::invocation(&forever),
                encode(&record(InvocationStatus::Killed, None)),
            );
            raw.put(Table::Unfinished, keys::unfinished(&gone), vec![]);
            raw.delete(Table::Cluster, INDEX_VERSION_KEY.to_vec());
            commit(&store, raw);
            assert!(store.unfinished_invocations(&|_| true).unwrap().is_empty());
            assert!(store.cluster_value("index_version").unwrap().is_none());
        }
        for _ in 0..2 {
            let store = reopen(dir.path());
            assert!(store.cluster_value("index_version").unwrap().is_some());
            assert_eq!(rows(&store, Table::Unfinished), vec![keys::unfinished(&pending)]);
            assert_eq!(rows(&store, Table::Expiry), vec![keys::expiry(&done, 500)]);
            let unfinished = store.unfinished_invocations(&|_| true).unwrap();
            assert_eq!(unfinished.len(), 1);
            assert_eq!(unfinished[0].0, pending);
            let expired = store.expired_invocations(500, 10).unwrap();
            assert_eq!(expired.len(), 1);
            assert_eq!(expired[0].0, done);
        }
    }

    #[test]
    fn partition_moves_carry_the_indexes() {
        // Wire positions of the older tables are unchanged; the indexes are appended.
        assert_eq!(
            Table::PARTITIONED[..8],
            [
                Table::Invocations,
                Table::Journal,
                Table::State,
                Table::Inbox,
                Table::Idempotency,
                Table::Outbox,
                Table::Timers,
                Table::Promises,
            ]
        );
        assert!(Table::PARTITIONED.contains(&Table::Unfinished));
        assert!(Table::PARTITIONED.contains(&Table::Expiry));
        assert!(Table::PARTITIONED.iter().all(|t| t.is_partitioned()));

        // Copy one partition the way a hand-off does (export rows, import with a move batch).
        let (from_dir, to_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from = Store::open(from_dir.path()).unwrap();
        let (live, done) = (InvocationId::new(77), InvocationId::new(77 + 1024));
        assert_eq!(live.partition(), done.partition());
        let p = live.partition();
        let mut batch = WriteBatch::new();
        batch.put_invocation(&live, &record(InvocationStatus::Pending, None));
        batch.put_invocation(&done, &record(InvocationStatus::Completed, Some(10)));
        commit(&from, batch);
        assert!(!from.partition_is_empty(Table::Unfinished, p).unwrap());
        assert!(from.partition_is_empty(Table::Unfinished, p + 1).unwrap());

        let to = Store::open_gated(to_dir.path(), Arc::new(PartitionGate::new(PartitionState::Remote))).unwrap();
        let mut import = WriteBatch::for_partition_move();
        for table in Table::PARTITIONED {
            for (k, v) in from.partition_rows(table, p).unwrap() {
                import.put(table, k, v);
            }
        }
        commit(&to, import);
        let unfinished = to.unfinished_invocations(&|q| q == p).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].0, live);
        assert_eq!(to.expired_invocations(10, 10).unwrap()[0].0, done);

        // A store that does not own the partition refuses index writes like any other.
        let mut b = WriteBatch::new();
        b.put_invocation(&live, &record(InvocationStatus::Running, None));
        assert!(matches!(
            rt().block_on(to.writer.commit(b)),
            Err(StorageError::NotOwner(_))
        ));
    }
}
