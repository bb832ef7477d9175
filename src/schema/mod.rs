//! Registered deployments and the services they serve, plus endpoint discovery; the rules of
//! versioned deployments are in `versions`.
//!
//! The schema is immutable and swapped whole on registration, so readers on the hot path
//! take an `Arc` and never wait for a writer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

pub mod versions;

use crate::storage::{DeploymentRecord, HandlerKind, HandlerRecord, RetryPolicy, ServiceKind, ServiceRecord};

/// A service as the ingress sees it.
#[derive(Clone, Debug)]
pub struct ServiceEntry {
    pub kind: ServiceKind,
    pub deployment_id: String,
    pub handlers: HashMap<String, HandlerEntry>,
}

#[derive(Clone, Copy, Debug)]
pub struct HandlerEntry {
    pub kind: HandlerKind,
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Default)]
pub struct Schema {
    pub services: HashMap<String, ServiceEntry>,
    pub deployments: Vec<DeploymentRecord>,
}

impl Schema {
    fn build(mut deployments: Vec<DeploymentRecord>) -> Self {
        // The most recently registered deployment of a service takes its new invocations.
        deployments.sort_by_key(|d| d.registered_at_ms);
        let mut services = HashMap::new();
        for d in &deployments {
            for s in &d.services {
                let handlers = s
                    .handlers
                    .iter()
                    .map(|h| {
                        let kind = match (s.kind, h.kind.as_str()) {
                            (ServiceKind::Service, _) => HandlerKind::Stateless,
                            (_, "shared") => HandlerKind::Shared,
                            (ServiceKind::Workflow, _) => HandlerKind::Workflow,
                            (ServiceKind::VirtualObject, _) => HandlerKind::Exclusive,
                        };
                        (
                            h.name.clone(),
                            HandlerEntry {
                                kind,
                                retry_policy: h.retry_policy,
                            },
                        )
                    })
                    .collect();
                services.insert(
                    s.name.clone(),
                    ServiceEntry {
                        kind: s.kind,
                        deployment_id: d.id.clone(),
                        handlers,
                    },
                );
            }
        }
        Self { services, deployments }
    }
}

/// What the core's entry planner may know of the registered services.
impl crate::core::entry::Catalog for Schema {
    fn target(&self, service: &str, handler: &str) -> Result<crate::core::entry::Target, crate::core::entry::Missing> {
        use crate::core::entry::{Missing, Target};
        let s = self.services.get(service).ok_or(Missing::Service)?;
        let h = s.handlers.get(handler).ok_or(Missing::Handler)?;
        Ok(Target {
            service_kind: s.kind,
            handler_kind: h.kind,
            deployment_id: s.deployment_id.clone(),
        })
    }

    fn service_kind(&self, service: &str) -> Option<ServiceKind> {
        self.services.get(service).map(|s| s.kind)
    }
}

#[derive(Default)]
pub struct SchemaRegistry(RwLock<Arc<Schema>>);

impl SchemaRegistry {
    pub fn new(deployments: Vec<DeploymentRecord>) -> Self {
        Self(RwLock::new(Arc::new(Schema::build(deployments))))
    }

    pub fn snapshot(&self) -> Arc<Schema> {
        self.0.read().expect("schema lock").clone()
    }

    /// Adds or replaces a deployment (already durable) and swaps the schema.
    pub fn upsert(&self, record: DeploymentRecord) {
        let mut guard = self.0.write().expect("schema lock");
        let mut deployments: Vec<DeploymentRecord> = guard
            .deployments
            .iter()
            .filter(|d| d.id != record.id)
            .cloned()
            .collect();
        deployments.push(record);
        *guard = Arc::new(Schema::build(deployments));
    }

    /// Drops a removed deployment (its row already deleted) and swaps the schema.
    pub fn remove(&self, id: &str) {
        let mut guard = self.0.write().expect("schema lock");
        let deployments = guard.deployments.iter().filter(|d| d.id != id).cloned().collect();
        *guard = Arc::new(Schema::build(deployments));
    }

    /// The handler's own retry policy, from the deployment an invocation is pinned to.
    pub fn retry_policy(&self, deployment_id: &str, service: &str, handler: &str) -> Option<RetryPolicy> {
        let schema = self.snapshot();
        let deployment = schema.deployments.iter().find(|d| d.id == deployment_id)?;
        let service = deployment.services.iter().find(|s| s.name == service)?;
        service.handlers.iter().find(|h| h.name == handler)?.retry_policy
    }

