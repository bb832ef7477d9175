//! A Kiln node: opens storage, recovers, and serves ingress and admin. An ingress request
//! becomes an invocation here (`submit`), handed to its owner (`object`), which creates it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use tokio::sync::oneshot;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::ids::{stable_hash, workflow_run_id, InvocationId, ObjectId};
use crate::invocation::{Invocation, LiveTable, Waiters};
use crate::journal::Output;
use crate::object::{Created, ObjectMsg, ObjectRegistry, Owner, SubmitError};
use crate::schema::SchemaRegistry;
use crate::storage::{
    key_partition, keys, now_ms, HandlerKind, InvocationStatus, InvokeMessage, OutboxMessage, PartitionGate,
    PartitionState, StorageError, Store, Table, WriteBatch,
};
use crate::timers::TimerService;

pub struct Node {
    pub config: Config,
    pub store: Store,
    pub schema: SchemaRegistry,
    pub objects: ObjectRegistry,
    pub waiters: Waiters,
    pub live: LiveTable,
    pub timers: Arc<TimerService>,
    pub cluster: Cluster,
    /// One partition hand-off or import at a time.
    pub(crate) handoff_lock: tokio::sync::Mutex<()>,
    /// Unfinished invocations held by this node (bounded by `max_inflight_invocations`).
    inflight: AtomicUsize,
    outbox_seq: AtomicU64,
}

/// What an ingress caller asked to run.
#[derive(Clone)]
pub struct Request {
    pub service: String,
    pub handler: String,
    pub key: String,
    pub kind: HandlerKind,
    pub deployment_id: String,
    pub input: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub delay: Option<Duration>,
    /// Partition key of a stateless invocation without idempotency key (the ingress picks
    /// one this node serves); ignored otherwise.
    pub partition_key: Option<u64>,
    /// The caller waits for the output (a call, not a send): the response is the only
    /// acknowledgement, so without an idempotency key the creation may wait for the first
    /// commit of the attempt (`Invocation::unwritten`).
    pub awaits_output: bool,
}

/// How waiting for an invocation's output ended.
pub enum Waited {
    Output(Output),
    NotFound,
    /// Its partition was handed to another node: wait there.
    Moved,
}

/// The result of `submit`: the invocation and whether it already existed (idempotency).
pub struct Submitted {
    pub id: InvocationId,
    pub existing: bool,
    /// For an invocation created unwritten: its output, subscribed before it could finish
    /// (storage does not know it yet). Dropped if it is lost before any write (its partition
    /// moved, the node stopped) — nothing of it is durable then.
    pub output: Option<oneshot::Receiver<Output>>,
}

impl InvokeMessage {
    /// The invocation this message creates, now.
    pub fn into_invocation(self) -> Invocation {
        let (id, record, journal) = self.into_invocation_at(now_ms());
        Invocation::new(id, record, journal)
    }
}

