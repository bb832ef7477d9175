//! The metadata group's Raft log and vote, in the `raft` table of the node's store. Every write
//! goes through the partition log (`PartitionLog::append`: fdatasync'ed, in a group commit with
//! the node's other batches), so an entry is readable and on disk when `append` returns.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::RaftLogReader;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::MetaConfig;
use crate::storage::{blocking, encode, StorageError, Store, Table, WriteBatch};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
/// Entries: `log/` + the index, big-endian (key order is index order).
const LOG: &[u8] = b"log/";
const LOG_END: &[u8] = b"log0"; // '0' follows '/'

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = LOG.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(bytes).map_err(io_error)
}

/// The log store: a handle on the node's store (cheap to clone; the reader is a clone).
#[derive(Clone)]
pub struct MetaLog {
    store: Store,
}

impl MetaLog {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> io::Result<T> {
        blocking(&self.store, read).await.map_err(io_error)
    }

    async fn value<T: DeserializeOwned + Send + 'static>(&self, key: &'static [u8]) -> io::Result<Option<T>> {
        match self.read(move |s| s.raft_value(key)).await? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    async fn commit(&self, batch: WriteBatch) -> io::Result<()> {
        self.store.log.append_retrying(batch).await.map_err(io_error)
    }

    async fn put<T: Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Table::Raft, key.to_vec(), encode(value));
        self.commit(batch).await
    }

    /// Deletes the entries with index in `from..to` (key order).
    async fn delete_entries(&self, from: Vec<u8>, to: Vec<u8>, extra: WriteBatch) -> io::Result<()> {
        let rows = self.read(move |s| s.raft_rows(&from, &to)).await?;
        let mut batch = extra;
        for (key, _) in rows {
            batch.delete(Table::Raft, key);
        }
        self.commit(batch).await
    }
}

impl RaftLogReader<MetaConfig> for MetaLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<MetaConfig>>, io::Error> {
        let from = match range.start_bound() {
            Bound::Included(i) => entry_key(*i),
            Bound::Excluded(i) => entry_key(i.saturating_add(1)),
            Bound::Unbounded => LOG.to_vec(),
        };
        let to = match range.end_bound() {
            Bound::Included(i) if *i == u64::MAX => LOG_END.to_vec(),
            Bound::Included(i) => entry_key(i + 1),
            Bound::Excluded(i) => entry_key(*i),
            Bound::Unbounded => LOG_END.to_vec(),
        };
        if from >= to {
            return Ok(Vec::new());
        }
        let rows = self.read(move |s| s.raft_rows(&from, &to)).await?;
        rows.iter().map(|(_, v)| decode(v)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<MetaConfig>>, io::Error> {
        self.value(VOTE).await
    }
}

impl RaftLogStorage<MetaConfig> for MetaLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MetaConfig>, io::Error> {
        let purged: Option<LogIdOf<MetaConfig>> = self.value(PURGED).await?;
        let last = self.read(|s| s.raft_last_row(LOG, LOG_END)).await?;
        let last_log_id = match last {
            Some((_, v)) => Some(decode::<EntryOf<MetaConfig>>(&v)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<MetaConfig>) -> Result<(), io::Error> {
        self.put(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<MetaConfig>>) -> Result<(), io::Error> {
        self.put(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<MetaConfig>>, io::Error> {
        Ok(self.value::<Option<LogIdOf<MetaConfig>>>(COMMITTED).await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<MetaConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<MetaConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(Table::Raft, entry_key(entry.log_id.index), encode(&entry));
        }
        // Readable and durable at once: the commit is one fdatasync'ed batch.
        let result = self.commit(batch).await;
        callback.io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
        );
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<MetaConfig>>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(id) => entry_key(id.index + 1),
            None => LOG.to_vec(),
        };
        self.delete_entries(from, LOG_END.to_vec(), WriteBatch::new()).await
    }

    async fn purge(&mut self, log_id: LogIdOf<MetaConfig>) -> Result<(), io::Error> {
        let mut marker = WriteBatch::new();
        marker.put(Table::Raft, PURGED.to_vec(), encode(&log_id));
        self.delete_entries(LOG.to_vec(), entry_key(log_id.index + 1), marker)
            .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::*;
    use crate::metadata::MetaMachine;

    /// Each case of openraft's suite gets a store of its own, on a fresh data dir (kept alive
    /// by the returned guard).
    struct Fresh;

    impl StoreBuilder<MetaConfig, MetaLog, MetaMachine, tempfile::TempDir> for Fresh {
        async fn build(&self) -> Result<(tempfile::TempDir, MetaLog, MetaMachine), StorageError<MetaConfig>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path()).expect("store");
            let machine = MetaMachine::open(store.clone()).expect("machine");
            Ok((dir, MetaLog::new(store), machine))
        }
    }

    /// openraft's conformance suite for log stores and state machines, on fjall.
    #[test]
    fn passes_openraft_storage_suite() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { Suite::test_all(Fresh).await })
            .expect("openraft storage suite");
    }
}
