//! A Kiln node: the parts one process runs (storage, schema, owners, timers, placement) and the
//! routes between them. An ingress request becomes an invocation here (`submit`), handed to
//! its owner (`object`), which creates it; a durable message reaches its receiver's owner
//! (`delivery`); an operator's cancel or kill reaches the invocation's owner (`control`).
//! The node is what owners run on (`OwnerHost`, `AttemptHost`); they never name it.

mod attach;
mod control;
mod delivery;
mod recovery;

pub use crate::core::Completer;
pub use crate::object::{CompleteError, ControlError};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::Config;
use crate::ids::{idempotent_id, workflow_run_id, InvocationId, ObjectId};
use crate::invocation::{Invocation, LiveTable, Waiters};
use crate::journal::Output;
use crate::metadata::MetaGroup;
use crate::object::{Created, ObjectMsg, ObjectRegistry, Owner, OwnerHost, Staged, SubmitError};
use crate::placement::Cluster;
use crate::schema::SchemaRegistry;
use crate::storage::{
    blocking, keys, now_ms, HandlerKind, InvokeMessage, OutboxMessage, StorageError, Store, WriteBatch,
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
    /// This node's replica of the metadata group, where membership changes are committed.
    pub metadata: Arc<MetaGroup>,
    /// One metadata upkeep task (replicas in step with members) at a time.
    pub(crate) metadata_upkeep: tokio::sync::Mutex<()>,
    /// Serialises deployment changes on a node without a metadata group (the group's log
    /// orders them otherwise).
    pub(crate) deployment_changes: tokio::sync::Mutex<()>,
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
    /// The request's headers, handed to the handler (START `headers`).
    pub headers: crate::journal::Headers,
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
    pub fn new(
        config: Config,
        store: Store,
        schema: SchemaRegistry,
        objects: ObjectRegistry,
        cluster: Cluster,
        metadata: Arc<MetaGroup>,
    ) -> Self {
        Self {
            config,
            store,
            schema,
            objects,
            waiters: Waiters::default(),
            live: LiveTable::default(),
            timers: Arc::new(TimerService::default()),
            cluster,
            metadata,
            metadata_upkeep: tokio::sync::Mutex::new(()),
            deployment_changes: tokio::sync::Mutex::new(()),
            handoff_lock: tokio::sync::Mutex::new(()),
            inflight: AtomicUsize::new(0),
            outbox_seq: AtomicU64::new(0),
        }
    }

    /// This node as the owners see it.
    pub(crate) fn host(self: &Arc<Self>) -> Arc<dyn OwnerHost> {
        self.clone()
    }

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
            (kind, Some(k)) => idempotent_id(
                &request.service,
                &request.handler,
                &request.key,
                k,
                kind == HandlerKind::Stateless,
            ),
            (HandlerKind::Stateless, None) => {
                InvocationId::new(request.partition_key.unwrap_or_else(|| fastrand::u64(..)))
            }
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
            headers: request.headers,
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
        let created = match self.objects.send(&self.host(), &owner, msg) {
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

impl OwnerHost for Node {
    fn config(&self) -> &Config {
        &self.config
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn schema(&self) -> &SchemaRegistry {
        &self.schema
    }

    fn live(&self) -> &LiveTable {
        &self.live
    }

    fn timers(&self) -> &TimerService {
        &self.timers
    }

    fn owners(&self) -> &ObjectRegistry {
        &self.objects
    }

    fn owns(&self, partition: u16) -> bool {
        self.cluster.owns(partition)
    }

    fn admit(&self, admitted: bool) -> bool {
        Node::admit(self, admitted)
    }

    fn release_inflight(&self) {
        Node::release_inflight(self)
    }

    fn finished_counted(&self, id: InvocationId, output: &Output, counted: bool) {
        Node::finished_counted(self, id, output, counted)
    }

    fn deliver_all(self: Arc<Self>, staged: Vec<Staged>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move { Node::deliver_all(&self, staged).await })
    }
}
