//! The partition log: the only way a batch reaches storage. Every batch is one partition's
//! (plus unpartitioned metadata) — the unit a replicated log per partition will carry — and
//! is checked against the partition gate in commit order. Group commit: one thread drains
//! every pending batch, of any partitions, into one fjall batch and one fdatasync, then
//! completes all their waiters. Nothing is acknowledged before its batch is on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use fjall::PersistMode;
use tokio::sync::oneshot;

use super::batch::{Op, WriteBatch};
use super::gate::PartitionGate;
use super::{StorageError, Tables};

struct Request {
    batch: WriteBatch,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// Counters of the log, for metrics and benchmarks.
#[derive(Default)]
pub struct LogStats {
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Bytes of keys and values committed (what the journal must hold and replay).
    pub bytes: AtomicU64,
}

/// Handle to the log's group-commit thread. Cheap to clone.
#[derive(Clone)]
pub struct PartitionLog {
    tx: SyncSender<Request>,
    pub stats: Arc<LogStats>,
    /// Writes that ride with the next group commit (`piggyback`).
    lazy: Arc<Mutex<Vec<Op>>>,
}

/// Batches waiting for the log thread beyond which `append` answers `Overloaded`.
const QUEUE_CAPACITY: usize = 65_536;
/// Largest number of commits folded into one fdatasync.
const GROUP_MAX: usize = 4096;
/// Piggybacked writes held before they are committed on their own.
const LAZY_MAX: usize = 4096;
/// Bytes committed after which every table's memtable is sealed and flushed in the
/// background: on open, fjall re-inserts only what is not flushed, so this bounds that part of
/// a restart after a crash (fjall's own trigger is 64 MiB per table).
const FLUSH_AFTER_BYTES: u64 = 16 * 1024 * 1024;

impl PartitionLog {
    pub(super) fn start(tables: Tables, gate: Arc<PartitionGate>, dir: std::path::PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let stats = Arc::new(LogStats::default());
        let lazy = Arc::new(Mutex::new(Vec::new()));
        let (thread_stats, thread_lazy) = (stats.clone(), lazy.clone());
        std::thread::Builder::new()
            .name("kiln-partition-log".into())
            .spawn(move || run(tables, rx, thread_stats, thread_lazy, gate, &dir))
            .expect("spawn partition log thread");
        Self { tx, stats, lazy }
    }

    /// Queues writes a crash may lose without harm — the deletion of an outbox row whose
    /// message took effect: sent again, it is dropped as a duplicate. They join the next group
    /// commit and never cost an fdatasync of their own (past `LAZY_MAX` they are committed
    /// alone). Nothing waits for them; the partition gate still decides.
    pub fn piggyback(&self, batch: WriteBatch) {
        let mut lazy = self.lazy.lock().expect("lazy lock");
        lazy.extend(batch.ops);
        if lazy.len() >= LAZY_MAX {
            let ops = std::mem::take(&mut *lazy);
            drop(lazy);
            // Committed alone, one batch per partition (queue full: lost, harmlessly).
            for batch in (WriteBatch {
                ops,
                bypass_gate: false,
            })
            .into_partitions()
            {
                let (done, _) = oneshot::channel();
                let _ = self.tx.try_send(Request { batch, done });
            }
        }
    }

    /// Appends `batch` (one partition's); the returned future resolves once it is
    /// fdatasync'ed, or with the reason it was refused.
    pub fn append(&self, batch: WriteBatch) -> impl std::future::Future<Output = Result<(), StorageError>> + 'static {
        let (done, rx) = oneshot::channel();
        let queued = match self.tx.try_send(Request { batch, done }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(StorageError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StorageError::Stopped),
        };
        async move {
            match queued {
                Ok(rx) => rx.await.unwrap_or(Err(StorageError::Stopped)),
                Err(e) => Err(e),
            }
        }
    }

