//! Placement: which node serves which partition, who is alive, and how nodes talk (`client`,
//! the node-to-node protocol) — what the node reads to route. Changing it (gossip, hand-offs,
//! the endpoint that serves other nodes) is `cluster`, above the node. See docs/cluster.md.

pub mod client;
pub mod liveness;
pub mod membership;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use liveness::{PeerStatus, Probe, View, PING_INTERVAL};
pub use membership::{Member, MemberState, Membership, RebalanceError, VIRTUAL_NODES};

use crate::ids::PARTITIONS_COUNT;
use crate::storage::{encode, PartitionGate, PartitionState, StorageError, Store, Table, WriteBatch};

const MEMBERSHIP_KEY: &str = "membership";
/// How often a wait on another node looks whether that node died.
const DEATH_POLL: Duration = Duration::from_millis(50);

/// Where a partition is served from, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Local,
    /// Being handed off by this node: wait, then route again.
    Moving,
    Remote(Peer),
}

/// Another node, as far as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub peer_addr: String,
    pub ingress_addr: Option<String>,
    pub admin_addr: Option<String>,
    /// Answered its last pings.
    pub alive: bool,
}

/// What a ping answers: the node's identity, addresses and load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PingReply {
    pub id: String,
    pub epoch: u64,
    pub ingress_addr: String,
    pub admin_addr: String,
    pub active_objects: usize,
    pub inflight: usize,
}

