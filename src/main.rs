//! `kiln`: command line and wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kiln::config::Config;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Durable execution of virtual objects")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: ingress, admin API and storage.
    Serve(Box<ServeArgs>),
    /// Inspect or change a cluster through a node's admin API.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes, their state and partitions, and any running rebalance.
    Status(AdminArg),
    /// Add a running node (started without --cluster) and move partitions to it.
    Join {
        /// Id of the node to add
        node_id: String,
        /// Its --peer-addr
        peer_addr: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Remove a node gracefully: its partitions move to the others first.
    Leave {
        /// Id of the node to remove
        node_id: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Undo a running rebalance: nodes joining leave again (what moved to them moves back),
    /// nodes leaving stay; every partition stays served.
    Abort(AdminArg),
}

#[derive(Args)]
struct AdminArg {
    /// Admin API of any node
    #[arg(long, env = "KILN_ADMIN_URL", default_value = "http://127.0.0.1:9070")]
    admin: String,
}

/// Every flag also reads a `KILN_*` environment variable; both override the config file.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file; its keys are the flag names with '_' (e.g. `max_body_bytes = 1048576`).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./kiln-data]
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Ingress listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "KILN_INGRESS_ADDR")]
    ingress_addr: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9070]
    #[arg(long, env = "KILN_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Largest ingress request body in bytes [default: 10485760]
    #[arg(long, env = "KILN_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// A request body not received whole this long after its head answers 408, in ms [default: 30000]
    #[arg(long, env = "KILN_BODY_READ_TIMEOUT_MS")]
    body_read_timeout_ms: Option<u64>,
    /// How long idempotent responses and finished invocations are kept, in seconds [default: 86400]
    #[arg(long, env = "KILN_IDEMPOTENCY_RETENTION_SECS")]
    idempotency_retention_secs: Option<u64>,
    /// First retry back-off in ms [default: 100]
    #[arg(long, env = "KILN_RETRY_INITIAL_MS")]
    retry_initial_ms: Option<u64>,
    /// Largest retry back-off in ms [default: 10000]
    #[arg(long, env = "KILN_RETRY_MAX_MS")]
    retry_max_ms: Option<u64>,
    /// Attempts before an invocation fails for good, 0 = forever [default: 1000]
    #[arg(long, env = "KILN_RETRY_MAX_ATTEMPTS")]
    retry_max_attempts: Option<u32>,
    /// Inbox length per object before 429 [default: 10000]
    #[arg(long, env = "KILN_MAX_INBOX_PER_OBJECT")]
    max_inbox_per_object: Option<usize>,
    /// Bytes of queued inputs an object holds in memory before 429 [default: 67108864]
    #[arg(long, env = "KILN_MAX_INBOX_BYTES_PER_OBJECT")]
    max_inbox_bytes_per_object: Option<u64>,
    /// Unfinished invocations per node before 429 [default: 50000]
    #[arg(long, env = "KILN_MAX_INFLIGHT_INVOCATIONS")]
    max_inflight_invocations: Option<usize>,
    /// Idle time before an object actor passivates, in ms [default: 60000]
    #[arg(long, env = "KILN_OBJECT_IDLE_MS")]
    object_idle_ms: Option<u64>,
    /// Silence from an SDK endpoint before an attempt is retried, in ms [default: 300000]
    #[arg(long, env = "KILN_ATTEMPT_INACTIVITY_TIMEOUT_MS")]
    attempt_inactivity_timeout_ms: Option<u64>,
    /// How long an SDK waits for a completion before suspending the attempt, in ms [default: 1000]
    #[arg(long, env = "KILN_SUSPEND_AFTER_MS")]
    suspend_after_ms: Option<u32>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "KILN_LOG_FORMAT")]
    log_format: Option<String>,
    /// This node's id in a cluster [default: n1]
    #[arg(long, env = "KILN_NODE_ID")]
    node_id: Option<String>,
    /// Node-to-node listen address [default: 127.0.0.1:7070]
    #[arg(long, env = "KILN_PEER_ADDR")]
    peer_addr: Option<SocketAddr>,
    /// `host:port` (a DNS name allowed) the other members reach --peer-addr at [default: --peer-addr]
    #[arg(long, env = "KILN_ADVERTISED_PEER_ADDR")]
    advertised_peer_addr: Option<String>,
    /// Initial cluster members, `n1=host:port,n2=host:port,…` (their --peer-addr), the same on
    /// every initial node; only read on a data dir's first start
    #[arg(long, env = "KILN_CLUSTER")]
    cluster: Option<String>,
    /// Join an existing cluster through this member's peer address (a new node)
    #[arg(long, env = "KILN_JOIN")]
    join: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            data_dir,
            ingress_addr,
            admin_addr,
            max_body_bytes,
            body_read_timeout_ms,
            idempotency_retention_secs,
            retry_initial_ms,
            retry_max_ms,
            retry_max_attempts,
            max_inbox_per_object,
            max_inbox_bytes_per_object,
            max_inflight_invocations,
            object_idle_ms,
            attempt_inactivity_timeout_ms,
            suspend_after_ms,
            log_format,
            node_id,
            peer_addr
        );
        if self.advertised_peer_addr.is_some() {
            c.advertised_peer_addr = self.advertised_peer_addr;
        }
        if self.cluster.is_some() {
            c.cluster = self.cluster;
        }
        if self.join.is_some() {
            c.join = self.join;
        }
        c.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(c)
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            init_tracing(&config.log_format);
            actix_rt::System::new().block_on(kiln::serve::run(config))
        }
        Command::Cluster(command) => actix_rt::System::new().block_on(cluster_command(command)),
    }
}

