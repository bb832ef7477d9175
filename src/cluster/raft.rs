//! The metadata group's RPCs on the node-to-node endpoint (`metadata::network` is the client):
//! MessagePack in, MessagePack out; 503 while this replica cannot answer (it is starting or
//! stopping), so the caller backs off.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metadata::{MetaCommand, MetaRaft, SnapshotRequest};
use crate::placement::client::MSGPACK;
use crate::storage::encode;

/// Largest Raft message (a snapshot of the metadata, or a batch of entries).
const MAX_RAFT_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Mounts the routes; the app must hold the replica as `web::Data<MetaRaft>`.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/cluster/v1/raft")
            .app_data(web::PayloadConfig::new(MAX_RAFT_BODY_BYTES))
            .route("/append", web::post().to(append))
            .route("/vote", web::post().to(vote))
            .route("/pre_vote", web::post().to(pre_vote))
            .route("/snapshot", web::post().to(snapshot))
            .route("/propose", web::post().to(propose)),
    );
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(body).map_err(|e| format!("malformed raft message: {e}"))
}

fn malformed(message: String) -> HttpResponse {
    HttpResponse::BadRequest().body(message)
}

fn answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> HttpResponse {
    match result {
        Ok(value) => HttpResponse::Ok().content_type(MSGPACK).body(encode(&value)),
        Err(e) => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).body(e.to_string()),
    }
}

async fn append(body: web::Bytes, raft: web::Data<MetaRaft>) -> HttpResponse {
    match decode(&body) {
        Ok(request) => answer(raft.append_entries(request).await),
        Err(message) => malformed(message),
    }
}

async fn vote(body: web::Bytes, raft: web::Data<MetaRaft>) -> HttpResponse {
    match decode(&body) {
        Ok(request) => answer(raft.vote(request).await),
        Err(message) => malformed(message),
    }
}

async fn pre_vote(body: web::Bytes, raft: web::Data<MetaRaft>) -> HttpResponse {
    match decode(&body) {
        Ok(request) => answer(raft.pre_vote(request).await),
        Err(message) => malformed(message),
    }
}

async fn snapshot(body: web::Bytes, raft: web::Data<MetaRaft>) -> HttpResponse {
    match decode::<SnapshotRequest>(&body) {
        Ok(request) => {
            let (vote, snapshot) = request.into_parts();
            answer(raft.install_full_snapshot(vote, snapshot).await)
        }
        Err(message) => malformed(message),
    }
}

/// A proposal from a replica that does not lead; answered once committed and applied here.
async fn propose(body: web::Bytes, raft: web::Data<MetaRaft>) -> HttpResponse {
    match decode::<MetaCommand>(&body) {
        Ok(command) => answer(raft.client_write(command).await.map(|written| written.data)),
        Err(message) => malformed(message),
    }
}
