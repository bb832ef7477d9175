//! Values stored in the tables (MessagePack with named fields, so fields can be added).

use serde::{Deserialize, Serialize};

use crate::journal::Output;

/// What runs an invocation and how it may touch state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// Virtual object handler holding the key's lock; may write state.
    Exclusive,
    /// Virtual object handler that only reads state; runs concurrently.
    Shared,
    /// Handler of a stateless service.
    Stateless,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvocationStatus {
    /// Durable, waiting in an inbox or for its first attempt.
    Pending,
    /// An attempt is streaming to the SDK endpoint.
    Running,
    /// The last attempt failed; the next one waits for its back-off.
    BackingOff,
    /// Finished with an output (a value or a terminal failure of the handler).
    Completed,
    /// Finished by the runtime: journal mismatch, protocol violation, retries exhausted.
    Failed,
}

impl InvocationStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::BackingOff => "backing-off",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// One row of `invocations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub service: String,
    pub handler: String,
    /// Object key; empty for stateless services.
    pub key: String,
    pub kind: HandlerKind,
    /// Deployment that serves this invocation for its whole life (a new deployment of the
    /// same service only takes new invocations: in-flight journals stay on the code that made them).
    pub deployment_id: String,
    pub status: InvocationStatus,
    /// Attempts started so far; also the epoch of the latest attempt.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_retry_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
    pub idempotency_key: Option<String>,
    /// Sequence number of this invocation's row in its object's inbox (exclusive handlers).
    pub inbox_seq: Option<u64>,
    pub output: Option<Output>,
    /// When a finished invocation (and its idempotency record) may be forgotten.
    pub expires_at_ms: Option<u64>,
}

/// One row of `idempotency`: the invocation an idempotency key already started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub invocation_id: crate::ids::InvocationId,
}

/// One row of `deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentRecord {
    pub id: String,
    pub uri: String,
    pub services: Vec<ServiceRecord>,
    pub registered_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub name: String,
    pub kind: ServiceKind,
    pub handlers: Vec<HandlerRecord>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Service,
    VirtualObject,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HandlerRecord {
    pub name: String,
    /// `exclusive` or `shared` (always `shared` for a stateless service).
    pub kind: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
