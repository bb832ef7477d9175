//! The state the core reads and writes: the values stored in the tables (MessagePack with
//! named fields, so fields can be added). Storage persists them; it does not interpret them.

use serde::{Deserialize, Serialize};

use crate::ids::{InvocationId, ObjectId};
use crate::journal::{CompletionResult, Entry, Headers, Output};

pub use crate::journal::HandlerKind;

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
    /// Waiting for a completion (timer, call result, awakeable, promise); holds no request.
    Suspended,
    /// Created by a delayed send; becomes pending when its timer fires.
    Scheduled,
    /// Stopped by an operator (`kill`), without compensation.
    Killed,
}

impl InvocationStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Killed)
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::BackingOff,
            Self::Completed,
            Self::Failed,
            Self::Suspended,
            Self::Scheduled,
            Self::Killed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::BackingOff => "backing-off",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Suspended => "suspended",
            Self::Scheduled => "scheduled",
            Self::Killed => "killed",
        }
    }
}

/// One row of `invocations`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// The `call` entry waiting for this invocation's output, if a handler called it.
    #[serde(default)]
    pub caller: Option<(InvocationId, u32)>,
    /// Objects whose exclusive locks are held up this invocation's call chain (cycle detection).
    #[serde(default)]
    pub call_chain: Vec<ObjectId>,
    /// Journal indices a suspended invocation waits on.
    #[serde(default)]
    pub waiting_on: Vec<u32>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// When a scheduled invocation becomes pending.
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    /// Headers of the request that created it (START `headers`).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// One row of `outbox`: a message an invocation produced, durable until delivered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum OutboxMessage {
    /// Create an invocation (a call, a send, a delayed send). `id` is the dedup key.
    Invoke(InvokeMessage),
    /// Complete entry `index` of invocation `target` (a call's result, an awakeable).
    Complete {
        target: InvocationId,
        index: u32,
        result: CompletionResult,
    },
    /// Operate on a workflow's durable promise and answer entry `reply_to`.
    Promise(PromiseMessage),
    /// Complete entry `reply_to` with the output of `target` once it has finished. A durable
    /// waiter: its row lives in `target`'s partition until the output is on its way.
    Attach {
        target: InvocationId,
        reply_to: (InvocationId, u32),
    },
    /// Cancel `target` (a handle's `cancel`); nothing to answer.
    Cancel { target: InvocationId },
}

impl OutboxMessage {
    /// The partition whose owner applies this message.
    pub fn target_partition(&self) -> u16 {
        match self {
            OutboxMessage::Invoke(m) => m.id.partition(),
            OutboxMessage::Complete { target, .. } => target.partition(),
            OutboxMessage::Promise(m) => crate::ids::partition_of(m.object.partition_key()),
            OutboxMessage::Attach { target, .. } | OutboxMessage::Cancel { target } => target.partition(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InvokeMessage {
    pub id: InvocationId,
    pub service: String,
    pub handler: String,
    pub key: String,
    pub kind: HandlerKind,
    pub deployment_id: String,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    pub caller: Option<(InvocationId, u32)>,
    pub call_chain: Vec<ObjectId>,
    pub not_before_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

impl InvokeMessage {
    /// The invocation this message creates at `now_ms`: its id, record and journal (the input).
    pub fn into_invocation_at(self, now_ms: u64) -> (InvocationId, InvocationRecord, Vec<Entry>) {
        let scheduled = self.not_before_ms.is_some_and(|t| t > now_ms);
        let record = InvocationRecord {
            service: self.service,
            handler: self.handler,
            key: self.key,
            kind: self.kind,
            deployment_id: self.deployment_id,
            status: if scheduled {
                InvocationStatus::Scheduled
            } else {
                InvocationStatus::Pending
            },
            attempts: 0,
            last_error: None,
            next_retry_at_ms: None,
            created_at_ms: now_ms,
            modified_at_ms: now_ms,
            idempotency_key: self.idempotency_key,
            inbox_seq: None,
            output: None,
            expires_at_ms: None,
            caller: self.caller,
            call_chain: self.call_chain,
            waiting_on: Vec::new(),
            cancel_requested: false,
            not_before_ms: self.not_before_ms.filter(|_| scheduled),
            headers: self.headers,
        };
        (self.id, record, vec![Entry::Input { value: self.input }])
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PromiseMessage {
    pub object: ObjectId,
    pub name: String,
    pub op: PromiseOp,
    pub reply_to: (InvocationId, u32),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum PromiseOp {
    Get,
    Peek,
    Complete(CompletionResult),
}

/// One row of `promises`: a workflow's durable promise.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PromiseRecord {
    pub result: Option<CompletionResult>,
    /// `get_promise` entries waiting for the result.
    pub waiters: Vec<(InvocationId, u32)>,
    /// The `complete_promise` entry that completed it: the same message sent again is a
    /// duplicate, answered as the first was (not "already completed").
    #[serde(default)]
    pub completed_by: Option<(InvocationId, u32)>,
}

/// One row of `timers`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum TimerRecord {
    /// Complete the `sleep` entry `index` of `invocation`.
    Wake { invocation: InvocationId, index: u32 },
    /// Turn the scheduled `invocation` into a pending one.
    Activate { invocation: InvocationId },
}

/// One row of `idempotency`: the invocation an idempotency key already started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub invocation_id: crate::ids::InvocationId,
}

/// One row of `deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub uri: String,
    pub services: Vec<ServiceRecord>,
    pub registered_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    Workflow,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandlerRecord {
    pub name: String,
    /// `exclusive`, `shared` or `workflow` (always `shared` for a stateless service).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "retryPolicy")]
    pub retry_policy: Option<RetryPolicy>,
}

/// A handler's own retry policy; unset fields take the node's defaults.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}
