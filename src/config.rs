//! Every tunable and limit of a node, with units in the names.
//!
//! Precedence: command-line flag > environment variable (`KILN_*`) > config file (`--config`,
//! TOML) > built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of `kiln serve`. Field names are also the TOML keys of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where fjall keeps all durable data.
    pub data_dir: PathBuf,
    /// Public ingress (invoke handlers, attach to invocations).
    pub ingress_addr: SocketAddr,
    /// Admin API (deployments, services, invocations, health).
    pub admin_addr: SocketAddr,
    /// Largest accepted request body on the ingress.
    pub max_body_bytes: usize,
    /// A request whose body has not arrived whole this long after its head is answered 408
    /// and its connection closed (slow or stalled clients cannot hold connections forever).
    pub body_read_timeout_ms: u64,
    /// How long the response of a call with an `idempotency-key` is kept.
    pub idempotency_retention_secs: u64,
    /// First retry delay of a failed invocation attempt; doubles each time.
    pub retry_initial_ms: u64,
    /// Ceiling of the retry delay.
    pub retry_max_ms: u64,
    /// Attempts after which an invocation fails for good (0 = retry forever).
    pub retry_max_attempts: u32,
    /// Durable inbox length per object beyond which new calls get 429.
    pub max_inbox_per_object: usize,
    /// Bytes of queued inputs an object's actor holds in memory beyond which new calls get
    /// 429 (with `max_inbox_per_object`, so a queue of large inputs cannot exhaust memory).
    pub max_inbox_bytes_per_object: u64,
    /// Unfinished invocations a node holds in memory beyond which new calls get 429.
    pub max_inflight_invocations: usize,
    /// An object actor with nothing to do for this long is stopped (passivated).
    pub object_idle_ms: u64,
    /// An attempt whose SDK endpoint sends nothing for this long is aborted and retried.
    pub attempt_inactivity_timeout_ms: u64,
    /// How long the SDK may wait for a completion before it suspends the attempt.
    pub suspend_after_ms: u32,
    /// Largest frame accepted from an SDK endpoint.
    pub max_frame_bytes: usize,
    /// Number of threads running object actors (0 = one per CPU).
    pub actor_threads: usize,
    /// Number of HTTP worker threads of the ingress (0 = one per CPU).
    pub ingress_threads: usize,
    /// `text` or `json`.
    pub log_format: String,
    /// Stable name of this node in a cluster.
    pub node_id: String,
    /// Node-to-node endpoint (MessagePack over HTTP).
    pub peer_addr: SocketAddr,
    /// `host:port` the other members reach this node's peer endpoint at, when it is not
    /// `peer_addr` itself (a DNS name, or a wildcard listen address behind it).
    pub advertised_peer_addr: Option<String>,
    /// Initial members `id=host:port,…` (peer addresses), read on a data dir's first start.
    pub cluster: Option<String>,
    /// Peer address of a member to ask to add this new node.
    pub join: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./kiln-data"),
            ingress_addr: "127.0.0.1:8080".parse().expect("valid addr"),
            admin_addr: "127.0.0.1:9070".parse().expect("valid addr"),
            max_body_bytes: 10 * 1024 * 1024,
            body_read_timeout_ms: 30_000,
            idempotency_retention_secs: 24 * 60 * 60,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            retry_max_attempts: 1000,
            max_inbox_per_object: 10_000,
            max_inbox_bytes_per_object: 64 * 1024 * 1024,
            max_inflight_invocations: 50_000,
            object_idle_ms: 60_000,
            attempt_inactivity_timeout_ms: 300_000,
            suspend_after_ms: 1_000,
            max_frame_bytes: 16 * 1024 * 1024,
            actor_threads: 0,
            ingress_threads: 0,
            log_format: "text".into(),
            node_id: "n1".into(),
            peer_addr: "127.0.0.1:7070".parse().expect("valid addr"),
            advertised_peer_addr: None,
            cluster: None,
            join: None,
        }
    }
}

