//! Who is in the cluster and which node owns which partition, versioned by the ring epoch.
//!
//! The consistent-hash ring gives each partition a *target* node; `owners` records the
//! *actual* owner, which only the current owner changes (one hand-off at a time), so a
//! rebalance is just "move every partition whose owner differs from its target".

use std::hash::Hasher;

use consistent_hash::{Node as RingNode, RingHash, StaticHashRing};
use serde::{Deserialize, Serialize};

use crate::ids::PARTITIONS_COUNT;
use crate::storage::StorageError;

/// Virtual nodes per node on the ring.
pub const VIRTUAL_NODES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Placed on the ring; owns (or will own) partitions.
    Active,
    /// Added; partitions are moving to it.
    Joining,
    /// Leaving gracefully; its partitions are moving away. Not on the ring.
    Leaving,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Address of its node-to-node endpoint.
    pub peer_addr: String,
    pub state: MemberState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub epoch: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
    /// Owner node id of each partition (index = partition).
    pub owners: Vec<String>,
    /// Partitions the running rebalance set out to move (0 when none runs), for progress.
    pub rebalance_total: u32,
}

/// FNV-1a over the explicit big-endian bytes `Hash` feeds it, then a 64-bit finaliser so
/// short inputs still spread over the ring. Stable across builds and platforms, unlike
/// `DefaultHasher`.
#[derive(Clone, Copy)]
pub struct StableRingHash;

struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write(&n.to_be_bytes());
    }
    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_be_bytes());
    }
    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_be_bytes());
    }
    fn write_usize(&mut self, n: usize) {
        self.write(&(n as u64).to_be_bytes());
    }
    fn finish(&self) -> u64 {
        // splitmix64 finaliser
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl RingHash for StableRingHash {
    fn hash_item<T: std::hash::Hash>(&self, item: &T) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        item.hash(&mut h);
        h.finish()
    }
}

impl Membership {
    /// The first membership of a cluster of `members` (all active), owners from the ring.
    pub fn initial(members: Vec<(String, String)>) -> Self {
        let mut members: Vec<Member> = members
            .into_iter()
            .map(|(id, peer_addr)| Member {
                id,
                peer_addr,
                state: MemberState::Active,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        let mut m = Self {
            epoch: 1,
            members,
            owners: Vec::new(),
            rebalance_total: 0,
        };
        m.owners = m.targets();
        m
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn owner(&self, partition: u16) -> &str {
        &self.owners[partition as usize]
    }

    /// Nodes on the ring: every member that is not leaving.
    fn ring_ids(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.state != MemberState::Leaving)
            .map(|m| m.id.as_str())
            .collect()
    }

    /// Target owner of every partition, from the consistent-hash ring.
    pub fn targets(&self) -> Vec<String> {
        let ids = self.ring_ids();
        if ids.is_empty() {
            return self.owners.clone();
        }
        let ring = StaticHashRing::new(
            StableRingHash,
            ids.iter().map(|id| RingNode::new(*id).quantity(VIRTUAL_NODES)),
        );
        (0..PARTITIONS_COUNT as u16)
            .map(|p| {
                let node = ring.calc_candidates(&p).next().expect("ring has nodes");
                node.key.to_string()
            })
            .collect()
    }

    /// Position of every virtual node on the ring: (node id, position).
    pub fn virtual_nodes(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .ring_ids()
            .into_iter()
            .flat_map(|id| (0..VIRTUAL_NODES).map(move |v| (id.to_owned(), StableRingHash.hash_vnode(&id, v))))
            .collect();
        out.sort_by_key(|(_, pos)| *pos);
        out
    }

    /// Partitions whose owner differs from their target: what a rebalance still has to move.
    pub fn misplaced(&self) -> Vec<u16> {
        let targets = self.targets();
        (0..PARTITIONS_COUNT as u16)
            .filter(|p| targets[*p as usize] != self.owners[*p as usize])
            .collect()
    }

    pub fn partitions_of(&self, id: &str) -> usize {
        self.owners.iter().filter(|o| *o == id).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    #[error("node {0:?} is not a member of the cluster")]
    UnknownNode(String),
    #[error("cannot add node {id:?} at {peer_addr}: {reason}")]
    NotJoinable {
        id: String,
        peer_addr: String,
        reason: String,
    },
    #[error("node {id:?} is already a member at {peer_addr}")]
    AddressMismatch { id: String, peer_addr: String },
    #[error("cannot remove {0:?}: it is the last node on the ring")]
    LastNode(String),
    #[error("stale ring epoch {got}: this node is at epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("this node is not a member of a cluster yet")]
    NotMember,
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::initial(vec![
            ("n1".into(), "a:1".into()),
            ("n2".into(), "a:2".into()),
            ("n3".into(), "a:3".into()),
        ])
    }

    #[test]
    fn placement_is_stable_and_balanced() {
        let m = three();
        assert_eq!(m.owners, three().owners, "same members, same placement");
        for id in ["n1", "n2", "n3"] {
            let n = m.partitions_of(id);
            assert!((200..500).contains(&n), "{id} owns {n} of 1024");
        }
    }

    #[test]
    fn adding_a_node_moves_only_partitions_to_it() {
        let mut m = three();
        m.members.push(Member {
            id: "n4".into(),
            peer_addr: "a:4".into(),
            state: MemberState::Joining,
        });
        let moved = m.misplaced();
        let targets = m.targets();
        assert!(moved.iter().all(|p| targets[*p as usize] == "n4"));
        assert!((150..400).contains(&moved.len()), "moved {}", moved.len());
    }

    #[test]
    fn a_leaving_node_gives_everything_away() {
        let mut m = three();
        m.members[2].state = MemberState::Leaving;
        let targets = m.targets();
        assert!(targets.iter().all(|t| t != "n3"));
        assert_eq!(m.misplaced().len(), m.partitions_of("n3"));
    }
}
