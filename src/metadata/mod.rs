//! The metadata group: the cluster's membership, partition owners and ring epoch held by one
//! Raft group (openraft), so that every change is a proposal ordered by consensus and
//! conditioned on the state it was computed from (`state`), and none acknowledged is lost.
//! Replicas keep the log and the applied state in the node's own store (`log`, `machine`) and
//! talk over the node-to-node endpoint (`network`; served by `cluster::raft`).
//!
//! openraft 0.10 is an alpha: only this module names it, so an upgrade touches one place.
//! Timeouts are set for 2 busy cores (heartbeat 100 ms, election 0.5–1 s, pre-vote on).

mod log;
mod machine;
mod network;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::watch;

pub use log::MetaLog;
pub use machine::MetaMachine;
pub use network::{MetaNetwork, SnapshotRequest};
pub use state::{MetaCommand, MetaResponse, MetaState};

use crate::ids::stable_hash;
use crate::storage::Store;

openraft::declare_raft_types!(
    /// The metadata group's types: commands and answers of `state`, nodes by their peer address.
    pub MetaConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = BasicNode,
);

pub type NodeId = u64;
pub type MetaRaft = openraft::Raft<MetaConfig, MetaMachine>;

/// A node's replica id in the group, from its node id (stable across restarts).
pub fn replica_id(node_id: &str) -> NodeId {
    stable_hash(&[b"kiln-metadata-replica", node_id.as_bytes()])
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("not the metadata leader; the leader is {leader:?}")]
    NotLeader { leader: Option<String> },
    #[error("metadata group: {0}")]
    Raft(String),
}

impl From<RaftError<MetaConfig, ClientWriteError<MetaConfig>>> for MetaError {
    fn from(e: RaftError<MetaConfig, ClientWriteError<MetaConfig>>) -> Self {
        match e.forward_to_leader() {
            Some(forward) => MetaError::NotLeader {
                leader: forward.leader_node.as_ref().map(|n| n.addr.clone()),
            },
            None => MetaError::Raft(e.to_string()),
        }
    }
}

/// This node's replica of the metadata group.
pub struct MetaGroup {
    pub raft: MetaRaft,
    machine: MetaMachine,
}

impl MetaGroup {
    /// Starts this node's replica on `store` (resuming what it holds).
    pub async fn start(id: NodeId, store: Store) -> Result<Self, MetaError> {
        let config = openraft::Config {
            cluster_name: "kiln-metadata".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::Raft(e.to_string()))?;
        let machine = MetaMachine::open(store.clone()).map_err(|e| MetaError::Raft(e.to_string()))?;
        let raft = MetaRaft::new(id, Arc::new(config), MetaNetwork, MetaLog::new(store), machine.clone())
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(Self { raft, machine })
    }

    /// Makes the group of these voters (id → peer address), unless this replica already
    /// belongs to one. Called on one node only, once.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, String>) -> Result<(), MetaError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> =
            voters.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
        self.raft
            .initialize(nodes)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))
    }

    /// Proposes `command`; answers once it is committed and applied (on this node, the
    /// leader). A follower answers `NotLeader` with the leader's address.
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResponse, MetaError> {
        Ok(self.raft.client_write(command).await?.data)
    }

    /// The state as applied on this replica.
    pub fn state(&self) -> MetaState {
        self.machine.subscribe().borrow().clone()
    }

    /// Follows the state as applied on this replica.
    pub fn subscribe(&self) -> watch::Receiver<MetaState> {
        self.machine.subscribe()
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
