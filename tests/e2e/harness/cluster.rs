//! A cluster of kiln nodes (docs/cluster.md): N initial members started with `--cluster`, extra
//! nodes started as one-node clusters and added with `POST /cluster/nodes`, graceful removal
//! with `DELETE /cluster/nodes/{id}`, SIGKILL and restart on the same data dir and ports, and
//! the admin cluster API.

#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::*;

/// Partitions of the key space (docs/cluster.md).
pub const PARTITIONS: usize = 1024;

/// How long an initial cluster may take until every member sees every other alive.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One kiln node of a cluster.
pub struct ClusterNode {
    pub id: String,
    pub peer_port: u16,
    pub kiln: Kiln,
}

impl ClusterNode {
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }
    pub fn ingress(&self) -> String {
        self.kiln.ingress()
    }
    pub fn admin(&self) -> String {
        self.kiln.admin()
    }
    pub fn ingress_addr(&self) -> String {
        format!("127.0.0.1:{}", self.kiln.ingress_port)
    }
}

/// `GET /cluster/partitions`.
#[derive(Clone, Debug)]
pub struct Partitions {
    pub epoch: u64,
    /// Owner node id per partition (index = partition).
    pub owners: Vec<String>,
    pub moving: Vec<u64>,
}

impl Partitions {
    /// Partitions owned per node.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in &self.owners {
            *m.entry(o.clone()).or_default() += 1;
        }
        m
    }

    pub fn owned_by(&self, node: &str) -> usize {
        self.owners.iter().filter(|o| o.as_str() == node).count()
    }

    /// (partition, owner before, owner now) for every partition whose owner differs.
    pub fn moved_since(&self, before: &Partitions) -> Vec<(usize, String, String)> {
        before
            .owners
            .iter()
            .zip(&self.owners)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(p, (a, b))| (p, a.clone(), b.clone()))
            .collect()
    }
}

/// `GET /cluster/owner?service=&key=`.
#[derive(Clone, Debug)]
pub struct Owner {
    pub node: String,
    pub partition: u64,
    pub epoch: u64,
    pub ingress_addr: Option<String>,
}

pub struct Cluster {
    env: Env,
    opts: KilnOpts,
    pub nodes: Vec<ClusterNode>,
    /// Ids of the current members, as the test changed them (initial, added, removed).
    pub members: Vec<String>,
    pub http: Http,
    /// Expected services per registered deployment uri.
    deployments: Vec<(String, Vec<String>)>,
    /// Runtime behaviour that deviates from docs/cluster.md but that the harness worked around
    /// (e.g. deployments not replicated); printed at the end of the test.
    pub issues: Mutex<Vec<String>>,
}

fn ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = free_port();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

impl Cluster {
    /// Starts `n` members `n1..nN` with `--cluster n1=…,…` and waits until every member sees all
    /// of them alive, with no rebalance running and every partition owned by a member.
    pub async fn start(env: &Env, n: usize, opts: KilnOpts) -> Result<Cluster> {
        Cluster::start_named(env, n, opts, "127.0.0.1").await
    }

