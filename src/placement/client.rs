//! The node-to-node protocol: MessagePack over HTTP on `--peer-addr`. Its messages, and the
//! client every node-to-node call (forwarded requests included) goes through. One connection
//! pool per thread: actix runs one runtime per thread.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Membership, PingReply};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::Output;
use crate::storage::{encode, DeploymentRecord, OutboxMessage};

pub(crate) const MSGPACK: &str = "application/msgpack";

/// A membership change, as sent to any node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    Add {
        id: String,
        peer_addr: String,
    },
    Remove {
        id: String,
    },
    /// Undo the changes of a running rebalance: joiners that own nothing yet are dropped, the
    /// others leave again (their partitions move back); leavers stay.
    Abort,
}

/// What `GET /cluster/v1/output/{id}` answers.
#[derive(Serialize, Deserialize)]
pub enum RemoteOutput {
    Output(Output),
    NotFound,
}

/// Rows of some partitions, as moved between nodes.
#[derive(Serialize, Deserialize)]
pub struct ImportRequest {
    pub epoch: u64,
    pub partitions: Vec<u16>,
    /// (index into `Table::PARTITIONED`, key, value)
    pub rows: Vec<(u8, serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

#[derive(Serialize, Deserialize)]
pub struct HandoffRequest {
    pub base_epoch: u64,
    pub next: Membership,
}

thread_local! {
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(256)
        // Under the servers' keep-alive (actix: 5 s), so a connection being closed is
        // never reused for a request.
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// Found dead (no ping answer) while this call waited for it.
    #[error("stopped answering")]
    Unresponsive,
    #[error("{0}")]
    Other(String),
}

impl PeerError {
    /// The peer does not serve the partition (stale membership on one side).
    pub fn misdirected(&self) -> bool {
        matches!(self, PeerError::Refused { status: 421, .. })
    }
}

/// The client of all node-to-node traffic, forwarded requests included.
pub(crate) fn http() -> reqwest::Client {
    CLIENT.with(|c| c.clone())
}

/// A MessagePack `POST {path}` to the peer at `addr`: the answer's body, or why there is none.
pub(crate) async fn post_msgpack(
    addr: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<bytes::Bytes, PeerError> {
    send(post(addr, path, body), Some(timeout)).await
}

async fn send(request: reqwest::RequestBuilder, timeout: Option<Duration>) -> Result<bytes::Bytes, PeerError> {
    let request = match timeout {
        Some(t) => request.timeout(t),
        None => request,
    };
    let response = request.send().await.map_err(|e| {
        if e.is_connect() {
            PeerError::Unreachable(crate::invoker::error_chain(&e))
        } else {
            PeerError::Other(crate::invoker::error_chain(&e))
        }
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| PeerError::Other(crate::invoker::error_chain(&e)))?;
    if !status.is_success() {
        return Err(PeerError::Refused {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, PeerError> {
    rmp_serde::from_slice(body).map_err(|e| PeerError::Other(format!("malformed answer: {e}")))
}

fn post(addr: &str, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    http()
        .post(format!("http://{addr}{path}"))
        .header("content-type", MSGPACK)
        .body(body)
}

pub async fn ping(addr: &str) -> Result<PingReply, PeerError> {
    let body = send(
        http().get(format!("http://{addr}/cluster/v1/ping")),
        Some(super::liveness::PING_TIMEOUT),
    )
    .await?;
    parse(&body)
}

pub async fn membership(addr: &str) -> Result<Membership, PeerError> {
    let body = send(
        http().get(format!("http://{addr}/cluster/v1/membership")),
        Some(Duration::from_secs(5)),
    )
    .await?;
    parse(&body)
}

pub async fn push_membership(addr: &str, membership: &Membership) -> Result<(), PeerError> {
    send(
        post(addr, "/cluster/v1/membership", encode(membership)),
        Some(Duration::from_secs(10)),
    )
    .await
    .map(|_| ())
}

pub async fn change(addr: &str, change: &MembershipChange) -> Result<(), PeerError> {
    send(
        post(addr, "/cluster/v1/change", encode(change)),
        Some(Duration::from_secs(30)),
    )
    .await
    .map(|_| ())
}

pub async fn handoff(addr: &str, base_epoch: u64, next: &Membership) -> Result<(), PeerError> {
    let request = HandoffRequest {
        base_epoch,
        next: next.clone(),
    };
    send(post(addr, "/cluster/v1/handoff", encode(&request)), None)
        .await
        .map(|_| ())
}

pub async fn import(addr: &str, request: &ImportRequest) -> Result<(), PeerError> {
    send(
        post(addr, "/cluster/v1/import", encode(request)),
        Some(Duration::from_secs(120)),
    )
    .await
    .map(|_| ())
}

/// A receiver that has not applied a message by then is asked again (the sender retries with
/// back-off). Sending it twice, even at once, is harmless: the receiver's owner takes the
/// copies one after the other and drops the second as a duplicate.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn deliver(addr: &str, message: &OutboxMessage) -> Result<(), PeerError> {
    send(
        post(addr, "/cluster/v1/deliver", encode(message)),
        Some(DELIVER_TIMEOUT),
    )
    .await
    .map(|_| ())
}

/// Waits for the output of an invocation the peer owns.
pub async fn output(addr: &str, id: InvocationId) -> Result<RemoteOutput, PeerError> {
    let body = send(http().get(format!("http://{addr}/cluster/v1/output/{id}")), None).await?;
    parse(&body)
}

pub async fn objects(addr: &str) -> Result<Vec<ObjectId>, PeerError> {
    let body = send(
        http().get(format!("http://{addr}/cluster/v1/objects")),
        Some(Duration::from_secs(5)),
    )
    .await?;
    parse(&body)
}

pub async fn push_deployment(addr: &str, record: &DeploymentRecord) -> Result<(), PeerError> {
    send(
        post(addr, "/cluster/v1/deployments", encode(record)),
        Some(Duration::from_secs(10)),
    )
    .await
    .map(|_| ())
}