/// Runs a `kiln cluster` command against the admin API and prints the answer.
async fn cluster_command(command: ClusterCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (request, base) = match &command {
        ClusterCommand::Status(a) => (client.get(format!("{}/cluster", a.admin)), &a.admin),
        ClusterCommand::Join {
            node_id,
            peer_addr,
            admin,
        } => (
            client
                .post(format!("{}/cluster/nodes", admin.admin))
                .header("content-type", "application/json")
                .body(serde_json::json!({ "id": node_id, "peerAddr": peer_addr }).to_string()),
            &admin.admin,
        ),
        ClusterCommand::Leave { node_id, admin } => (
            client.delete(format!("{}/cluster/nodes/{node_id}", admin.admin)),
            &admin.admin,
        ),
        ClusterCommand::Abort(a) => (client.post(format!("{}/cluster/rebalance/abort", a.admin)), &a.admin),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the answer")?;
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::json!({ "message": String::from_utf8_lossy(&bytes) }));
    if !status.is_success() {
        anyhow::bail!("{status}: {}", body["message"].as_str().unwrap_or(&body.to_string()));
    }
    match command {
        ClusterCommand::Status(_) => print_status(&body),
        _ => println!(
            "accepted: epoch {}, {} partitions to move (watch with `kiln cluster status`)",
            body["epoch"], body["moving"]
        ),
    }
    Ok(())
}

fn print_status(body: &serde_json::Value) {
    println!(
        "epoch {}  ({} partitions, {} virtual nodes per node)",
        body["epoch"], body["partitions"], body["virtualNodes"]
    );
    if let Some(leader) = body["metadataLeader"].as_str() {
        println!("metadata leader: {leader}");
    }
    if let Some(r) = body["rebalance"].as_object() {
        println!("rebalance: {} of {} partitions moved", r["moved"], r["total"]);
    }
    println!(
        "{:<10} {:<8} {:>10} {:>8} {:>9}  addresses (peer / ingress / admin)",
        "node", "status", "partitions", "objects", "inflight"
    );
    for n in body["nodes"].as_array().into_iter().flatten() {
        let s = |k: &str| n[k].as_str().map_or("-".to_owned(), str::to_owned);
        let v = |k: &str| {
            if n[k].is_null() {
                "-".to_owned()
            } else {
                n[k].to_string()
            }
        };
        println!(
            "{:<10} {:<8} {:>10} {:>8} {:>9}  {} / {} / {}",
            s("id"),
            s("status"),
            v("partitions"),
            v("activeObjects"),
            v("inflight"),
            s("peerAddr"),
            s("ingressAddr"),
            s("adminAddr")
        );
    }
}
