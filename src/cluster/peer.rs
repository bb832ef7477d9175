//! The node-to-node endpoint: MessagePack over HTTP on `--peer-addr`, and its client.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::handoff::{HandoffRequest, ImportRequest};
use super::{Membership, Placement};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::Output;
use crate::node::{Node, Waited};
use crate::storage::{encode, keys, DeploymentRecord, OutboxMessage, StorageError, Table, WriteBatch};

const MSGPACK: &str = "application/msgpack";
/// Largest node-to-node request (an import of a few partitions).
const MAX_PEER_BODY_BYTES: usize = 512 * 1024 * 1024;

/// A membership change, as sent to any node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { id: String, peer_addr: String },
    Remove { id: String },
}

/// What `GET /cluster/v1/output/{id}` answers.
#[derive(Serialize, Deserialize)]
pub enum RemoteOutput {
    Output(Output),
    NotFound,
}

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_PEER_BODY_BYTES))
        .route("/cluster/v1/ping", web::get().to(ping))
        .route("/cluster/v1/membership", web::get().to(get_membership))
        .route("/cluster/v1/membership", web::post().to(post_membership))
        .route("/cluster/v1/change", web::post().to(change))
        .route("/cluster/v1/handoff", web::post().to(handoff))
        .route("/cluster/v1/import", web::post().to(import))
        .route("/cluster/v1/deliver", web::post().to(deliver))
        .route("/cluster/v1/output/{id}", web::get().to(output))
        .route("/cluster/v1/objects", web::get().to(objects))
        .route("/cluster/v1/deployments", web::post().to(deployment));
}

fn reply<T: Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok().content_type(MSGPACK).body(encode(value))
}

fn refuse(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(message.into())
}

// The error is the answer itself, built once per malformed request: its size does not matter.
#[allow(clippy::result_large_err)]
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, HttpResponse> {
    rmp_serde::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))
}

fn storage_error(e: StorageError) -> HttpResponse {
    match e {
        StorageError::NotOwner(p) => refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!("partition {p} is not served here"),
        ),
        e => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn ping(node: web::Data<Node>) -> HttpResponse {
    reply(&node.ping_reply())
}

async fn get_membership(node: web::Data<Node>) -> HttpResponse {
    reply(&*node.cluster.membership())
}

async fn post_membership(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let membership: Membership = match decode(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match node.into_inner().adopt_membership(membership).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => storage_error(e),
    }
}

async fn change(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let change: MembershipChange = match decode(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match node.into_inner().change_membership(change).await {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn handoff(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let request: HandoffRequest = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match node.into_inner().handoff(request.base_epoch, request.next).await {
        Ok(moved) => reply(&moved),
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn import(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let request: ImportRequest = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match node.import(request).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => storage_error(e),
    }
}

/// An outbox message from another node. 200 once its effect is durable here (a duplicate is
/// recognised and dropped); 421 if this node does not serve the target; 503 to retry later.
async fn deliver(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let message: OutboxMessage = match decode(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let partition = message.target_partition();
    match node.cluster.placement(partition) {
        Placement::Local => {}
        Placement::Moving => return refuse(StatusCode::SERVICE_UNAVAILABLE, "partition is moving"),
        Placement::Remote(p) => {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!("partition {partition} is owned by {}", p.id),
            )
        }
    }
    if node.into_inner().deliver(None, message, true).await {
        HttpResponse::Ok().finish()
    } else {
        refuse(StatusCode::SERVICE_UNAVAILABLE, "not delivered; retry")
    }
}

async fn output(path: web::Path<String>, node: web::Data<Node>) -> HttpResponse {
    let id: InvocationId = match path.parse() {
        Ok(id) => id,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match node.output(id).await {
        Ok(Waited::Output(o)) => reply(&RemoteOutput::Output(o)),
        Ok(Waited::NotFound) => reply(&RemoteOutput::NotFound),
        Ok(Waited::Moved) => refuse(StatusCode::MISDIRECTED_REQUEST, "partition moved"),
        Err(e) => storage_error(e),
    }
}

async fn objects(node: web::Data<Node>) -> HttpResponse {
    reply(&node.objects.active())
}

async fn deployment(body: web::Bytes, node: web::Data<Node>) -> HttpResponse {
    let record: DeploymentRecord = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut batch = WriteBatch::new();
    batch.put(Table::Deployments, keys::deployment(&record.id), encode(&record));
    if let Err(e) = node.store.log.append(batch).await {
        return storage_error(e);
    }
    node.schema.upsert(record);
    HttpResponse::Ok().finish()
}

/// The client side. One connection pool per thread: actix runs one runtime per thread.
pub mod client {
    use super::*;

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

    pub async fn ping(addr: &str) -> Result<super::super::PingReply, PeerError> {
        let body = send(
            http().get(format!("http://{addr}/cluster/v1/ping")),
            Some(Duration::from_secs(1)),
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

    /// No timeout: a delivery that is still being applied must not be sent twice at once.
    pub async fn deliver(addr: &str, message: &OutboxMessage) -> Result<(), PeerError> {
        send(post(addr, "/cluster/v1/deliver", encode(message)), None)
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
}

/// Starts the node-to-node server.
pub fn serve(node: &Arc<Node>) -> anyhow::Result<actix_web::dev::Server> {
    let data = web::Data::from(node.clone());
    let addr = node.config.peer_addr;
    Ok(
        actix_web::HttpServer::new(move || actix_web::App::new().app_data(data.clone()).configure(config))
            .workers(2)
            .shutdown_timeout(5)
            .bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind the node-to-node endpoint on {addr}: {e}"))?
            .run(),
    )
}
