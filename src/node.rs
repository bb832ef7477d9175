//! A Kiln node: opens storage, recovers unfinished invocations, and serves ingress and admin.
//! Also the one place that turns a request into a durable invocation (`submit`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::ids::{stable_hash, InvocationId, ObjectId};
use crate::invocation::{drive, uses_actor, Invocation, LiveTable, Waiters};
use crate::journal::{Entry, Output};
use crate::object::{ObjectMsg, ObjectRegistry, SubmitError};
use crate::schema::SchemaRegistry;
use crate::storage::{
    keys, now_ms, HandlerKind, InvocationRecord, InvocationStatus, StorageError, Store, Table,
    WriteBatch,
};

pub struct Node {
    pub config: Config,
    pub store: Store,
    pub schema: SchemaRegistry,
    pub objects: ObjectRegistry,
    pub waiters: Waiters,
    pub live: LiveTable,
    /// Unfinished invocations held by this node (bounded by `max_inflight_invocations`).
    inflight: AtomicUsize,
    /// Serialises idempotency-key look-ups so that concurrent duplicates start one invocation.
    idempotency_gate: tokio::sync::Mutex<()>,
}

/// What a caller asked to run.
pub struct Request {
    pub service: String,
    pub handler: String,
    pub key: String,
    pub kind: HandlerKind,
    pub deployment_id: String,
    pub input: Vec<u8>,
    pub idempotency_key: Option<String>,
}

/// The result of `submit`: the invocation and whether it already existed (idempotency).
pub struct Submitted {
    pub id: InvocationId,
    pub existing: bool,
}

impl Node {
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Makes `request` a durable invocation and starts it. Returns once it is on disk.
    pub async fn submit(self: &Arc<Self>, request: Request) -> Result<Submitted, SubmitError> {
        let partition_key = match (request.kind, &request.idempotency_key) {
            (HandlerKind::Stateless, None) => fastrand::u64(..),
            (HandlerKind::Stateless, Some(k)) => stable_hash(&[
                request.service.as_bytes(),
                request.handler.as_bytes(),
                k.as_bytes(),
            ]),
            _ => ObjectId::new(&request.service, &request.key).partition_key(),
        };
        let id = InvocationId::new(partition_key);
        let now = now_ms();
        let invocation = Invocation {
            id,
            record: InvocationRecord {
                service: request.service,
                handler: request.handler,
                key: request.key,
                kind: request.kind,
                deployment_id: request.deployment_id,
                status: InvocationStatus::Pending,
                attempts: 0,
                last_error: None,
                next_retry_at_ms: None,
                created_at_ms: now,
                modified_at_ms: now,
                idempotency_key: request.idempotency_key,
                inbox_seq: None,
                output: None,
                expires_at_ms: None,
            },
            journal: vec![Entry::Input {
                value: request.input,
            }],
        };
        let Some(row) = invocation.idempotency_row() else {
            return self.start(invocation).await.map(|()| Submitted {
                id,
                existing: false,
            });
        };
        let _gate = self.idempotency_gate.lock().await;
        let store = self.store.clone();
        let lookup = row.clone();
        let found = tokio::task::spawn_blocking(move || store.idempotency(&lookup))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        if let Some(existing) = found {
            return Ok(Submitted {
                id: existing.invocation_id,
                existing: true,
            });
        }
        // Holding the gate until the creation batch is durable makes the next look-up see it.
        self.start(invocation).await.map(|()| Submitted {
            id,
            existing: false,
        })
    }