    pub fn endpoint_of(&self, deployment_id: &str) -> Option<String> {
        self.snapshot()
            .deployments
            .iter()
            .find(|d| d.id == deployment_id)
            .map(|d| d.uri.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("could not reach {uri}/discover: {message}")]
    Unreachable { uri: String, message: String },
    #[error("invalid discovery response from {uri}: {message}")]
    Invalid { uri: String, message: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DiscoveryResponse {
    protocol_version: u32,
    services: Vec<DiscoveredService>,
}

#[derive(Deserialize)]
struct DiscoveredService {
    name: String,
    kind: String,
    handlers: Vec<DiscoveredHandler>,
}

#[derive(Deserialize)]
struct DiscoveredHandler {
    name: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "retryPolicy")]
    retry_policy: Option<RetryPolicy>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Largest discovery answer read; a bigger one is refused without being read whole.
pub const MAX_DISCOVERY_BYTES: usize = 4 * 1024 * 1024;

/// Asks `uri` which services it serves (`GET {uri}/discover`).
pub async fn discover(uri: &str) -> Result<Vec<ServiceRecord>, DiscoveryError> {
    let url = format!("{}/discover", uri.trim_end_matches('/'));
    let unreachable = |message: String| DiscoveryError::Unreachable {
        uri: uri.to_owned(),
        message,
    };
    let invalid = |message: String| DiscoveryError::Invalid {
        uri: uri.to_owned(),
        message,
    };
    let response = crate::invoker::http_client()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(invalid(format!("status {}", response.status())));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DISCOVERY_BYTES as u64)
    {
        return Err(invalid(format!(
            "the answer is larger than {MAX_DISCOVERY_BYTES} bytes"
        )));
    }
    let (body, more) = crate::invoker::read_up_to(response, MAX_DISCOVERY_BYTES)
        .await
        .map_err(unreachable)?;
    if more {
        return Err(invalid(format!(
            "the answer is larger than {MAX_DISCOVERY_BYTES} bytes"
        )));
    }
    let parsed: DiscoveryResponse = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    if parsed.protocol_version != crate::invoker::frame::PROTOCOL_VERSION {
        return Err(invalid(format!(
            "protocol version {} is not supported (this runtime speaks {})",
            parsed.protocol_version,
            crate::invoker::frame::PROTOCOL_VERSION
        )));
    }
    let mut services = Vec::new();
    for s in parsed.services {
        if !valid_name(&s.name) {
            return Err(invalid(format!("service name {:?} is not valid", s.name)));
        }
        if s.kind == "workflow"
            && s.handlers
                .iter()
                .filter(|h| h.kind.as_deref() == Some("workflow"))
                .count()
                != 1
        {
            return Err(invalid(format!(
                "workflow {} must have exactly one handler of kind 'workflow'",
                s.name
            )));
        }
        let kind = match s.kind.as_str() {
            "service" => ServiceKind::Service,
            "virtual_object" => ServiceKind::VirtualObject,
            "workflow" => ServiceKind::Workflow,
            other => return Err(invalid(format!("service {}: kind {other:?} is not supported", s.name))),
        };
        let mut handlers = Vec::new();
        for h in s.handlers {
            if !valid_name(&h.name) {
                return Err(invalid(format!("handler name {:?} of {} is not valid", h.name, s.name)));
            }
            let hk = match (kind, h.kind.as_deref()) {
                (ServiceKind::Service, _) => "shared",
                (_, Some("shared")) => "shared",
                (ServiceKind::VirtualObject, Some("exclusive") | None) => "exclusive",
                (ServiceKind::Workflow, Some("workflow")) => "workflow",
                (ServiceKind::Workflow, None) => "shared",
                (_, Some(other)) => {
                    return Err(invalid(format!(
                        "handler {}/{}: kind {other:?} is not supported",
                        s.name, h.name
                    )))
                }
            };
            handlers.push(HandlerRecord {
                name: h.name,
                kind: hk.into(),
                retry_policy: h.retry_policy,
            });
        }
        services.push(ServiceRecord {
            name: s.name,
            kind,
            handlers,
        });
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("Counter"));
        assert!(valid_name("three_step2"));
        assert!(!valid_name("2x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn latest_deployment_wins() {
        let svc = |kind| ServiceRecord {
            name: "S".into(),
            kind,
            handlers: vec![HandlerRecord {
                name: "h".into(),
                kind: "shared".into(),
                retry_policy: None,
            }],
        };
        let registry = SchemaRegistry::new(vec![DeploymentRecord {
            id: "a".into(),
            uri: "u1".into(),
            services: vec![svc(ServiceKind::Service)],
            registered_at_ms: 1,
        }]);
        registry.upsert(DeploymentRecord {
            id: "b".into(),
            uri: "u2".into(),
            services: vec![svc(ServiceKind::VirtualObject)],
            registered_at_ms: 2,
        });
        let schema = registry.snapshot();
        assert_eq!(schema.services["S"].deployment_id, "b");
        assert_eq!(schema.services["S"].handlers["h"].kind, HandlerKind::Shared);
        assert_eq!(registry.endpoint_of("a").as_deref(), Some("u1"));
    }
}
