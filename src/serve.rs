//! Wiring: opens storage, builds the node and its owners' threads, recovers, and serves
//! ingress, admin and the node-to-node endpoint until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::metadata::{replica_id, MetaGroup};
use crate::node::Node;
use crate::object::ObjectRegistry;
use crate::placement::Cluster;
use crate::schema::SchemaRegistry;
use crate::storage::{blocking, PartitionGate, PartitionState, Store};

/// Lifts the soft open-files limit to the hard one (at most 2^20): every connection holds a
/// descriptor, and the common soft default of 1024 lets a thousand idle clients shut everyone
/// else out of ingress and admin.
fn raise_open_files_limit() {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    match rlimit::increase_nofile_limit(1 << 20) {
        Ok(now) if now >= 4096 => tracing::info!(open_files = now, was = soft, "node.open_files_limit"),
        Ok(now) => {
            tracing::warn!(
                open_files = now,
                "node.open_files_limit_low; raise the hard limit (LimitNOFILE, ulimit -Hn)"
            )
        }
        Err(e) => tracing::warn!(error = %e, open_files = soft, "node.open_files_limit_unchanged"),
    }
}

/// Opens storage, recovers, and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(data_dir = %config.data_dir.display(), node_id = %config.node_id, "node.opening");
    raise_open_files_limit();
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
    let metadata = MetaGroup::start(replica_id(&config.node_id), store.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the metadata replica: {e}"))?;
    let node = Arc::new(Node::new(
        config.clone(),
        store,
        schema,
        ObjectRegistry::new(arbiters),
        cluster,
        Arc::new(metadata),
    ));
    let gate = node.store.gate.clone();
    node.recover_partitions(Arc::new(move |p| gate.owns(p))).await?;
    actix_rt::spawn(node.clone().sweep());
    actix_rt::spawn(node.clone().gossip());
    actix_rt::spawn(node.clone().follow_metadata());
    actix_rt::spawn(node.clone().bootstrap_metadata());
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