pub struct Cluster {
    pub node_id: String,
    pub peer_addr: String,
    membership: RwLock<Arc<Membership>>,
    gate: Arc<PartitionGate>,
    peers: Mutex<Peers>,
    /// One membership change or hand-off at a time on this node.
    pub(crate) changes: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Loads the persisted membership, or starts one: from `--cluster` on a first start, else a
    /// one-node cluster — unless the node is to `--join` an existing cluster, in which case it
    /// owns nothing until the cluster adds it.
    pub async fn open(store: &Store, config: &crate::config::Config) -> anyhow::Result<Self> {
        let persisted: Option<Membership> = match store.cluster_value(MEMBERSHIP_KEY)? {
            Some(bytes) => Some(rmp_serde::from_slice(&bytes).map_err(|e| anyhow::anyhow!("corrupt membership: {e}"))?),
            None => None,
        };
        let me = config.node_id.clone();
        let membership = match (persisted, &config.cluster) {
            (Some(m), _) => m,
            (None, Some(spec)) => {
                let members = crate::config::parse_members(spec)?;
                anyhow::ensure!(
                    members.iter().any(|(id, _)| *id == me),
                    "--cluster does not list this node's id {me:?}"
                );
                let initial = Membership::initial(members);
                // Persisted at once: later starts use it, whatever --cluster then says.
                let mut batch = WriteBatch::new();
                batch.put(Table::Cluster, MEMBERSHIP_KEY.as_bytes().to_vec(), encode(&initial));
                store.log.append(batch).await?;
                initial
            }
            (None, None) if config.join.is_some() => Membership {
                epoch: 0,
                members: Vec::new(),
                owners: vec![String::new(); PARTITIONS_COUNT as usize],
                rebalance_total: 0,
            },
            (None, None) => Membership::initial(vec![(me.clone(), config.advertised_peer_addr())]),
        };
        if let Some(member) = membership.member(&me) {
            anyhow::ensure!(
                member.peer_addr == config.advertised_peer_addr(),
                "this node is {me} at {} in the persisted membership, but it is advertised at {} \
                 (--advertised-peer-addr, else --peer-addr)",
                member.peer_addr,
                config.advertised_peer_addr()
            );
        }
        for p in 0..PARTITIONS_COUNT as u16 {
            let state = if membership.owner(p) == me {
                PartitionState::Owned
            } else {
                PartitionState::Remote
            };
            store.gate.set(p, state);
        }
        Ok(Self {
            node_id: me,
            peer_addr: config.advertised_peer_addr(),
            membership: RwLock::new(Arc::new(membership)),
            gate: store.gate.clone(),
            peers: Mutex::new(Peers::default()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    pub fn membership(&self) -> Arc<Membership> {
        self.membership.read().expect("membership lock").clone()
    }

    pub fn epoch(&self) -> u64 {
        self.membership().epoch
    }

    pub fn owns(&self, partition: u16) -> bool {
        self.gate.owns(partition)
    }

    /// More than this node takes part (so partitions can move).
    pub fn is_clustered(&self) -> bool {
        let m = self.membership();
        !(m.members.len() == 1 && m.members[0].id == self.node_id)
    }

    pub fn is_member(&self) -> bool {
        self.membership().member(&self.node_id).is_some()
    }

    pub fn peer(&self, id: &str) -> Option<Peer> {
        let membership = self.membership();
        let member = membership.member(id)?;
        let (status, dead) = {
            let peers = self.peers.lock().expect("peers lock");
            let status = peers.statuses.get(id).cloned().unwrap_or_default();
            let dead = status.dead_at(Instant::now(), &peers.view);
            (status, dead)
        };
        Some(Peer {
            id: id.to_owned(),
            peer_addr: member.peer_addr.clone(),
            ingress_addr: status.last.as_ref().map(|r| r.ingress_addr.clone()),
            admin_addr: status.last.as_ref().map(|r| r.admin_addr.clone()),
            alive: !dead,
        })
    }

    /// The last ping answer of `id`, and whether it is dead now.
    pub fn peer_status(&self, id: &str) -> (Option<PingReply>, bool) {
        let peers = self.peers.lock().expect("peers lock");
        let status = peers.statuses.get(id).cloned().unwrap_or_default();
        let dead = status.dead_at(Instant::now(), &peers.view);
        (status.last, dead)
    }

    pub fn placement(&self, partition: u16) -> Placement {
        match self.gate.get(partition) {
            PartitionState::Owned => Placement::Local,
            PartitionState::Frozen => Placement::Moving,
            PartitionState::Remote => {
                let membership = self.membership();
                let owner = membership.owner(partition);
                match self.peer(owner) {
                    Some(peer) => Placement::Remote(peer),
                    // No owner known yet (a joining node): wait for the membership.
                    None => Placement::Moving,
                }
            }
        }
    }

    /// Any live member other than this node (to hand requests to when this node owns nothing).
    pub fn any_live_peer(&self) -> Option<Peer> {
        let membership = self.membership();
        let peers: Vec<Peer> = membership
            .members
            .iter()
            .filter(|m| m.id != self.node_id)
            .filter_map(|m| self.peer(&m.id))
            .filter(|p| p.alive)
            .collect();
        (!peers.is_empty()).then(|| peers[fastrand::usize(..peers.len())].clone())
    }

    /// Persists `next` if it is newer than ours. Returns the partitions it gives to this node
    /// (to activate) and takes away (to drop), or `None` if it is not newer.
    pub(crate) async fn adopt(&self, store: &Store, next: Membership) -> Result<Option<Adopted>, StorageError> {
        if next.epoch <= self.epoch() {
            return Ok(None);
        }
        // Losing a partition without handing it off is only right when it holds nothing (a
        // fresh node joining); otherwise this membership is from another cluster.
        let taken: Vec<u16> = (0..PARTITIONS_COUNT as u16)
            .filter(|p| self.gate.get(*p) == PartitionState::Owned && next.owner(*p) != self.node_id)
            .collect();
        if !taken.is_empty() {
            // A read: on the blocking pool, never on an async thread.
            let holding = crate::storage::blocking(store, move |store| {
                for p in taken {
                    if !store.partition_is_empty(Table::Invocations, p)? {
                        return Ok(Some(p));
                    }
                }
                Ok(None)
            })
            .await?;
            if let Some(p) = holding {
                tracing::error!(
                    epoch = next.epoch,
                    partition = p,
                    "cluster.membership_refused: it takes partitions this node holds data for without a hand-off; \
                     a node with data cannot join another cluster"
                );
                return Ok(None);
            }
        }
        let mut batch = WriteBatch::new();
        batch.put(Table::Cluster, MEMBERSHIP_KEY.as_bytes().to_vec(), encode(&next));
        store.log.append(batch).await?;
        let mut current = self.membership.write().expect("membership lock");
        if next.epoch <= current.epoch {
            return Ok(None); // a newer one won the race
        }
        let mut adopted = Adopted::default();
        for p in 0..PARTITIONS_COUNT as u16 {
            let mine = next.owner(p) == self.node_id;
            match (self.gate.get(p), mine) {
                (PartitionState::Remote, true) => {
                    self.gate.set(p, PartitionState::Owned);
                    adopted.gained.push(p);
                }
                (PartitionState::Owned, false) => {
                    // Only an owner hands its partitions off: these are empty (checked above).
                    self.gate.set(p, PartitionState::Remote);
                    adopted.lost.push(p);
                }
                (PartitionState::Frozen, false) => self.gate.set(p, PartitionState::Remote),
                _ => {}
            }
        }
        tracing::info!(
            epoch = next.epoch,
            gained = adopted.gained.len(),
            lost = adopted.lost.len(),
            owned = self.gate.owned_count(),
            "cluster.membership_adopted"
        );
        *current = Arc::new(next);
        Ok(Some(adopted))
    }

    /// Claims `id`'s ping slot (false while a ping to it is out).
    pub(crate) fn start_ping(&self, id: &str) -> bool {
        let mut peers = self.peers.lock().expect("peers lock");
        peers
            .statuses
            .entry(id.to_owned())
            .or_default()
            .start_ping(Instant::now())
    }

    pub(crate) fn record_ping(&self, id: &str, probe: Probe) {
        self.record(id, probe, true);
    }

    /// A request found nothing listening at `id`'s address.
    pub(crate) fn mark_unreachable(&self, id: &str) {
        self.record(id, Probe::Refused, false);
    }

    fn record(&self, id: &str, probe: Probe, from_ping: bool) {
        let now = Instant::now();
        let mut guard = self.peers.lock().expect("peers lock");
        let peers = &mut *guard;
        let status = peers.statuses.entry(id.to_owned()).or_default();
        status.record(now, probe, from_ping);
        log_transition(id, status.transition(now, &peers.view));
    }

    /// A ping round begins: notes whether this node itself was stopped, and logs peers that
    /// died or came back since the last round.
    pub(crate) fn ping_round(&self) {
        let now = Instant::now();
        let mut guard = self.peers.lock().expect("peers lock");
        let peers = &mut *guard;
        peers.view.round(now);
        for (id, status) in peers.statuses.iter_mut() {
            log_transition(id, status.transition(now, &peers.view));
        }
    }

    /// [`Cluster::while_alive`] for a node-to-node call: a peer found dead is
    /// `PeerError::Unresponsive`.
    pub async fn call_while_alive<T>(
        &self,
        id: &str,
        call: impl Future<Output = Result<T, client::PeerError>>,
    ) -> Result<T, client::PeerError> {
        self.while_alive(id, call)
            .await
            .unwrap_or(Err(client::PeerError::Unresponsive))
    }

    /// Runs `work` (a request to peer `id`) unless `id` is found dead first: `None` then. What
    /// bounds every wait on another node — a paused node costs a caller ≤ ~1.6 s, while a long
    /// answer from a live one is waited for in full.
    pub async fn while_alive<F: Future>(&self, id: &str, work: F) -> Option<F::Output> {
        let death = async {
            loop {
                tokio::time::sleep(DEATH_POLL).await;
                if self.peer(id).is_none_or(|p| !p.alive) {
                    return;
                }
            }
        };
        tokio::select! {
            done = work => Some(done),
            () = death => None,
        }
    }
}

/// What this node knows of the others' liveness.
#[derive(Default)]
struct Peers {
    statuses: HashMap<String, PeerStatus>,
    view: View,
}

fn log_transition(id: &str, change: Option<bool>) {
    match change {
        Some(true) => tracing::warn!(node = id, "cluster.peer_dead"),
        Some(false) => tracing::info!(node = id, "cluster.peer_alive"),
        None => {}
    }
}

#[derive(Default, Debug)]
pub(crate) struct Adopted {
    pub gained: Vec<u16>,
    pub lost: Vec<u16>,
}
