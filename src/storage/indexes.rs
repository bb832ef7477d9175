//! The derived indexes of invocations: `unfinished` (live work) and `expiry` (finished ones by
//! the end of their retention). `index_rows` is their one definition; `WriteBatch::put_invocation`
//! keeps them in step with each record in the same batch; the reads here are what recovery, the
//! sweep and live listings use, so their cost follows live work, not history.

use std::collections::HashSet;

use fjall::{PersistMode, Readable};

use super::{decode, keys, InvocationRecord, StorageError, Store, Tables};
use crate::ids::InvocationId;

/// Key ranges `[a] .. [b+1]` covering each run of consecutive partitions `owned` selects (all
/// partitions: one range), for scans of a table whose keys start with the partition.
pub(super) fn owned_runs(owned: &dyn Fn(u16) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
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
pub(super) const INDEX_VERSION_KEY: &[u8] = b"index_version";
/// Bump to rebuild the indexes on the next open (after changing what they hold).
pub(super) const INDEX_VERSION: u64 = 1;

/// The index rows a record has: its `unfinished` key (if not finished) and its `expiry` key
/// (if finished with a deadline). The one definition of the indexes (writes and migration).
pub(super) fn index_rows(id: &InvocationId, record: &InvocationRecord) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    if record.status.is_finished() {
        (None, record.expires_at_ms.map(|at| keys::expiry(id, at)))
    } else {
        (Some(keys::unfinished(id)), None)
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

impl Store {
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
}

/// Builds the `unfinished` and `expiry` indexes of a data directory that has none yet (written
/// before they existed, or after a change of `INDEX_VERSION`): one full scan of `invocations`,
/// then one batch with every index row and the marker. A fresh directory only gets the marker.
///
/// Runs in `open_gated` before the log thread starts, committing its own `SyncData` batch
/// directly: nothing else writes yet, so the single-writer rule holds, and going through the
/// log is not possible here — its commit is async and the gate of a starting node refuses
/// every partition (it owns none until the membership is read). The batch is atomic: a crash
/// leaves no marker and the next open builds again.
pub(super) fn build_indexes(tables: &Tables) -> Result<(), StorageError> {
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
        let (u, e) = index_rows(&id, &record);
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
