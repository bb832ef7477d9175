//! How a node keeps its membership current: it pings every other member, adopts the newest
//! membership any of them reports (the highest epoch wins), broadcasts the ones it makes, and
//! asks a seed to add it (`--join`).

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;
use crate::placement::client::{self, MembershipChange, PeerError};
use crate::placement::{Member, Membership, PingReply, Probe, PING_INTERVAL};
use crate::storage::StorageError;

impl Node {
    /// This node's ping answer.
    pub fn ping_reply(&self) -> PingReply {
        PingReply {
            id: self.cluster.node_id.clone(),
            epoch: self.cluster.epoch(),
            ingress_addr: self.config.ingress_addr.to_string(),
            admin_addr: self.config.admin_addr.to_string(),
            active_objects: self.objects.active_count(),
            inflight: self.inflight(),
        }
    }

    /// Adopts a newer membership: activates gained partitions, drops lost ones.
    pub async fn adopt_membership(self: &Arc<Self>, next: Membership) -> Result<(), StorageError> {
        if let Some(adopted) = self.cluster.adopt(&self.store, next).await? {
            if !adopted.lost.is_empty() {
                self.release_partitions(&adopted.lost).await;
            }
            if !adopted.gained.is_empty() {
                let gained = adopted.gained;
                self.recover_partitions(Arc::new(move |p| gained.binary_search(&p).is_ok()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Gossip: pings every other member, each on its own (a peer that does not answer delays
    /// no one else's pings); adopts a newer membership a peer reports.
    pub async fn gossip(self: Arc<Self>) {
        loop {
            self.cluster.ping_round();
            let membership = self.cluster.membership();
            for member in membership.members.iter().filter(|m| m.id != self.cluster.node_id) {
                if self.cluster.start_ping(&member.id) {
                    actix_rt::spawn(self.clone().ping(member.clone()));
                }
            }
            tokio::time::sleep(PING_INTERVAL).await;
        }
    }

    async fn ping(self: Arc<Self>, member: Member) {
        let reply = client::ping(&member.peer_addr).await;
        let newer = reply.as_ref().ok().filter(|r| r.epoch > self.cluster.epoch()).is_some();
        let probe = match reply {
            Ok(r) => Probe::Answered(r),
            Err(PeerError::Unreachable(_)) => Probe::Refused,
            Err(_) => Probe::Failed,
        };
        self.cluster.record_ping(&member.id, probe);
        if newer {
            self.pull_membership(&member.peer_addr).await;
        }
    }

    /// Fetches a peer's membership and adopts it if newer.
    pub async fn pull_membership(self: &Arc<Self>, peer_addr: &str) {
        match client::membership(peer_addr).await {
            Ok(m) => {
                if let Err(e) = self.adopt_membership(m).await {
                    tracing::error!(error = %e, "cannot adopt membership");
                }
            }
            Err(e) => tracing::debug!(error = %e, peer = peer_addr, "cluster.pull_failed"),
        }
    }

    /// Sends `membership` to every member but this node (best effort; gossip repairs misses).
    pub async fn broadcast_membership(self: &Arc<Self>, membership: &Membership, extra: Option<&str>) {
        let mut targets: Vec<String> = membership
            .members
            .iter()
            .filter(|m| m.id != self.cluster.node_id)
            .map(|m| m.peer_addr.clone())
            .collect();
        if let Some(addr) = extra {
            targets.push(addr.to_owned());
        }
        let sends = targets.iter().map(|addr| client::push_membership(addr, membership));
        for (addr, result) in targets.iter().zip(futures_util::future::join_all(sends).await) {
            if let Err(e) = result {
                tracing::warn!(peer = %addr, error = %e, "cluster.broadcast_failed");
            }
        }
    }

    /// Asks the cluster at `seed` to add this node, until it does.
    pub async fn join_cluster(self: Arc<Self>, seed: String) {
        let mut delay = Duration::from_millis(200);
        while !self.cluster.is_member() {
            let change = MembershipChange::Add {
                id: self.cluster.node_id.clone(),
                peer_addr: self.cluster.peer_addr.clone(),
            };
            match client::change(&seed, &change).await {
                Ok(()) => {
                    tracing::info!(%seed, "cluster.join_requested");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%seed, error = %e, "cluster.join_failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