    async fn start(self: &Arc<Self>, invocation: Invocation) -> Result<(), SubmitError> {
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.config.max_inflight_invocations {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::TooManyInvocations);
        }
        let result = if uses_actor(invocation.record.kind) {
            let (reply, rx) = oneshot::channel();
            let object = invocation.object();
            match self
                .objects
                .send(self, &object, ObjectMsg::Submit { invocation, reply })
            {
                Ok(()) => rx.await.unwrap_or(Err(SubmitError::Stopped)),
                Err(e) => Err(e),
            }
        } else {
            match self.store.writer.commit(invocation.creation_batch()).await {
                Ok(()) => {
                    // Stateless: run on this thread, no hop.
                    actix_rt::spawn(drive(self.clone(), invocation, None));
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        };
        if result.is_err() {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// Called once an invocation's end is durable.
    pub fn finished(&self, id: InvocationId, output: &Output) {
        self.live.remove(&id);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.waiters.notify(id, output);
    }

    /// Waits for the output of `id`. `None` if no such invocation exists.
    pub async fn output(&self, id: InvocationId) -> Result<Option<Output>, StorageError> {
        let rx = self.waiters.subscribe(id);
        let store = self.store.clone();
        let record = tokio::task::spawn_blocking(move || store.invocation(&id))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        match record {
            None => {
                drop(rx);
                self.waiters.prune(id);
                Ok(None)
            }
            Some(r) if r.output.is_some() => {
                drop(rx);
                self.waiters.prune(id);
                Ok(r.output)
            }
            Some(_) => Ok(rx.await.ok()),
        }
    }

    /// Re-starts every unfinished invocation found in storage.
    fn recover(self: &Arc<Self>) -> Result<(), StorageError> {
        let mut resumed = 0usize;
        for object in self.store.objects_with_inbox()? {
            // Activation rebuilds the inbox queue; an empty submit is not needed, just start it.
            self.objects.activate(self, &object);
        }
        for (n, (id, record)) in self.store.unfinished_invocations()?.into_iter().enumerate() {
            self.inflight.fetch_add(1, Ordering::AcqRel);
            resumed += 1;
            if record.kind == HandlerKind::Exclusive {
                continue; // resumed through its object's inbox
            }
            let journal = self.store.journal(&id)?;
            let invocation = Invocation {
                id,
                record,
                journal,
            };
            if invocation.record.kind == HandlerKind::Shared {
                let object = invocation.object();
                if let Err(e) =
                    self.objects
                        .send(self, &object, ObjectMsg::ResumeShared(invocation))
                {
                    tracing::error!(invocation_id = %id, error = %e, "cannot resume shared invocation");
                }
            } else {
                let node = self.clone();
                self.objects
                    .arbiter(n)
                    .spawn(async move { drive(node, invocation, None).await });
            }
        }
        tracing::info!(resumed, "node.recovered");
        Ok(())
    }

    /// Deletes finished invocations past their retention, in small batches.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let store = self.store.clone();
            let expired =
                tokio::task::spawn_blocking(move || -> Result<WriteBatch, StorageError> {
                    let mut batch = WriteBatch::new();
                    for (id, record) in store.expired_invocations(now_ms(), 10_000)? {
                        let inv = Invocation {
                            id,
                            record,
                            journal: vec![],
                        };
                        if let Some(row) = inv.idempotency_row() {
                            batch.delete(Table::Idempotency, row);
                        }
                        for key in store.journal_keys(&id)? {
                            batch.delete(Table::Journal, key);
                        }
                        batch.delete(Table::Invocations, keys::invocation(&id));
                    }
                    Ok(batch)
                })
                .await;
            if let Ok(Ok(batch)) = expired {
                if !batch.is_empty() {
                    if let Err(e) = self.store.writer.commit(batch).await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
            }
        }
    }
}

/// Opens storage, recovers, and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir)?;
    let schema = SchemaRegistry::new(store.deployments()?);
    let actor_threads = Config::threads(config.actor_threads);
    let arbiters: Vec<_> = (0..actor_threads)
        .map(|_| Arbiter::new().handle())
        .collect();
    let node = Arc::new(Node {
        objects: ObjectRegistry::new(arbiters),
        config: config.clone(),
        store,
        schema,
        waiters: Waiters::default(),
        live: LiveTable::default(),
        inflight: AtomicUsize::new(0),
        idempotency_gate: tokio::sync::Mutex::new(()),
    });
    node.recover()?;
    actix_rt::spawn(node.clone().sweep());
    actix_rt::spawn(ObjectRegistry::supervise(
        node.clone(),
        Duration::from_secs(1),
    ));

    let data = web::Data::from(node.clone());
    let ingress_data = data.clone();
    let ingress = HttpServer::new(move || {
        App::new()
            .app_data(ingress_data.clone())
            .configure(crate::ingress::config)
    })
    .workers(Config::threads(config.ingress_threads))
    .shutdown_timeout(5)
    .bind(config.ingress_addr)
    .map_err(|e| anyhow::anyhow!("cannot bind ingress on {}: {e}", config.ingress_addr))?
    .run();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(crate::admin::config)
    })
    .workers(1)
    .shutdown_timeout(5)
    .bind(config.admin_addr)
    .map_err(|e| anyhow::anyhow!("cannot bind admin on {}: {e}", config.admin_addr))?
    .run();
    tracing::info!(
        ingress = %config.ingress_addr,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "node.ready"
    );
    futures_util::future::try_join(ingress, admin).await?;
    tracing::info!("node.stopped");
    Ok(())
}