impl Config {
    /// The peer address this node is known by in the membership.
    pub fn advertised_peer_addr(&self) -> String {
        self.advertised_peer_addr
            .clone()
            .unwrap_or_else(|| self.peer_addr.to_string())
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// Back-off before attempt `attempt + 1`, given that `attempt` attempts have failed.
    pub fn retry_delay(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let ms = self.retry_initial_ms.saturating_mul(1u64 << exp).min(self.retry_max_ms);
        Duration::from_millis(ms)
    }

    /// `retry_delay` with a handler's own interval overrides.
    pub fn retry_delay_with(&self, failed_attempts: u32, initial_ms: Option<u64>, max_ms: Option<u64>) -> Duration {
        let c = Config {
            retry_initial_ms: initial_ms.unwrap_or(self.retry_initial_ms).max(1),
            retry_max_ms: max_ms.unwrap_or(self.retry_max_ms),
            ..Config::default()
        };
        c.retry_delay(failed_attempts)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_inbox_bytes_per_object < self.max_body_bytes as u64 {
            return Err("max_inbox_bytes_per_object must be >= max_body_bytes (one request must fit)".into());
        }
        if let Some(addr) = &self.advertised_peer_addr {
            check_host_port(addr).map_err(|e| format!("advertised_peer_addr: {e}"))?;
        }
        if self.body_read_timeout_ms == 0 {
            return Err("body_read_timeout_ms must be > 0".into());
        }
        if self.max_body_bytes == 0 || self.max_frame_bytes < 1024 {
            return Err("max_body_bytes must be > 0 and max_frame_bytes >= 1024".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err("retry_initial_ms must be > 0 and <= retry_max_ms".into());
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 || !self.node_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "node_id {:?} must be 1 to 64 visible ASCII characters",
                self.node_id
            ));
        }
        if let Some(spec) = &self.cluster {
            parse_members(spec).map_err(|e| format!("cluster: {e}"))?;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be 'text' or 'json', not {:?}",
                self.log_format
            ));
        }
        Ok(())
    }

    pub fn threads(configured: usize) -> usize {
        if configured > 0 {
            configured
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        }
    }
}

/// `host:port` where host is a DNS name, an IPv4 literal or a bracketed IPv6 literal.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?}: expected host:port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("address {addr:?}: port {port:?} is not 1-65535")),
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        // RFC 1123 names (which include IPv4 literals): labels of letters, digits and '-'.
        host.len() <= 253
            && host.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    if ok {
        Ok(())
    } else {
        Err(format!("address {addr:?}: {host:?} is not a host name or IP literal"))
    }
}

/// `n1=127.0.0.1:7071,n2=kiln-2.internal:7071,…` → [(id, peer address)].
pub fn parse_members(spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("cluster member {item:?}: expected id=host:port"))?;
            anyhow::ensure!(
                !id.is_empty() && id.len() <= 64,
                "node id {id:?} must be 1 to 64 characters"
            );
            check_host_port(addr).map_err(|e| anyhow::anyhow!("cluster member {item:?}: {e}"))?;
            Ok((id.to_owned(), addr.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_table() {
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1:7071", true),
            ("kiln-2.internal:7071", true),
            ("localhost:1", true),
            ("[::1]:7071", true),
            ("[::1]", false),
            ("::1:7071", false),
            ("host", false),
            ("host:0", false),
            ("host:70000", false),
            (":7071", false),
            ("-bad.example:7071", false),
            ("a..b:7071", false),
            ("has space:7071", false),
            ("under_score:7071", false),
        ];
        for (addr, ok) in cases {
            assert_eq!(
                check_host_port(addr).is_ok(),
                *ok,
                "{addr}: {:?}",
                check_host_port(addr)
            );
        }
    }

    #[test]
    fn retry_delay_doubles_up_to_the_ceiling() {
        let c = Config {
            retry_initial_ms: 100,
            retry_max_ms: 1000,
            ..Config::default()
        };
        let ms: Vec<u128> = (1..=6).map(|n| c.retry_delay(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn file_keys_match_field_names() {
        let c: Config = toml::from_str("data_dir = '/tmp/x'\nmax_body_bytes = 5").unwrap();
        assert_eq!(c.max_body_bytes, 5);
        assert_eq!(c.ingress_addr, Config::default().ingress_addr);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }
}
