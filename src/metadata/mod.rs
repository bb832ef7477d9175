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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;

pub use log::MetaLog;
pub use machine::MetaMachine;
pub use network::{propose_at, MetaNetwork, SnapshotRequest};
pub use state::{MetaCommand, MetaResponse, MetaState};

use crate::ids::stable_hash;
use crate::placement::Membership;
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

/// The replicas a membership calls for: every member's (id → peer address), and the voters —
/// three (five from five members on), members that are not leaving first, by node id; the rest
/// are learners with a local, consistent copy.
pub fn replicas_of(membership: &Membership) -> (BTreeMap<NodeId, String>, BTreeSet<NodeId>) {
    let all: BTreeMap<NodeId, String> = membership
        .members
        .iter()
        .map(|m| (replica_id(&m.id), m.peer_addr.clone()))
        .collect();
    let count = if membership.members.len() >= 5 { 5 } else { 3 };
    let mut ranked: Vec<&crate::placement::Member> = membership.members.iter().collect();
    ranked.sort_by_key(|m| (m.state == crate::placement::MemberState::Leaving, m.id.clone()));
    let voters = ranked.iter().take(count).map(|m| replica_id(&m.id)).collect();
    (all, voters)
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

    /// Whether this replica belongs to a group yet (a node that never was part of a cluster
    /// does not: it is given one when it joins, or makes one when it first adds a node).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// The leader's peer address, if this replica knows one.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        metrics.membership_config.get_node(&leader).map(|n| n.addr.clone())
    }

    /// Waits (up to `timeout`) until some replica leads.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), MetaError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.raft.metrics().borrow_watched().current_leader.is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::NotLeader { leader: None });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// On the leader: makes the group's replicas the cluster's members (id → peer address):
    /// the first `VOTERS` by id vote, the rest learn; replicas of nodes no longer members are
    /// removed. One step per call (a learner is added, or the voters replaced); call again
    /// until it answers `false` (nothing left to do).
    pub async fn reconcile(
        &self,
        members: &BTreeMap<NodeId, String>,
        voters: &BTreeSet<NodeId>,
    ) -> Result<bool, MetaError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        for (id, addr) in members {
            if !known.contains(id) {
                self.raft
                    .add_learner(*id, BasicNode { addr: addr.clone() }, false)
                    .await?;
                return Ok(true);
            }
        }
        let current_voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if &current_voters != voters {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
                .await?;
            return Ok(true);
        }
        let gone: BTreeSet<NodeId> = known.iter().filter(|id| !members.contains_key(id)).copied().collect();
        if !gone.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::MemberState;

    fn members(n: usize) -> Membership {
        Membership::initial((1..=n).map(|i| (format!("n{i}"), format!("127.0.0.1:{i}"))).collect())
    }

    #[test]
    fn three_voters_five_from_five_members_on_the_rest_learn() {
        // (members, voters)
        for (n, voters) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (7, 5)] {
            let (all, chosen) = replicas_of(&members(n));
            assert_eq!(all.len(), n);
            assert_eq!(chosen.len(), voters, "{n} members");
            assert!(chosen.iter().all(|id| all.contains_key(id)));
        }
    }

    #[test]
    fn leaving_members_vote_last() {
        let mut m = members(4);
        m.members[0].state = MemberState::Leaving; // n1
        let (_, voters) = replicas_of(&m);
        assert!(!voters.contains(&replica_id("n1")));
        assert_eq!(voters, ["n2", "n3", "n4"].iter().map(|id| replica_id(id)).collect());
    }
}
