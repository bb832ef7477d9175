//! The membership on consensus: a membership change — a join, a leave, each step of a
//! rebalance — takes effect only once the metadata group has committed it, conditioned on the
//! epoch it was computed from (`metadata::state`), so changes made at different nodes at the
//! same instant are serialised and none that was acknowledged is lost. Every node follows the
//! group and adopts what it commits; the group's leader keeps its replicas in step with the
//! members and resumes a rebalance that is not finished. Deployments are registered the same
//! way, so every node installs every acknowledged one, a node that was down included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metadata::{propose_at, replica_id, replicas_of, MetaCommand, MetaError, MetaResponse};
use crate::node::Node;
use crate::placement::{MemberState, Membership, RebalanceError};
use crate::schema::versions::{self, Registration};
use crate::storage::{encode, keys, DeploymentRecord, StorageError, Table, WriteBatch};

/// Why a deployment change was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// By the rules of versioned deployments (409).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    /// The metadata group did not commit it (503: retry).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<RebalanceError> for DeploymentError {
    fn from(e: RebalanceError) -> Self {
        DeploymentError::Unavailable(e.to_string())
    }
}

/// How long a proposal waits out an election or an unreachable leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node looks at the group besides when its state changes (leader upkeep).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

impl From<MetaError> for RebalanceError {
    fn from(e: MetaError) -> Self {
        RebalanceError::Peer {
            peer: "metadata group".into(),
            message: e.to_string(),
        }
    }
}

impl Node {
    /// Commits `next`, computed from the membership at `base_epoch`, then adopts it here.
    /// `StaleEpoch` if another change was committed first (recompute and try again).
    pub(crate) async fn commit_membership(
        self: &Arc<Self>,
        base_epoch: u64,
        next: Membership,
    ) -> Result<(), RebalanceError> {
        let command = MetaCommand::SetMembership {
            base_epoch,
            next: next.clone(),
        };
        match self.propose(command).await? {
            MetaResponse::Applied { .. } => {
                self.adopt_membership(next).await?;
                Ok(())
            }
            MetaResponse::Stale { current_epoch } => Err(RebalanceError::StaleEpoch {
                got: base_epoch,
                current: current_epoch,
            }),
            other => Err(RebalanceError::Peer {
                peer: "metadata group".into(),
                message: format!("refused: {other:?}"),
            }),
        }
    }

    /// Registers `record` cluster-wide by the rules of `schema::versions`: committed by the
    /// metadata group (which applies the rule to the committed deployments), then installed
    /// here (the other nodes install it as they follow the group). A node alone, which has no
    /// group, applies the rule and installs it only; the group it starts when a node joins
    /// holds it.
    pub async fn register_deployment(
        self: &Arc<Self>,
        record: DeploymentRecord,
        force: bool,
    ) -> Result<Registration, DeploymentError> {
        let _alone = self.deployment_changes.lock().await;
        let registered = self.schema.snapshot().deployments.clone();
        if !self.has_group().await {
            let registration =
                versions::register(&registered, &record, force).map_err(|e| DeploymentError::Refused(e.to_string()))?;
            if registration != Registration::Unchanged {
                self.install_deployment(record).await?;
            }
            return Ok(registration);
        }
        // The group applies the rule to the committed deployments and answers with the record
        // it holds; what that changed here is told by this node's copy.
        let committed = match self.propose(MetaCommand::RegisterDeployment { record, force }).await? {
            MetaResponse::Registered { record } => record,
            MetaResponse::Conflict { reason } => return Err(DeploymentError::Refused(reason)),
            other => return Err(DeploymentError::Unavailable(format!("refused: {other:?}"))),
        };
        let registration = match registered.iter().find(|d| d.id == committed.id) {
            None => Registration::Create,
            Some(d) if *d == committed => Registration::Unchanged,
            Some(d) if d.services == committed.services => Registration::Promote,
            Some(_) => Registration::Replace,
        };
        self.install_deployment(committed).await?;
        Ok(registration)
    }

    /// Removes deployment `id`, which `pinned` unfinished invocations are pinned to (refused
    /// unless `force`): committed by the group, then dropped here (and by every node).
    pub async fn remove_deployment(
        self: &Arc<Self>,
        id: &str,
        pinned: u64,
        force: bool,
    ) -> Result<(), DeploymentError> {
        let _alone = self.deployment_changes.lock().await;
        versions::remove(&self.schema.snapshot().deployments, id, pinned, force).map_err(|e| match e {
            versions::VersionError::NotFound(_) => DeploymentError::NotFound(e.to_string()),
            _ => DeploymentError::Refused(e.to_string()),
        })?;
        if self.has_group().await {
            match self
                .propose(MetaCommand::RemoveDeployment { id: id.to_owned() })
                .await?
            {
                MetaResponse::Applied { .. } => {}
                other => return Err(DeploymentError::Unavailable(format!("refused: {other:?}"))),
            }
        }
        Ok(self.uninstall_deployment(id).await?)
    }

    async fn has_group(&self) -> bool {
        self.cluster.is_clustered() || self.metadata.is_initialized().await
    }

