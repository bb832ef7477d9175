//! The node-to-node endpoint: MessagePack over HTTP on `--peer-addr`, and its client.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::InvocationId;
use crate::node::{Node, Waited};
use crate::placement::client::{HandoffRequest, ImportRequest, MembershipChange, RemoteOutput};
use crate::placement::{Membership, Placement};
use crate::storage::{encode, DeploymentRecord, OutboxMessage, StorageError};

use crate::placement::client::MSGPACK;
/// Largest node-to-node request (an import of a few partitions).
const MAX_PEER_BODY_BYTES: usize = 512 * 1024 * 1024;

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
    match node.install_deployment(record).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => storage_error(e),
    }
}

/// Starts the node-to-node server.
pub fn serve(node: &Arc<Node>) -> anyhow::Result<actix_web::dev::Server> {
    let data = web::Data::from(node.clone());
    let raft = web::Data::new(node.metadata.raft.clone());
    let addr = node.config.peer_addr;
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(raft.clone())
            .configure(config)
            .configure(super::raft::config)
    })
    .workers(2)
    .shutdown_timeout(5)
    .bind(addr)
    .map_err(|e| anyhow::anyhow!("cannot bind the node-to-node endpoint on {addr}: {e}"))?
    .run())
}