impl Node {
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a new unfinished invocation in, unless the node holds `max_inflight_invocations`
    /// already and it is not `admitted` (carried by a durable message or timer: refusing that
    /// could only be retried, and at start-up the retry would wait for invocations not resumed
    /// yet). Only new ingress requests are refused (429).
    pub(crate) fn admit(&self, admitted: bool) -> bool {
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.config.max_inflight_invocations && !admitted {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Undoes `admit` for a creation that failed.
    pub(crate) fn release_inflight(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A fresh outbox key in `partition`, ordered after every earlier one.
    pub(crate) fn next_outbox_key(&self, partition: u16) -> Vec<u8> {
        keys::outbox(partition, self.outbox_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Makes an ingress `request` a durable invocation and starts it, through its owner.
    /// Returns once it is on disk (or, unwritten, running).
    pub async fn submit(self: &Arc<Self>, request: Request) -> Result<Submitted, SubmitError> {
        let object = ObjectId::new(&request.service, &request.key);
        let id = match (request.kind, &request.idempotency_key) {
            (HandlerKind::Workflow, _) => workflow_run_id(&object),
            (HandlerKind::Stateless, None) => {
                InvocationId::new(request.partition_key.unwrap_or_else(|| fastrand::u64(..)))
            }
            (HandlerKind::Stateless, Some(k)) => InvocationId::new(stable_hash(&[
                request.service.as_bytes(),
                request.handler.as_bytes(),
                k.as_bytes(),
            ])),
            _ => InvocationId::new(object.partition_key()),
        };
        let message = InvokeMessage {
            id,
            service: request.service,
            handler: request.handler,
            key: request.key,
            kind: request.kind,
            deployment_id: request.deployment_id,
            input: request.input,
            caller: None,
            call_chain: Vec::new(),
            // The ingress has checked the delay's range (`journal::DELAY_MS_MAX`).
            not_before_ms: request.delay.map(|d| now_ms().saturating_add(d.as_millis() as u64)),
            idempotency_key: request.idempotency_key,
        };
        let mut invocation = message.into_invocation();
        // Duplicates of one idempotency key (or workflow key) meet in the owner, which looks
        // the key up and creates in one step for them.
        let lookup = invocation.idempotency_row().is_some() || request.kind == HandlerKind::Workflow;
        // Nothing else can find it before it is written (no key to look it up by).
        invocation.unwritten = !lookup && request.awaits_output;
        let output = invocation.unwritten.then(|| self.waiters.subscribe(id));
        let owner = Owner::of(id, &invocation.record);
        let (reply, answer) = oneshot::channel();
        let msg = ObjectMsg::Submit {
            invocation,
            extra: WriteBatch::new(),
            lookup,
            admitted: false,
            reply: Box::new(move |created| {
                let _ = reply.send(created);
            }),
        };
        let created = match self.objects.send(self, &owner, msg) {
            Ok(()) => self.answered(id, answer.await.ok()).await,
            Err(e) => Err(e),
        };
        match created {
            Ok(Created::New) => Ok(Submitted {
                id,
                existing: false,
                output,
            }),
            Ok(Created::Existing(existing)) => Ok(Submitted {
                id: existing,
                existing: true,
                output: None,
            }),
            Err(e) => {
                drop(output);
                self.waiters.prune(id);
                Err(e)
            }
        }
    }

    /// The owner's answer about creating `id`. If the owner was evicted (its partition is
    /// moving) before it answered, the gate has settled the creation batch by then — committed
    /// before the freeze (and moved with the partition) or refused — so storage says which.
    pub(crate) async fn answered(
        &self,
        id: InvocationId,
        answer: Option<Result<Created, SubmitError>>,
    ) -> Result<Created, SubmitError> {
        match answer {
            Some(created) => created,
            None if !self.cluster.owns(id.partition()) => {
                match blocking(&self.store, move |store| store.invocation(&id)).await {
                    Ok(Some(_)) => Ok(Created::New),
                    Ok(None) => Err(SubmitError::Storage(StorageError::NotOwner(id.partition()))),
                    Err(e) => Err(e.into()),
                }
            }
            None => Err(SubmitError::Stopped),
        }
    }

    /// The owner of `id`, from its record (`None`: no such invocation here).
    pub(crate) async fn owner_of(&self, id: InvocationId) -> Result<Option<Owner>, StorageError> {
        let record = blocking(&self.store, move |store| store.invocation(&id)).await?;
        Ok(record.map(|r| Owner::of(id, &r)))
    }

    /// Called once an invocation's end is durable.
    pub fn finished(&self, id: InvocationId, output: &Output) {
        self.finished_counted(id, output, true);
    }

    /// `counted`: the invocation was counted in flight (scheduled ones are not).
    pub(crate) fn finished_counted(&self, id: InvocationId, output: &Output, counted: bool) {
        self.live.remove(&id);
        if counted {
            let underflow = self
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)))
                .is_ok_and(|before| before == 0);
            if underflow {
                // An accounting bug must not turn into "too many invocations" forever.
                tracing::error!(invocation_id = %id, "in-flight count would go below zero");
            }
        }
        self.waiters.notify(id, output);
    }

    /// Waits for the output of `id`, which this node serves.
    pub async fn output(&self, id: InvocationId) -> Result<Waited, StorageError> {
        let rx = self.waiters.subscribe(id);
        if !self.cluster.owns(id.partition()) {
            // Checked after subscribing: a hand-off that starts later drops the subscription.
            drop(rx);
            self.waiters.prune(id);
            return Ok(Waited::Moved);
        }
        let store = self.store.clone();
        let record = tokio::task::spawn_blocking(move || store.invocation(&id))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        let done = |w: Waited| {
            self.waiters.prune(id);
            Ok(w)
        };
        match record {
            None => {
                drop(rx);
                done(Waited::NotFound)
            }
            Some(r) if r.output.is_some() => {
                drop(rx);
                done(Waited::Output(r.output.expect("checked")))
            }
            // A dropped subscription means the partition moved away.
            Some(_) => Ok(rx.await.map_or(Waited::Moved, Waited::Output)),
        }
    }

    /// Recovery of the partitions `owned` selects (all this node serves at start; those it
    /// gains later), in an order that keeps per-sender message order: first every undelivered
    /// outbox message, then timers, then unfinished invocations.
    pub(crate) async fn recover_partitions(
        self: &Arc<Self>,
        owned: Arc<dyn Fn(u16) -> bool + Send + Sync>,
    ) -> Result<(), StorageError> {
        // Read what is unfinished before redelivery creates more (those start on their own).
        // Scans block: they run on the blocking pool, never on an async thread.
        let (unfinished, objects_with_inbox, outbox) = blocking(&self.store, {
            let owned = owned.clone();
            move |store| {
                Ok((
                    store.unfinished_invocations(&*owned)?,
                    store.objects_with_inbox(&*owned)?,
                    store.outbox(&*owned)?,
                ))
            }
        })
        .await?;
        let last_seq = outbox
            .iter()
            .filter_map(|(k, _)| k.get(2..10))
            .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
            .max();
        if let Some(last) = last_seq {
            self.outbox_seq.fetch_max(last + 1, Ordering::Relaxed);
        }
        // Count unfinished work first: redelivery starts actors that may finish some of it.
        let counted = unfinished
            .iter()
            .filter(|(_, r)| r.status != InvocationStatus::Scheduled)
            .count();
        self.inflight.fetch_add(counted, Ordering::AcqRel);
        let redelivered = outbox.len();
        tracing::info!(unfinished = unfinished.len(), outbox = redelivered, "node.recovering");
        // In order per sending partition (a sender's rows are all in its partition), the
        // partitions side by side so their commits share fdatasyncs. Messages to other nodes go
        // in the background, so a node that is down does not hold up this one.
        let mut local: BTreeMap<u16, Vec<(Vec<u8>, OutboxMessage)>> = Default::default();
        let mut remote: BTreeMap<u16, Vec<(Vec<u8>, OutboxMessage)>> = Default::default();
        for (key, message) in outbox {
            let by_sender = if self.cluster.owns(message.target_partition()) {
                &mut local
            } else {
                &mut remote
            };
            by_sender.entry(key_partition(&key)).or_default().push((key, message));
        }
        let started = std::time::Instant::now();
        futures_util::future::join_all(local.into_values().map(|messages| async move {
            for (key, message) in messages {
                tracing::debug!(?message, "node.redeliver");
                self.deliver(Some(key), message, true).await;
            }
        }))
        .await;
        if redelivered > 0 {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "node.redelivered");
        }
        for (_, messages) in remote {
            let node = self.clone();
            actix_rt::spawn(async move {
                for (key, message) in messages {
                    node.deliver(Some(key), message, true).await;
                }
            });
        }
        let node = self.clone();
        blocking(&self.store, move |store| node.timers.load(store, &*owned)).await?;
        let mut resumed = 0usize;
        for object in objects_with_inbox {
            // Activation rebuilds the inbox queue and resumes its head.
            self.objects.activate(self, &object);
        }
        for (id, record) in unfinished {
            if record.status == InvocationStatus::Scheduled {
                continue; // its timer activates it
            }
            resumed += 1;
            if record.kind.is_exclusive() {
                continue; // resumed through its object's inbox
            }
            // Its owner reads it (after redelivery, which may have completed some of its
            // entries) and runs it, or holds it while it stays suspended.
            let owner = Owner::of(id, &record);
            if let Err(e) = self.objects.send(self, &owner, ObjectMsg::Recover(id)) {
                tracing::error!(invocation_id = %id, error = %e, "cannot resume invocation");
            }
        }
        tracing::info!(resumed, redelivered, "node.recovered");
        Ok(())
    }

    /// Forgets everything held in memory for `partitions`, which this node stopped serving
    /// (their rows are durable and now served elsewhere): owners (with what they hold),
    /// timers, waiters (who then wait at the new owner) and in-flight counts.
    pub(crate) async fn release_partitions(self: &Arc<Self>, partitions: &[u16]) {
        let set: HashSet<u16> = partitions.iter().copied().collect();
        let gone = |id: &InvocationId| set.contains(&id.partition());
        self.objects.evict(|p| set.contains(&p));
        self.timers.forget(|p| set.contains(&p));
        self.live.retain(|id| !gone(id));
        self.waiters.release(&gone);
        let store = self.store.clone();
        let unfinished = tokio::task::spawn_blocking(move || -> Result<usize, StorageError> {
            let counted = store.unfinished_invocations(&|p| set.contains(&p))?;
            Ok(counted
                .iter()
                .filter(|(_, r)| r.status != InvocationStatus::Scheduled)
                .count())
        })
        .await;
        match unfinished {
            Ok(Ok(n)) => {
                let _ = self
                    .inflight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(c.saturating_sub(n)));
            }
            other => tracing::error!(error = ?other, "cannot count released invocations"),
        }
        tracing::info!(partitions = partitions.len(), "node.partitions_released");
    }