    /// Persists `record` in this node's deployments and serves it.
    pub(crate) async fn install_deployment(&self, record: DeploymentRecord) -> Result<(), StorageError> {
        if self.schema.snapshot().deployments.contains(&record) {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        batch.put(Table::Deployments, keys::deployment(&record.id), encode(&record));
        self.store.log.append(batch).await?;
        tracing::info!(deployment = %record.id, uri = %record.uri, "cluster.deployment_installed");
        self.schema.upsert(record);
        Ok(())
    }

    /// Deletes this node's copy of deployment `id` and stops serving it.
    pub(crate) async fn uninstall_deployment(&self, id: &str) -> Result<(), StorageError> {
        if !self.schema.snapshot().deployments.iter().any(|d| d.id == id) {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Deployments, keys::deployment(id));
        self.store.log.append(batch).await?;
        tracing::info!(deployment = %id, "cluster.deployment_removed");
        self.schema.remove(id);
        Ok(())
    }

    /// Proposes `command` to the group: here if this replica leads, else at the leader (over
    /// the node-to-node endpoint), waiting out an election for up to `PROPOSE_TIMEOUT`.
    pub(crate) async fn propose(self: &Arc<Self>, command: MetaCommand) -> Result<MetaResponse, RebalanceError> {
        self.ensure_group().await?;
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let mut delay = Duration::from_millis(50);
        loop {
            let last = match self.metadata.propose(command.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(MetaError::NotLeader { leader: Some(addr) }) if addr != self.cluster.peer_addr => {
                    match propose_at(&addr, &command).await {
                        Ok(answer) => return Ok(answer),
                        Err(e) => format!("leader {addr}: {e}"),
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(RebalanceError::Peer {
                    peer: "metadata leader".into(),
                    message: last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// A node that never was part of a cluster has no group: the first change it makes starts
    /// one, with itself the only voter, holding the membership it has.
    async fn ensure_group(self: &Arc<Self>) -> Result<(), RebalanceError> {
        // A member of a cluster waits for the group its lowest member starts (never one of its own).
        if self.cluster.is_clustered() || self.metadata.is_initialized().await {
            return Ok(());
        }
        let me = replica_id(&self.cluster.node_id);
        self.metadata
            .initialize(BTreeMap::from([(me, self.cluster.peer_addr.clone())]))
            .await?;
        self.metadata.wait_for_leader(PROPOSE_TIMEOUT).await?;
        let membership = (*self.cluster.membership()).clone();
        let deployments = self.schema.snapshot().deployments.clone();
        // `Stale`: it holds one already.
        self.metadata
            .propose(MetaCommand::Bootstrap {
                membership,
                deployments,
            })
            .await?;
        tracing::info!("cluster.metadata_group_started");
        Ok(())
    }

    /// At start, on a node of a cluster whose group was never started (a first start with
    /// `--cluster`, or a data dir from before the group): the member with the lowest id starts
    /// it, with the voters `replicas_of` picks, holding the membership every member already has.
    pub async fn bootstrap_metadata(self: Arc<Self>) {
        let membership = (*self.cluster.membership()).clone();
        let first = membership.members.iter().map(|m| m.id.as_str()).min();
        if membership.members.len() < 2 || first != Some(self.cluster.node_id.as_str()) {
            return;
        }
        if self.metadata.is_initialized().await {
            return;
        }
        let (replicas, voters) = replicas_of(&membership);
        let voters: BTreeMap<_, _> = replicas.into_iter().filter(|(id, _)| voters.contains(id)).collect();
        if let Err(e) = self.metadata.initialize(voters).await {
            return tracing::error!(error = %e, "cluster.metadata_bootstrap_failed");
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .propose(MetaCommand::Bootstrap {
                    membership: membership.clone(),
                    deployments: self.schema.snapshot().deployments.clone(),
                })
                .await
            {
                Ok(answer) => {
                    tracing::info!(?answer, epoch = membership.epoch, "cluster.metadata_bootstrapped");
                    return;
                }
                // The other voters are not up yet: a group needs a majority to commit.
                Err(e) => tracing::warn!(error = %e, "cluster.metadata_bootstrap_waiting"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Follows the group: installs the deployments and adopts every newer membership it
    /// commits; on the leader, keeps the
    /// replicas in step with the members and resumes a rebalance that is not finished.
    pub async fn follow_metadata(self: Arc<Self>) {
        let mut committed = self.metadata.subscribe();
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { return },
                _ = upkeep.tick() => {}
            }
            let state = committed.borrow_and_update().clone();
            for record in state.deployments {
                if let Err(e) = self.install_deployment(record).await {
                    tracing::error!(error = %e, "cannot install a committed deployment");
                }
            }
            for id in &state.removed_deployments {
                if let Err(e) = self.uninstall_deployment(id).await {
                    tracing::error!(error = %e, "cannot remove a deployment the group removed");
                }
            }
            let Some(membership) = state.membership else {
                continue;
            };
            if membership.epoch > self.cluster.epoch() {
                if let Err(e) = self.adopt_membership(membership.clone()).await {
                    tracing::error!(error = %e, "cannot adopt the committed membership");
                }
            }
            if self.metadata.is_leader() {
                self.upkeep(membership);
            }
        }
    }

    /// The leader's upkeep, in the background (a replica that does not answer must not hold
    /// up adoption): replicas for exactly the members, and a rebalance running if one is due.
    fn upkeep(self: &Arc<Self>, membership: Membership) {
        let Ok(_running) = self.metadata_upkeep.try_lock() else {
            return;
        };
        let node = self.clone();
        actix_rt::spawn(async move {
            let _upkeep = node.metadata_upkeep.lock().await;
            let (replicas, voters) = replicas_of(&membership);
            for _ in 0..8 {
                match node.metadata.reconcile(&replicas, &voters).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster.metadata_replicas_pending");
                        break;
                    }
                }
            }
            let unfinished = !membership.misplaced().is_empty()
                || membership.rebalance_total != 0
                || membership.members.iter().any(|m| m.state != MemberState::Active);
            if unfinished && node.cluster.changes.try_lock().is_ok() {
                actix_rt::spawn(node.clone().converge());
            }
        });
    }
}