    /// `append`, waiting out a full queue (`Overloaded`) with back-off; any other refusal or
    /// failure is returned. Dropping the future gives up.
    pub async fn append_retrying(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut delay = std::time::Duration::from_millis(10);
        loop {
            match self.append(batch.clone()).await {
                Err(StorageError::Overloaded) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }
}

/// Why the log refuses `batch`, if it does: it writes more than one partition (each batch
/// is one partition's, the unit a replicated log per partition would carry), or a partition the
/// gate does not mark `Owned`. Partition moves bypass both.
fn refusal(batch: &WriteBatch, gate: &PartitionGate) -> Option<StorageError> {
    if batch.bypass_gate {
        return None;
    }
    let mut written: Option<u16> = None;
    for partition in batch.ops.iter().filter_map(Op::partition) {
        match written {
            Some(first) if first != partition => return Some(StorageError::SpansPartitions(first, partition)),
            Some(_) => {}
            None => {
                if !gate.owns(partition) {
                    return Some(StorageError::NotOwner(partition));
                }
                written = Some(partition);
            }
        }
    }
    None
}

fn run(
    tables: Tables,
    rx: Receiver<Request>,
    stats: Arc<LogStats>,
    lazy: Arc<Mutex<Vec<Op>>>,
    gate: Arc<PartitionGate>,
    dir: &std::path::Path,
) {
    let mut group: Vec<Request> = Vec::with_capacity(GROUP_MAX);
    let mut unflushed = 0u64;
    let admit = |request: Request, group: &mut Vec<Request>| match refusal(&request.batch, &gate) {
        // Checked here, in commit order: once a partition is closed and a later (empty) commit
        // has returned, nothing more of it reaches disk.
        Some(refused) => {
            if let StorageError::SpansPartitions(..) = refused {
                tracing::error!(error = %refused, "batch refused");
            }
            let _ = request.done.send(Err(refused));
        }
        None => group.push(request),
    };
    while let Ok(first) = rx.recv() {
        admit(first, &mut group);
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(next) => admit(next, &mut group),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        let _span = tracing::trace_span!("storage.commit", commits = group.len()).entered();
        let mut batch = tables.db.batch().durability(Some(PersistMode::SyncData));
        // Piggybacked writes first; one of a partition that moved away is dropped (its new
        // owner sends the message again).
        let riders = std::mem::take(&mut *lazy.lock().expect("lazy lock"));
        let ops: Vec<Op> = riders
            .into_iter()
            .filter(|op| op.partition().is_none_or(|p| gate.owns(p)))
            .chain(group.iter_mut().flat_map(|r| r.batch.ops.drain(..)))
            .collect();
        let mut bytes = 0;
        for op in last_writes(ops) {
            bytes += match &op {
                Op::Put(_, k, v) => k.len() + v.len(),
                Op::Delete(_, k) => k.len(),
            } as u64;
            match op {
                Op::Put(t, k, v) => batch.insert(tables.get(t), k, v),
                Op::Delete(t, k) => batch.remove(tables.get(t), k),
            }
        }
        let result = batch.commit().map_err(|e| StorageError::Io(e.to_string()));
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        unflushed += bytes;
        if unflushed >= FLUSH_AFTER_BYTES {
            unflushed = 0;
            tables.seal_memtables();
        }
        stats.commits.fetch_add(group.len() as u64, Ordering::Relaxed);
        let failed = result.as_ref().err().map(|e| e.to_string());
        for request in group.drain(..) {
            let _ = request.done.send(result.clone());
        }
        if let Some(error) = failed {
            // A failed fdatasync leaves the page cache in an unknown state: fail-stop rather
            // than acknowledge anything that might not be on disk.
            let why = super::disk::explain_write_failure(&error, dir);
            tracing::error!(error = %why, "storage.commit_failed; stopping the node");
            std::process::exit(70);
        }
    }
}

/// The ops of a group with every write of a key but its last one dropped. The group commits
/// atomically, so only the last write of a key can be observed; the others would only cost
/// journal bytes (a call written with its first commit writes its record three times: created,
/// running, finished) and replay time at the next start.
fn last_writes(ops: Vec<Op>) -> Vec<Op> {
    if ops.len() < 2 {
        return ops;
    }
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    let keep: Vec<bool> = ops
        .iter()
        .rev()
        .map(|op| {
            let (table, key) = op.target();
            seen.insert((table as u8, key))
        })
        .collect();
    ops.into_iter()
        .zip(keep.into_iter().rev())
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Table;

    #[test]
    fn only_the_last_write_of_a_key_is_kept() {
        let put = |t, k: &[u8], v: &[u8]| Op::Put(t, k.to_vec(), v.to_vec());
        let del = |t, k: &[u8]| Op::Delete(t, k.to_vec());
        let ops = vec![
            put(Table::Invocations, b"a", b"created"),
            put(Table::Inbox, b"q", b""),
            put(Table::Invocations, b"a", b"running"),
            put(Table::Journal, b"a", b"entry"), // same key, other table: kept
            put(Table::Invocations, b"a", b"finished"),
            del(Table::Inbox, b"q"),
        ];
        let kept: Vec<String> = last_writes(ops)
            .iter()
            .map(|op| match op {
                Op::Put(t, k, v) => format!(
                    "put {t:?} {} {}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                ),
                Op::Delete(t, k) => format!("del {t:?} {}", String::from_utf8_lossy(k)),
            })
            .collect();
        assert_eq!(
            kept,
            ["put Journal a entry", "put Invocations a finished", "del Inbox q"]
        );
    }
}