    /// Deletes finished invocations past their retention, in small batches.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let store = self.store.clone();
            let expired = tokio::task::spawn_blocking(move || -> Result<WriteBatch, StorageError> {
                let mut batch = WriteBatch::new();
                // Reads only the `expiry` index rows already due, in owned partitions (a copy
                // left by a hand-off is deleted by its clean-up).
                let owned = |p: u16| store.gate.owns(p);
                let expired = store.expired(now_ms(), 10_000, &owned)?;
                for key in expired.stale_index_rows {
                    if owned(key_partition(&key)) {
                        batch.delete(Table::Expiry, key);
                    }
                }
                for (id, record) in expired.invocations {
                    if !store.gate.owns(id.partition()) {
                        continue; // moved away since the scan
                    }
                    batch.delete_invocation(&id, &record);
                    let inv = Invocation::new(id, record, vec![]);
                    if let Some(row) = inv.idempotency_row() {
                        batch.delete(Table::Idempotency, row);
                    }
                    for key in store.journal_keys(&id)? {
                        batch.delete(Table::Journal, key);
                    }
                }
                Ok(batch)
            })
            .await;
            if let Ok(Ok(batch)) = expired {
                // One batch per partition (every batch writes one), queued together so they
                // share one group commit.
                let commits: Vec<_> = batch
                    .into_partitions()
                    .into_iter()
                    .map(|b| self.store.log.append(b))
                    .collect();
                for commit in commits {
                    if let Err(e) = commit.await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
            }
        }
    }
}