    /// [`Cluster::start`] with the members known by `host` (a DNS name such as `localhost`):
    /// `--cluster n1=<host>:…` and each node's `--advertised-peer-addr <host>:<port>`.
    pub async fn start_named(env: &Env, n: usize, opts: KilnOpts, host: &str) -> Result<Cluster> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let mut cluster = Cluster {
            env: env.clone(),
            opts,
            nodes: Vec::new(),
            members: Vec::new(),
            http: Http::new(),
            deployments: Vec::new(),
            issues: Mutex::new(Vec::new()),
        };
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let peer_ports = ports(n);
        let spec: Vec<String> = ids
            .iter()
            .zip(&peer_ports)
            .map(|(id, p)| format!("{id}={host}:{p}"))
            .collect();
        let spec = spec.join(",");
        for (id, peer_port) in ids.iter().zip(&peer_ports) {
            let mut args = vec!["--cluster".to_string(), spec.clone()];
            if host != "127.0.0.1" {
                args.extend(["--advertised-peer-addr".to_string(), format!("{host}:{peer_port}")]);
            }
            let node = cluster.prepare_node(id, *peer_port, &args)?;
            cluster.nodes.push(node);
        }
        // Start all members at once: a member may wait for its peers before it is ready.
        for node in &mut cluster.nodes {
            node.kiln.spawn_only()?;
        }
        for node in &mut cluster.nodes {
            node.kiln
                .wait_ready()
                .await
                .with_context(|| format!("starting cluster node {}", node.id))?;
        }
        cluster.members = ids.clone();
        let t0 = Instant::now();
        cluster.wait_stable(CLUSTER_READY_TIMEOUT).await?;
        println!(
            "cluster: {n} nodes ({spec}) alive and stable {} ms after ready",
            t0.elapsed().as_millis()
        );
        Ok(cluster)
    }

    fn prepare_node(&self, id: &str, peer_port: u16, extra: &[String]) -> Result<ClusterNode> {
        let used: Vec<u16> = self
            .nodes
            .iter()
            .flat_map(|n| [n.peer_port, n.kiln.ingress_port, n.kiln.admin_port])
            .chain([peer_port])
            .collect();
        let mut p = Vec::new();
        while p.len() < 2 {
            let port = free_port();
            if !used.contains(&port) && !p.contains(&port) {
                p.push(port);
            }
        }
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peer-addr".to_string(),
            format!("127.0.0.1:{peer_port}"),
        ];
        args.extend(extra.iter().cloned());
        let kiln = Kiln::prepare(&self.env, &format!("kiln-{id}"), p[0], p[1], &args, &self.opts)?;
        Ok(ClusterNode {
            id: id.to_string(),
            peer_port,
            kiln,
        })
    }

    /// Starts a node that is not a member (no `--cluster`, no `--join`: a one-node cluster of
    /// its own) and waits for its health; add it with [`Cluster::add_node`].
    pub async fn start_extra(&mut self, id: &str) -> Result<()> {
        ensure!(self.nodes.iter().all(|n| n.id != id), "node {id} exists already");
        let used: Vec<u16> = self.nodes.iter().map(|n| n.peer_port).collect();
        let mut peer_port = free_port();
        while used.contains(&peer_port) {
            peer_port = free_port();
        }
        let mut node = self.prepare_node(id, peer_port, &[])?;
        node.kiln.spawn_only()?;
        node.kiln
            .wait_ready()
            .await
            .with_context(|| format!("starting extra node {id}"))?;
        self.nodes.push(node);
        Ok(())
    }

    pub fn node(&self, id: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in the cluster"))
    }

    pub fn node_mut(&mut self, id: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in the cluster"))
    }

    pub fn admin(&self, id: &str) -> String {
        self.node(id).admin()
    }

    pub fn ingress(&self, id: &str) -> String {
        self.node(id).ingress()
    }

    /// `host:port` of the ingress of every initial/current member (for nginx).
    pub fn member_ingress_addrs(&self) -> Vec<String> {
        self.members.iter().map(|id| self.node(id).ingress_addr()).collect()
    }

    fn note_issue(&self, issue: String) {
        eprintln!("RUNTIME ISSUE (worked around by the harness): {issue}");
        self.issues.lock().unwrap().push(issue);
    }

    /// Prints the issues noted so far (call at the end of a test).
    pub fn print_issues(&self, test: &str) {
        let issues = self.issues.lock().unwrap();
        if issues.is_empty() {
            println!("{test}: no runtime issues worked around");
        } else {
            println!("{test}: RUNTIME ISSUES worked around by the harness:");
            for i in issues.iter() {
                println!("  - {i}");
            }
        }
    }

    // ---- admin API --------------------------------------------------------------------------

    pub async fn get_json(&self, url: &str) -> Result<Value> {
        let r = self.http.get_timeout(url, Duration::from_secs(20)).await?;
        r.ok_json().with_context(|| format!("GET {url}"))
    }

    /// `GET /cluster` on node `via`.
    pub async fn info(&self, via: &str) -> Result<Value> {
        self.get_json(&format!("{}/cluster", self.admin(via))).await
    }

    /// `GET /cluster/partitions` on node `via`.
    pub async fn partitions(&self, via: &str) -> Result<Partitions> {
        let v = self
            .get_json(&format!("{}/cluster/partitions", self.admin(via)))
            .await?;
        parse_partitions(&v)
    }

    /// `GET /cluster/owner?service=&key=` on node `via`.
    pub async fn owner(&self, via: &str, service: &str, key: &str) -> Result<Owner> {
        let url = format!(
            "{}/cluster/owner?service={}&key={}",
            self.admin(via),
            enc(service),
            enc(key)
        );
        let v = self.get_json(&url).await?;
        let node = v["node"]
            .as_str()
            .ok_or_else(|| anyhow!("GET {url}: no \"node\": {v}"))?
            .to_string();
        ensure!(
            v["service"] == service && v["key"] == key,
            "GET {url}: answer for another object: {v}"
        );
        Ok(Owner {
            node,
            partition: v["partition"]
                .as_u64()
                .ok_or_else(|| anyhow!("GET {url}: no \"partition\": {v}"))?,
            epoch: v["epoch"].as_u64().unwrap_or(0),
            ingress_addr: v["ingressAddr"].as_str().map(str::to_string),
        })
    }

    /// Owners of many keys of one service (16 lookups at a time).
    pub async fn owners(&self, via: &str, service: &str, keys: &[String]) -> Result<BTreeMap<String, Owner>> {
        use futures_util::StreamExt;
        let found = futures_util::stream::iter(keys.iter().map(|k| async move {
            let o = self.owner(via, service, k).await;
            (k.clone(), o)
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
        let mut out = BTreeMap::new();
        for (k, o) in found {
            out.insert(k, o?);
        }
        Ok(out)
    }

    /// `GET /cluster/objects?service=&key=&limit=` on node `via`.
    pub async fn objects(&self, via: &str, service: &str, key: &str, limit: usize) -> Result<Value> {
        self.get_json(&format!(
            "{}/cluster/objects?service={}&key={}&limit={limit}",
            self.admin(via),
            enc(service),
            enc(key)
        ))
        .await
    }

    /// `POST /cluster/nodes {"id","peerAddr"}` on node `via` (asserts 202); returns the answer.
    pub async fn add_node(&mut self, via: &str, id: &str) -> Result<Value> {
        let v = self.request_add(via, id).await?;
        if !self.members.iter().any(|m| m == id) {
            self.members.push(id.to_string());
        }
        Ok(v)
    }

    /// `add_node` without recording `id` as a member (for changes sent side by side).
    pub async fn request_add(&self, via: &str, id: &str) -> Result<Value> {
        let peer = self.node(id).peer_addr();
        let url = format!("{}/cluster/nodes", self.admin(via));
        let body = json!({ "id": id, "peerAddr": peer }).to_string();
        let r = self.http.post_timeout(&url, body, &[], Duration::from_secs(30)).await?;
        ensure!(
            r.status == 202,
            "POST {url} (add {id} at {peer}): expected 202, got {r}"
        );
        let v = r.json()?;
        ensure!(
            v["epoch"].is_u64() && v["moving"].is_u64(),
            "POST {url}: expected {{\"epoch\", \"moving\"}}, got {v}"
        );
        Ok(v)
    }

    /// `DELETE /cluster/nodes/{id}` on node `via` (asserts 202); returns the answer.
    pub async fn remove_node(&mut self, via: &str, id: &str) -> Result<Value> {
        let v = self.request_remove(via, id).await?;
        self.members.retain(|m| m != id);
        Ok(v)
    }

    /// `remove_node` without forgetting `id` as a member (for changes sent side by side).
    pub async fn request_remove(&self, via: &str, id: &str) -> Result<Value> {
        let url = format!("{}/cluster/nodes/{id}", self.admin(via));
        let r = self
            .http
            .request(reqwest::Method::DELETE, &url, None, &[], Some(Duration::from_secs(30)))
            .await?;
        ensure!(r.status == 202, "DELETE {url}: expected 202, got {r}");
        let v = r.json()?;
        ensure!(
            v["epoch"].is_u64() && v["moving"].is_u64(),
            "DELETE {url}: expected {{\"epoch\", \"moving\"}}, got {v}"
        );
        Ok(v)
    }

    /// Waits until every *running* member answers `GET /cluster` with: every member `alive`
    /// with its ingress and admin addresses known, no rebalance running, and the same epoch
    /// as the others; and `GET /cluster/partitions` with nothing moving and every partition
    /// owned by a member. Returns the partitions then.
    pub async fn wait_stable(&self, timeout: Duration) -> Result<Partitions> {
        let deadline = Deadline::after(timeout, format!("waiting for a stable cluster of {:?}", self.members));
        let mut last_print = Instant::now();
        loop {
            match self.stable_once().await {
                Ok(p) => return Ok(p),
                Err(e) => {
                    let last = format!("{e:#}");
                    if last_print.elapsed() > Duration::from_secs(5) {
                        println!("cluster: not stable yet: {last}");
                        last_print = Instant::now();
                    }
                    deadline.check(last)?;
                }
            }
            sleep_ms(200).await;
        }
    }

    async fn stable_once(&self) -> Result<Partitions> {
        let mut epochs = BTreeSet::new();
        let mut parts = None;
        for id in &self.members {
            let v = self.info(id).await?;
            ensure!(
                v["nodeId"] == id.as_str(),
                "{id}: GET /cluster says nodeId {}",
                v["nodeId"]
            );
            ensure!(v["rebalance"].is_null(), "{id}: rebalance running: {}", v["rebalance"]);
            epochs.insert(v["epoch"].as_u64().unwrap_or(0));
            let nodes = v["nodes"].as_array().ok_or_else(|| anyhow!("{id}: no nodes: {v}"))?;
            for m in &self.members {
                let n = nodes
                    .iter()
                    .find(|n| n["id"] == m.as_str())
                    .ok_or_else(|| anyhow!("{id}: member {m} not listed: {v}"))?;
                ensure!(n["status"] == "alive", "{id} sees {m} as {}", n["status"]);
                ensure!(
                    n["ingressAddr"].is_string() && n["adminAddr"].is_string(),
                    "{id} does not know {m}'s addresses yet: {n}"
                );
            }
            let p = self.partitions(id).await?;
            ensure!(
                p.owners.len() == PARTITIONS,
                "{id}: {} owners, expected {PARTITIONS}",
                p.owners.len()
            );
            ensure!(p.moving.is_empty(), "{id}: partitions moving: {:?}", p.moving);
            let counts = p.counts();
            for owner in counts.keys() {
                ensure!(
                    self.members.contains(owner),
                    "{id}: partitions owned by non-member {owner}: {counts:?}"
                );
            }
            if let Some(prev) = &parts {
                let prev: &Partitions = prev;
                ensure!(
                    prev.owners == p.owners,
                    "{id}: owner table differs from the other members' ({counts:?} vs {:?})",
                    prev.counts()
                );
            }
            parts = Some(p);
        }
        ensure!(epochs.len() == 1, "members report different epochs {epochs:?}");
        parts.ok_or_else(|| anyhow!("no members"))
    }

    /// Waits (bounded) for the rebalance that node `via` reports to finish, printing its
    /// progress every 2 s; then for the cluster to be stable. Returns the partitions.
    pub async fn wait_rebalanced(&self, via: &str, timeout: Duration) -> Result<Partitions> {
        let t0 = Instant::now();
        let deadline = Deadline::after(timeout, "waiting for the rebalance to finish");
        let mut last_print = Instant::now();
        loop {
            let last = match self.info(via).await {
                Ok(v) if v["rebalance"].is_null() => break,
                Ok(v) => {
                    let r = &v["rebalance"];
                    format!("epoch {} rebalance {r}", v["epoch"])
                }
                Err(e) => format!("{e:#}"),
            };
            if last_print.elapsed() >= Duration::from_secs(2) {
                println!("cluster: {:.1} s: {last}", t0.elapsed().as_secs_f64());
                last_print = Instant::now();
            }
            deadline.check(last)?;
            sleep_ms(100).await;
        }
        let rest = timeout.saturating_sub(t0.elapsed()).max(Duration::from_secs(10));
        self.wait_stable(rest).await
    }

    // ---- processes --------------------------------------------------------------------------

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: &str) {
        self.node_mut(id).kiln.kill();
    }

    /// SIGSTOP node `id`: it keeps its sockets, so connections to it are accepted and never
    /// answered, until [`Cluster::resume`].
    pub fn pause(&self, id: &str) -> Result<()> {
        self.node(id).kiln.signal("STOP")
    }

    /// SIGCONT node `id`.
    pub fn resume(&self, id: &str) -> Result<()> {
        self.node(id).kiln.signal("CONT")
    }

    /// (Re)starts node `id` on the same data dir and ports (SIGKILL first if running) and
    /// waits for its health.
    pub async fn restart(&mut self, id: &str) -> Result<()> {
        self.node_mut(id)
            .kiln
            .restart()
            .await
            .with_context(|| format!("restarting node {id}"))
    }

    // ---- deployments ------------------------------------------------------------------------

    /// Registers a deployment on the first member; the runtime replicates it to the others.
    /// Waits (15 s) until every running member lists the `expected` services; where one does
    /// not, notes a runtime issue and registers it there directly.
    pub async fn register(&mut self, uri: &str, expected: &[&str]) -> Result<()> {
        let first = self.members[0].clone();
        register_expect(&self.node(&first).kiln, uri, expected).await?;
        self.deployments
            .push((uri.to_string(), expected.iter().map(|s| s.to_string()).collect()));
        let others: Vec<String> = self.members.iter().filter(|m| **m != first).cloned().collect();
        for id in others {
            self.ensure_deployments_on(&id, Duration::from_secs(15)).await?;
        }
        Ok(())
    }

    /// Waits until node `id` lists every service registered so far; where it does not, notes a
    /// runtime issue and registers the deployment there directly.
    pub async fn ensure_deployments_on(&self, id: &str, wait: Duration) -> Result<()> {
        let t0 = Instant::now();
        let url = format!("{}/services", self.admin(id));
        loop {
            let names: BTreeSet<String> = match self.get_json(&url).await {
                Ok(v) => v["services"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s["name"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => BTreeSet::new(),
            };
            let missing: Vec<&(String, Vec<String>)> = self
                .deployments
                .iter()
                .filter(|(_, svcs)| svcs.iter().any(|s| !names.contains(s)))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if t0.elapsed() >= wait {
                for (uri, svcs) in missing {
                    self.note_issue(format!(
                        "deployment {uri} ({svcs:?}) registered on {} was not replicated to {id} within {:?} \
                         (GET /services there lists {names:?}); registering it on {id} directly",
                        self.members[0], wait
                    ));
                    let refs: Vec<&str> = svcs.iter().map(String::as_str).collect();
                    register_expect(&self.node(id).kiln, uri, &refs).await?;
                }
                return Ok(());
            }
            sleep_ms(200).await;
        }
    }
}

fn parse_partitions(v: &Value) -> Result<Partitions> {
    let owners = v["owners"]
        .as_array()
        .ok_or_else(|| anyhow!("/cluster/partitions: no \"owners\" array: {v}"))?
        .iter()
        .map(|o| {
            o.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("non-string owner {o}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let moving = v["moving"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    Ok(Partitions {
        epoch: v["epoch"].as_u64().unwrap_or(0),
        owners,
        moving,
    })
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---- helpers shared by the cluster tests ----------------------------------------------------

/// Options for cluster nodes in the tests: objects stay active for 10 minutes, so
/// `GET /cluster/objects` after a load still lists every key that got a request.
pub fn cluster_opts() -> KilnOpts {
    KilnOpts {
        extra_args: vec!["--object-idle-ms".to_string(), "600000".to_string()],
        ..Default::default()
    }
}

/// `k0000` … (n keys).
pub fn counter_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i:04}")).collect()
}

/// `GET /cluster/objects?service=…` on `via` must list each of `keys` (every one must be
/// active) on exactly one node, the node `GET /cluster/owner` names, with the same partition;
/// nothing truncated, no node unreachable. Returns active objects per node.
pub async fn check_objects_on_owners(
    cluster: &Cluster,
    via: &str,
    service: &str,
    keys: &[String],
) -> Result<BTreeMap<String, usize>> {
    let owners = cluster.owners(via, service, keys).await?;
    let v = cluster.objects(via, service, "", 100_000).await?;
    ensure!(
        v["truncated"] == false,
        "GET /cluster/objects: truncated: {}",
        truncate(&v.to_string(), 300)
    );
    let unreachable = v["unreachable"].as_array().cloned().unwrap_or_default();
    ensure!(
        unreachable.is_empty(),
        "GET /cluster/objects: unreachable nodes {unreachable:?}"
    );
    let objects = v["objects"].as_array().ok_or_else(|| {
        anyhow!(
            "GET /cluster/objects: no \"objects\" array: {}",
            truncate(&v.to_string(), 300)
        )
    })?;
    let mut seen: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for o in objects {
        if o["service"] != service {
            continue;
        }
        let key = o["key"].as_str().unwrap_or("?");
        let node = o["node"].as_str().unwrap_or("?").to_string();
        *per_node.entry(node.clone()).or_default() += 1;
        if let Some(k) = keys.iter().find(|k| k.as_str() == key) {
            seen.entry(k.as_str())
                .or_default()
                .push((node, o["partition"].as_u64().unwrap_or(u64::MAX)));
        }
    }
    let mut problems = Vec::new();
    for key in keys {
        let owner = &owners[key];
        match seen.get(key.as_str()).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!(
                "{service}/{key}: not active on any node (owner {})",
                owner.node
            )),
            Some([(node, p)]) => {
                if *node != owner.node || *p != owner.partition {
                    problems.push(format!(
                        "{service}/{key}: active on {node} (partition {p}) but GET /cluster/owner says {} (partition {})",
                        owner.node, owner.partition
                    ));
                }
            }
            Some(many) => problems.push(format!(
                "{service}/{key}: active on {} nodes {many:?} (owner {})",
                many.len(),
                owner.node
            )),
        }
    }
    ensure!(
        problems.is_empty(),
        "{} of {} keys are not active exactly once on their owner (first 20):\n  {}",
        problems.len(),
        keys.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
    Ok(per_node)
}

/// [`check_exact_sequences`]; on failure also prints, for up to 5 wrong keys, the key's owner
/// and partition now and the timeline of its requests (times on the load's clock, which started
/// at `report`'s start).
pub async fn check_sequences_explained(
    cluster: &Cluster,
    report: &LoadReport,
    values: &BTreeMap<String, Vec<i64>>,
    expected: &BTreeMap<String, usize>,
) -> Result<()> {
    let Err(e) = check_exact_sequences(values, expected) else {
        return Ok(());
    };
    let via = cluster.members[0].clone();
    for key in bad_sequence_keys(values, expected).iter().take(5) {
        let owner = match cluster.owner(&via, "Counter", key).await {
            Ok(o) => format!("owner now {} (partition {})", o.node, o.partition),
            Err(e) => format!("owner unknown: {e:#}"),
        };
        let mut v = values.get(key).cloned().unwrap_or_default();
        v.sort_unstable();
        eprintln!(
            "Counter/{key}: {owner}; totals returned {v:?}; requests:\n{}",
            report.timeline(key)
        );
        // The invocations the cluster has for the key (every live node).
        let url = format!(
            "{}/cluster/invocations?service=Counter&key={}&limit=200",
            cluster.admin(&via),
            enc(key)
        );
        match cluster.get_json(&url).await {
            Ok(v) => {
                let items = v["invocations"].as_array().cloned().unwrap_or_default();
                let lines: Vec<String> = items
                    .iter()
                    .filter(|i| i["key"] == key.as_str())
                    .map(|i| {
                        format!(
                            "    {} node={} handler={} status={} attempts={} output={} lastError={}",
                            i["id"].as_str().unwrap_or("?"),
                            i["node"].as_str().unwrap_or("?"),
                            i["handler"].as_str().unwrap_or("?"),
                            inv_status(i),
                            i["attempts"],
                            truncate(&i["output"].to_string(), 80),
                            truncate(&i["lastError"].to_string(), 160),
                        )
                    })
                    .collect();
                eprintln!(
                    "Counter/{key}: GET /cluster/invocations lists {}:\n{}",
                    lines.len(),
                    lines.join("\n")
                );
            }
            Err(e) => eprintln!("Counter/{key}: GET /cluster/invocations failed: {e:#}"),
        }
    }
    Err(e)
}

/// The metadata leader as `via` reports it, once it reports one other than `not`.
pub async fn metadata_leader(cluster: &Cluster, via: &str, not: Option<&str>) -> Result<String> {
    let deadline = Deadline::after(Duration::from_secs(30), "waiting for a metadata leader");
    loop {
        let info = cluster.info(via).await?;
        if let Some(leader) = info["metadataLeader"].as_str().filter(|l| Some(*l) != not) {
            return Ok(leader.to_string());
        }
        deadline.check(format!("GET /cluster: {info}"))?;
        sleep_ms(100).await;
    }
}

/// Sends every failed request of `report` again with its own idempotency key until it succeeds; returns
/// the adds each key must total (its distinct idempotency keys).
pub async fn resend_failed(
    cluster: &Cluster,
    test: &str,
    base: &str,
    report: &LoadReport,
) -> Result<BTreeMap<String, usize>> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut failed = Vec::new();
    for r in &report.results {
        let idem = r
            .idempotency_key
            .clone()
            .ok_or_else(|| anyhow!("load without idempotency keys"))?;
        keys.entry(r.key.clone()).or_default().insert(idem.clone());
        if !r.outcome.is_ok() {
            failed.push((r.key.clone(), idem));
        }
    }
    println!(
        "{test}: {} requests failed while a node was down; sending them again",
        failed.len()
    );
    for (key, idem) in failed {
        let deadline = Deadline::after(Duration::from_secs(60), format!("re-sending {key} {idem}"));
        loop {
            let outcome = counter_add_once(&cluster.http, base, &key, Some(&idem), Duration::from_secs(30)).await;
            if outcome.is_ok() {
                break;
            }
            deadline.check(format!("{outcome:?}"))?;
            sleep_ms(200).await;
        }
    }
    Ok(keys.into_iter().map(|(k, ids)| (k, ids.len())).collect())
}

/// The end of a load with idempotency keys: every failed add sent again with its key until it
/// succeeds, then every key's total must be exactly its distinct adds.
pub async fn check_totals_after_resend(cluster: &Cluster, test: &str, base: &str, report: &LoadReport) -> Result<()> {
    println!("{test}: {} adds: {:?}", report.results.len(), report.histogram());
    let expected = resend_failed(cluster, test, base, report).await?;
    verify_counter_totals(&cluster.http, base, &expected).await?;
    println!("{test}: all {} totals exact", expected.len());
    Ok(())
}
