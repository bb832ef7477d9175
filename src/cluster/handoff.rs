//! Moving partitions between nodes, and the membership changes that call for it.
//!
//! A hand-off, run by the partition's current owner: close the partitions in the gate (no
//! more writes), wait for commits already queued, drop everything held in memory for them,
//! copy every row to the new owner (which writes them durably), then adopt and broadcast the
//! next membership. The new owner starts serving when it adopts that membership, by the same
//! recovery a restart runs. Until then requests for those partitions wait, never fail.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;
use crate::placement::client::{self, ImportRequest, MembershipChange};
use crate::placement::{Member, MemberState, Membership, RebalanceError};
use crate::storage::{PartitionState, StorageError, Table, WriteBatch};

/// Partitions copied per import request (bounds its size).
const PARTITIONS_PER_IMPORT: usize = 16;
/// Hand-off attempts in a row before this run of the rebalance pauses; the leader's upkeep
/// starts it again within a second (`cluster::consensus`), so it is retried until it completes.
const HANDOFF_ATTEMPTS: u32 = 20;

impl Node {
    /// Applies a membership change requested through the admin API or by a joining node, then
    /// rebalances in the background. Returns the new epoch and how many partitions will move.
    pub async fn change_membership(self: &Arc<Self>, change: MembershipChange) -> Result<(u64, usize), RebalanceError> {
        let _change = self.cluster.changes.lock().await;
        // Computed from the newest membership this node knows; if another change was committed
        // first, computed again from that one.
        let mut tries = 0;
        loop {
            match self.try_change_membership(&change).await {
                Err(RebalanceError::StaleEpoch { current, .. }) if tries < 5 => {
                    tries += 1;
                    tracing::info!(?change, current, "cluster.membership_change_recomputed");
                    self.await_epoch(current).await;
                }
                other => return other,
            }
        }
    }

    /// A node is added only if it answers at `peer_addr` as `id`: a wrong address or id is
    /// refused at once instead of starting a rebalance that cannot move anything.
    async fn check_joinable(&self, id: &str, peer_addr: &str) -> Result<(), RebalanceError> {
        let refused = |reason: String| RebalanceError::NotJoinable {
            id: id.to_owned(),
            peer_addr: peer_addr.to_owned(),
            reason,
        };
        match client::ping(peer_addr).await {
            Ok(reply) if reply.id == id => Ok(()),
            Ok(reply) => Err(refused(format!("the node there is {:?}", reply.id))),
            Err(e) => Err(refused(format!("it does not answer ({e})"))),
        }
    }