impl crate::invoker::AttemptHost for Node {
    fn limits(&self) -> crate::invoker::AttemptLimits {
        crate::invoker::AttemptLimits {
            suspend_after_ms: self.config.suspend_after_ms,
            inactivity_timeout_ms: self.config.attempt_inactivity_timeout_ms,
            max_frame_bytes: self.config.max_frame_bytes,
        }
    }

    fn log(&self) -> &crate::storage::PartitionLog {
        &self.store.log
    }

    fn catalog(&self) -> Arc<dyn crate::core::entry::Catalog> {
        self.schema.snapshot()
    }

    fn outbox_key(&self, partition: u16) -> Vec<u8> {
        self.next_outbox_key(partition)
    }

    fn arm_timer(&self, key: Vec<u8>, due_ms: u64, timer: crate::storage::TimerRecord) {
        self.timers.register(key, due_ms, timer);
    }

    fn deliver(
        self: Arc<Self>,
        key: Vec<u8>,
        message: OutboxMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move {
            Node::deliver(&self, Some(key), message, false).await;
        })
    }
}

/// Runs `read` on the blocking pool (fjall reads block).
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?
}

/// Opens storage, recovers, and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(data_dir = %config.data_dir.display(), node_id = %config.node_id, "node.opening");
    let store = Store::open_gated(&config.data_dir, Arc::new(PartitionGate::new(PartitionState::Remote)))?;
    let cluster = Cluster::open(&store, &config).await?;
    let schema = SchemaRegistry::new(store.deployments()?);
    let actor_threads = Config::threads(config.actor_threads);
    let arbiters: Vec<_> = (0..actor_threads)
        .map(|_| {
            let arbiter = Arbiter::new().handle();
            arbiter.spawn_fn(crate::object::runs_owners_here);
            arbiter
        })
        .collect();
    let node = Arc::new(Node {
        objects: ObjectRegistry::new(arbiters),
        config: config.clone(),
        store,
        schema,
        waiters: Waiters::default(),
        live: LiveTable::default(),
        timers: Arc::new(TimerService::default()),
        cluster,
        handoff_lock: tokio::sync::Mutex::new(()),
        inflight: AtomicUsize::new(0),
        outbox_seq: AtomicU64::new(0),
    });
    let gate = node.store.gate.clone();
    node.recover_partitions(Arc::new(move |p| gate.owns(p))).await?;
    actix_rt::spawn(node.clone().sweep());
    actix_rt::spawn(node.clone().gossip());
    if let Some(seed) = config.join.clone().filter(|_| !node.cluster.is_member()) {
        actix_rt::spawn(node.clone().join_cluster(seed));
    }
    let peer = match crate::cluster::peer::serve(&node) {
        Ok(server) => Some(server),
        // A standalone node still serves without its node-to-node endpoint; a cluster member
        // cannot.
        Err(e) if node.cluster.is_member() && !node.cluster.is_clustered() && config.join.is_none() => {
            tracing::warn!(error = %e, "node.standalone_without_peer_endpoint; pass a free --peer-addr to cluster it later");
            None
        }
        Err(e) => return Err(e),
    };
    actix_rt::spawn(ObjectRegistry::supervise(node.clone(), Duration::from_secs(1)));
    let fire_node = node.clone();
    actix_rt::spawn(node.timers.clone().run(node.store.clone(), move |key, timer| {
        // Each firing is independent; run them concurrently.
        let node = fire_node.clone();
        actix_rt::spawn(async move { node.fire(key, timer).await });
    }));

    let data = web::Data::from(node.clone());
    let ingress_data = data.clone();
    let ingress = HttpServer::new(move || {
        // Runs once on each worker thread: stateless invocations it receives run here.
        crate::object::runs_owners_here();
        App::new()
            .app_data(ingress_data.clone())
            .configure(crate::ingress::config)
    })
    .workers(Config::threads(config.ingress_threads))
    .shutdown_timeout(5)
    .bind(config.ingress_addr)
    .map_err(|e| anyhow::anyhow!("cannot bind ingress on {}: {e}", config.ingress_addr))?
    .run();
    let admin = HttpServer::new(move || App::new().app_data(data.clone()).configure(crate::admin::config))
        .workers(1)
        .shutdown_timeout(5)
        .bind(config.admin_addr)
        .map_err(|e| anyhow::anyhow!("cannot bind admin on {}: {e}", config.admin_addr))?
        .run();
    tracing::info!(
        node_id = %config.node_id,
        ingress = %config.ingress_addr,
        admin = %config.admin_addr,
        peer = %config.peer_addr,
        epoch = node.cluster.epoch(),
        partitions = node.store.gate.owned_count(),
        data_dir = %config.data_dir.display(),
        "node.ready"
    );
    match peer {
        Some(peer) => futures_util::future::try_join3(ingress, admin, peer)
            .await
            .map(|_| ())?,
        None => futures_util::future::try_join(ingress, admin).await.map(|_| ())?,
    }
    // Nothing is acknowledged that is not durable already; flushing only makes the next start
    // cheaper (it re-inserts nothing that is flushed).
    let started = std::time::Instant::now();
    match blocking(&node.store, |store| store.flush_memtables()).await {
        Ok(()) => tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "node.flushed"),
        Err(e) => tracing::warn!(error = %e, "node.flush_failed"),
    }
    tracing::info!("node.stopped");
    Ok(())
}
