//! The metadata group's state machine: applies committed commands with `MetaState::apply` and
//! keeps the result, with the last applied log id and Raft membership, in the `raft` table —
//! written before any answer leaves, so a restarted node resumes where it stopped. Snapshots
//! are that same record, encoded.

use std::io;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{MetaResponse, MetaState};
use super::MetaConfig;
use crate::storage::{blocking, encode, Store, Table, WriteBatch};

const APPLIED: &[u8] = b"applied";
const SNAPSHOT: &[u8] = b"snapshot";

/// What the state machine holds: the state and how far the log has been applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<MetaConfig>>,
    last_membership: StoredMembershipOf<MetaConfig>,
    state: MetaState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<MetaConfig>,
    data: Vec<u8>,
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The state machine (cheap to clone: the snapshot builder is a clone).
#[derive(Clone)]
pub struct MetaMachine {
    store: Store,
    applied: Arc<Mutex<Applied>>,
    /// The applied state, for readers on this node.
    watch: Arc<watch::Sender<MetaState>>,
}

impl MetaMachine {
    /// Opens the machine from what `store` holds.
    pub fn open(store: Store) -> Result<Self, io::Error> {
        let applied: Applied = match store.raft_value(APPLIED).map_err(io_error)? {
            Some(bytes) => rmp_serde::from_slice(&bytes).map_err(io_error)?,
            None => Applied::default(),
        };
        let (watch, _) = watch::channel(applied.state.clone());
        Ok(Self {
            store,
            applied: Arc::new(Mutex::new(applied)),
            watch: Arc::new(watch),
        })
    }

    /// Follows the applied state.
    pub fn subscribe(&self) -> watch::Receiver<MetaState> {
        self.watch.subscribe()
    }

    fn snapshot_of(&self) -> Applied {
        self.applied.lock().expect("machine lock").clone()
    }

    async fn persist(&self, applied: Applied, extra: WriteBatch) -> io::Result<()> {
        let mut batch = extra;
        batch.put(Table::Raft, APPLIED.to_vec(), encode(&applied));
        self.store.log.append_retrying(batch).await.map_err(io_error)?;
        let state = applied.state.clone();
        *self.applied.lock().expect("machine lock") = applied;
        self.watch.send_replace(state);
        Ok(())
    }
}

impl RaftSnapshotBuilder<MetaConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MetaConfig, Vec<u8>>, io::Error> {
        let applied = self.snapshot_of();
        let meta = SnapshotMetaOf::<MetaConfig> {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership.clone(),
        };
        let data = encode(&applied);
        let mut batch = WriteBatch::new();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        batch.put(Table::Raft, SNAPSHOT.to_vec(), encode(&stored));
        self.store.log.append_retrying(batch).await.map_err(io_error)?;
        Ok(SnapshotOf::<MetaConfig, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<MetaConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<MetaConfig>>, StoredMembershipOf<MetaConfig>), io::Error> {
        let applied = self.snapshot_of();
        Ok((applied.last_applied, applied.last_membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<MetaConfig>, io::Error>> + Unpin + Send,
    {
        let mut applied = self.snapshot_of();
        let mut answers = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            applied.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => MetaResponse::Nothing,
                EntryPayload::Normal(command) => applied.state.apply(command),
                EntryPayload::Membership(membership) => {
                    applied.last_membership =
                        StoredMembershipOf::<MetaConfig>::new(Some(entry.log_id), membership.clone());
                    MetaResponse::Nothing
                }
            };
            answers.push((responder, response));
        }
        // Durable before anyone hears of it.
        self.persist(applied, WriteBatch::new()).await?;
        for (responder, response) in answers {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<MetaConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let applied: Applied = rmp_serde::from_slice(&snapshot).map_err(io_error)?;
        let mut batch = WriteBatch::new();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        batch.put(Table::Raft, SNAPSHOT.to_vec(), encode(&stored));
        self.persist(applied, batch).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<MetaConfig, Vec<u8>>>, io::Error> {
        let stored = blocking(&self.store, |s| s.raft_value(SNAPSHOT))
            .await
            .map_err(io_error)?;
        match stored {
            Some(bytes) => {
                let stored: StoredSnapshot = rmp_serde::from_slice(&bytes).map_err(io_error)?;
                Ok(Some(SnapshotOf::<MetaConfig, Vec<u8>> {
                    meta: stored.meta,
                    snapshot: stored.data,
                }))
            }
            None => Ok(None),
        }
    }
}