    /// Waits (briefly) until this node has adopted `epoch`.
    async fn await_epoch(&self, epoch: u64) {
        for _ in 0..100 {
            if self.cluster.epoch() >= epoch {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_change_membership(
        self: &Arc<Self>,
        change: &MembershipChange,
    ) -> Result<(u64, usize), RebalanceError> {
        let current = self.cluster.membership();
        if !current.members.iter().any(|m| m.id == self.cluster.node_id) {
            return Err(RebalanceError::NotMember);
        }
        // A change may come while a rebalance runs: the rebalance then moves every partition to
        // its target on the new ring (each step is committed against the epoch it was computed
        // from, so nothing is moved twice at once).
        let mut next = (*current).clone();
        let mut new_peer = None;
        match change {
            MembershipChange::Add { id, peer_addr } => match next.members.iter().find(|m| &m.id == id) {
                Some(m) if &m.peer_addr != peer_addr => {
                    return Err(RebalanceError::AddressMismatch {
                        id: id.clone(),
                        peer_addr: m.peer_addr.clone(),
                    })
                }
                Some(_) => {} // already added: resume its rebalance
                None => {
                    self.check_joinable(id, peer_addr).await?;
                    next.members.push(Member {
                        id: id.clone(),
                        peer_addr: peer_addr.clone(),
                        state: MemberState::Joining,
                    });
                    next.members.sort_by(|a, b| a.id.cmp(&b.id));
                    new_peer = Some(peer_addr.clone());
                }
            },
            MembershipChange::Remove { id } => {
                let Some(member) = next.members.iter_mut().find(|m| &m.id == id) else {
                    return Err(RebalanceError::UnknownNode(id.clone()));
                };
                member.state = MemberState::Leaving;
                if next.members.iter().all(|m| m.state == MemberState::Leaving) {
                    return Err(RebalanceError::LastNode(id.clone()));
                }
            }
            MembershipChange::Abort => {
                let owns = |id: &str| current.partitions_of(id) > 0;
                next.members.retain(|m| m.state != MemberState::Joining || owns(&m.id));
                for m in &mut next.members {
                    m.state = match m.state {
                        MemberState::Joining => MemberState::Leaving,
                        MemberState::Leaving => MemberState::Active,
                        MemberState::Active => MemberState::Active,
                    };
                }
            }
        }
        if next != *current {
            next.epoch = current.epoch + 1;
            next.rebalance_total = next.misplaced().len() as u32;
            self.commit_membership(current.epoch, next.clone()).await?;
            self.broadcast_membership(&next, new_peer.as_deref()).await;
        }
        if let Some(addr) = &new_peer {
            for deployment in self.schema.snapshot().deployments.iter() {
                if let Err(e) = client::push_deployment(addr, deployment).await {
                    tracing::warn!(peer = %addr, error = %e, "cluster.deployment_push_failed");
                }
            }
        }
        let moving = next.misplaced().len();
        tracing::info!(?change, epoch = next.epoch, moving, "cluster.membership_changed");
        // The group's leader drives the rebalance (here, or its upkeep within a second).
        if self.metadata.is_leader() {
            actix_rt::spawn(self.clone().converge());
        }
        Ok((next.epoch, moving))
    }

    /// Moves misplaced partitions, one source node at a time, until every partition is on its
    /// ring target; then marks joiners active and drops leavers.
    pub(crate) async fn converge(self: Arc<Self>) {
        let _change = self.cluster.changes.lock().await;
        let mut failures = 0u32;
        loop {
            if !self.metadata.is_leader() {
                return; // the new leader's upkeep resumes it
            }
            let current = self.cluster.membership();
            let targets = current.targets();
            let misplaced = current.misplaced();
            let Some(&first) = misplaced.first() else {
                self.finish_rebalance(&current).await;
                return;
            };
            let source = current.owner(first).to_owned();
            let mut next = (*current).clone();
            next.epoch += 1;
            for p in misplaced.iter().filter(|p| current.owner(**p) == source) {
                next.owners[*p as usize] = targets[*p as usize].clone();
            }
            let result = if source == self.cluster.node_id {
                self.handoff(current.epoch, next.clone()).await.map(|_| ())
            } else {
                match current.member(&source) {
                    // Bounded by the source's liveness: a paused source is retried like a
                    // failed one (its late answer, if any, is refused by epoch).
                    Some(m) => self
                        .cluster
                        .call_while_alive(&source, client::handoff(&m.peer_addr, current.epoch, &next))
                        .await
                        .map_err(|e| RebalanceError::Peer {
                            peer: source.clone(),
                            message: e.to_string(),
                        }),
                    None => Err(RebalanceError::UnknownNode(source.clone())),
                }
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    if let Err(e) = self.adopt_membership(next).await {
                        tracing::error!(error = %e, "cannot adopt membership");
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(source = %source, error = %e, failures, "cluster.handoff_failed");
                    if failures >= HANDOFF_ATTEMPTS {
                        tracing::warn!("cluster.rebalance_paused; the metadata leader resumes it");
                        return;
                    }
                    // The source may have adopted it anyway (answer lost): learn its epoch.
                    if let Some(m) = current.member(&source) {
                        self.pull_membership(&m.peer_addr.clone()).await;
                    }
                    // Back off: a source that is down is asked again less and less often.
                    tokio::time::sleep(Duration::from_millis((250 * failures as u64).min(3_000))).await;
                }
            }
        }
    }

    async fn finish_rebalance(self: &Arc<Self>, current: &Membership) {
        let mut next = current.clone();
        let removed: Vec<String> = next
            .members
            .iter()
            .filter(|m| m.state == MemberState::Leaving)
            .map(|m| m.peer_addr.clone())
            .collect();
        next.members.retain(|m| m.state != MemberState::Leaving);
        for m in &mut next.members {
            m.state = MemberState::Active;
        }
        next.rebalance_total = 0;
        if next == *current {
            return;
        }
        next.epoch += 1;
        if let Err(e) = self.commit_membership(current.epoch, next.clone()).await {
            tracing::warn!(error = %e, "cluster.rebalance_end_not_committed");
            return;
        }
        self.broadcast_membership(&next, None).await;
        for addr in removed {
            // Tell a leaver it is out (it then forwards everything).
            let _ = client::push_membership(&addr, &next).await;
        }
        tracing::info!(epoch = next.epoch, "cluster.rebalance_done");
    }

    /// Hands every partition this node owns and `next` gives to another node over to it.
    pub async fn handoff(self: &Arc<Self>, base_epoch: u64, next: Membership) -> Result<usize, RebalanceError> {
        let _handoff = self.handoff_lock.lock().await;
        let current = self.cluster.membership();
        if current.epoch != base_epoch || next.epoch <= current.epoch {
            return Err(RebalanceError::StaleEpoch {
                got: base_epoch,
                current: current.epoch,
            });
        }
        let me = &self.cluster.node_id;
        let mut by_target: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for p in 0..crate::ids::PARTITIONS_COUNT as u16 {
            if self.cluster.owns(p) && next.owner(p) != me {
                by_target.entry(next.owner(p).to_owned()).or_default().push(p);
            }
        }
        let moving: Vec<u16> = by_target.values().flatten().copied().collect();
        let started = std::time::Instant::now();
        for p in &moving {
            self.store.gate.set(*p, PartitionState::Frozen);
        }
        // The log checks the gate in commit order: once this empty commit returns, every
        // earlier write is on disk and no later one of these partitions will be.
        self.store.log.append(WriteBatch::new()).await?;
        self.release_partitions(&moving).await;
        let mut rows_moved = 0usize;
        let copied: Result<(), RebalanceError> = async {
            for (target, partitions) in &by_target {
                let addr = next
                    .member(target)
                    .ok_or_else(|| RebalanceError::UnknownNode(target.clone()))?
                    .peer_addr
                    .clone();
                for chunk in partitions.chunks(PARTITIONS_PER_IMPORT) {
                    let request = self.export(next.epoch, chunk.to_vec()).await?;
                    rows_moved += request.rows.len();
                    // A target that stops answering fails the copy (the partitions are served
                    // here again) instead of holding them frozen.
                    self.cluster
                        .call_while_alive(target, client::import(&addr, &request))
                        .await
                        .map_err(|e| RebalanceError::Peer {
                            peer: target.clone(),
                            message: e.to_string(),
                        })?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            // Nothing changed hands: serve them again.
            for p in &moving {
                self.store.gate.set(*p, PartitionState::Owned);
            }
            let set: HashSet<u16> = moving.iter().copied().collect();
            self.recover_partitions(Arc::new(move |p| set.contains(&p))).await?;
            return Err(e);
        }
        // The hand-off takes effect once the group commits it; refused (another change came
        // first), nothing changed hands: serve them again.
        if let Err(e) = self.commit_membership(base_epoch, next.clone()).await {
            for p in &moving {
                self.store.gate.set(*p, PartitionState::Owned);
            }
            let set: HashSet<u16> = moving.iter().copied().collect();
            self.recover_partitions(Arc::new(move |p| set.contains(&p))).await?;
            return Err(e);
        }
        self.broadcast_membership(&next, None).await;
        tracing::info!(
            partitions = moving.len(),
            rows = rows_moved,
            elapsed_ms = started.elapsed().as_millis() as u64,
            epoch = next.epoch,
            "cluster.handoff_done"
        );
        actix_rt::spawn(self.clone().delete_partitions(moving.clone()));
        Ok(moving.len())
    }

    async fn export(&self, epoch: u64, partitions: Vec<u16>) -> Result<ImportRequest, StorageError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut rows = Vec::new();
            for p in &partitions {
                for (i, table) in Table::PARTITIONED.iter().enumerate() {
                    for (k, v) in store.partition_rows(*table, *p)? {
                        rows.push((i as u8, serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v)));
                    }
                }
            }
            Ok(ImportRequest {
                epoch,
                partitions,
                rows,
            })
        })
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?
    }

    /// Writes the rows of partitions handed to this node, replacing any stale copy. They are
    /// served once this node adopts the membership that makes it their owner.
    pub async fn import(&self, request: ImportRequest) -> Result<(), StorageError> {
        // Serialised with the clean-up of handed-off partitions, which must not delete these.
        let _handoff = self.handoff_lock.lock().await;
        if let Some(p) = request.partitions.iter().find(|p| self.cluster.owns(**p)) {
            return Err(StorageError::Corrupt {
                table: "cluster",
                message: format!("partition {p} is already served here"),
            });
        }
        let store = self.store.clone();
        let batch = tokio::task::spawn_blocking(move || -> Result<WriteBatch, StorageError> {
            let mut batch = WriteBatch::for_partition_move();
            let incoming: HashSet<(u8, &[u8])> = request.rows.iter().map(|(t, k, _)| (*t, k.as_slice())).collect();
            for p in &request.partitions {
                for (i, table) in Table::PARTITIONED.iter().enumerate() {
                    for (k, _) in store.partition_rows(*table, *p)? {
                        if !incoming.contains(&(i as u8, k.as_slice())) {
                            batch.delete(*table, k);
                        }
                    }
                }
            }
            for (t, k, v) in &request.rows {
                let table = *Table::PARTITIONED.get(*t as usize).ok_or(StorageError::Corrupt {
                    table: "cluster",
                    message: format!("unknown table index {t}"),
                })?;
                batch.put(table, k.to_vec(), v.to_vec());
            }
            Ok(batch)
        })
        .await
        .map_err(|e| StorageError::Io(e.to_string()))??;
        self.store.log.append(batch).await
    }

    /// Deletes the local copy of partitions handed to another node.
    async fn delete_partitions(self: Arc<Self>, partitions: Vec<u16>) {
        let _handoff = self.handoff_lock.lock().await;
        let store = self.store.clone();
        let batch = tokio::task::spawn_blocking(move || -> Result<WriteBatch, StorageError> {
            let mut batch = WriteBatch::for_partition_move();
            for p in &partitions {
                if store.gate.get(*p) != PartitionState::Remote {
                    continue; // handed back meanwhile
                }
                for table in Table::PARTITIONED {
                    for (k, _) in store.partition_rows(table, *p)? {
                        batch.delete(table, k);
                    }
                }
            }
            Ok(batch)
        })
        .await;
        match batch {
            Ok(Ok(batch)) if !batch.is_empty() => {
                if let Err(e) = self.store.log.append(batch).await {
                    tracing::warn!(error = %e, "cluster.cleanup_failed");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster.cleanup_failed"),
            _ => {}
        }
    }
}
