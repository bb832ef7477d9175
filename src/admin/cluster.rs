//! The admin cluster API: nodes, ring, placement, "who owns this key", active objects and
//! invocations across nodes, object state, and membership changes. Shapes: docs/cluster.md.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64_free::encode_base64;
use serde::Deserialize;
use serde_json::{json, Value};

use super::at_owner;
use crate::http_error::ApiError;
use crate::ids::{partition_of, ObjectId, PARTITIONS_COUNT};
use crate::node::Node;
use crate::placement::client::{self, MembershipChange};
use crate::placement::{MemberState, RebalanceError, VIRTUAL_NODES};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster", web::get().to(overview))
        .route("/cluster/partitions", web::get().to(partitions))
        .route("/cluster/ring", web::get().to(ring))
        .route("/cluster/owner", web::get().to(owner))
        .route("/cluster/objects", web::get().to(objects))
        .route("/cluster/invocations", web::get().to(invocations))
        .route("/cluster/nodes", web::post().to(add_node))
        .route("/cluster/nodes/{id}", web::delete().to(remove_node))
        .route("/cluster/rebalance/abort", web::post().to(abort_rebalance))
        .route("/objects/{service}/{key}/state", web::get().to(object_state));
}

fn status_of(node: &Node, id: &str, state: MemberState) -> &'static str {
    // A node not pinged yet (just added) is not dead: it shows its membership state.
    let alive = id == node.cluster.node_id || !node.cluster.peer_status(id).1;
    match (alive, state) {
        (false, _) => "dead",
        (true, MemberState::Joining) => "joining",
        (true, MemberState::Leaving) => "leaving",
        (true, MemberState::Active) => "alive",
    }
}

async fn overview(node: web::Data<Node>) -> HttpResponse {
    let membership = node.cluster.membership();
    let nodes: Vec<Value> = membership
        .members
        .iter()
        .map(|m| {
            let status = status_of(&node, &m.id, m.state);
            let (ingress, admin, objects, inflight) = if m.id == node.cluster.node_id {
                (
                    Some(node.config.ingress_addr.to_string()),
                    Some(node.config.admin_addr.to_string()),
                    Some(node.objects.active_count()),
                    Some(node.inflight()),
                )
            } else {
                let (last, _) = node.cluster.peer_status(&m.id);
                let live = last.as_ref().filter(|_| status != "dead");
                (
                    last.as_ref().map(|r| r.ingress_addr.clone()),
                    last.as_ref().map(|r| r.admin_addr.clone()),
                    live.map(|r| r.active_objects),
                    live.map(|r| r.inflight),
                )
            };
            json!({
                "id": m.id,
                "peerAddr": m.peer_addr,
                "ingressAddr": ingress,
                "adminAddr": admin,
                "status": status,
                "partitions": membership.partitions_of(&m.id),
                "activeObjects": objects,
                "inflight": inflight,
            })
        })
        .collect();
    let left = membership.misplaced().len() as u32;
    let rebalance = (membership.rebalance_total > 0).then(|| {
        json!({
            "running": left > 0,
            "moved": membership.rebalance_total.saturating_sub(left),
            "total": membership.rebalance_total,
        })
    });
    // The member whose replica leads the metadata group, as this node knows it.
    let leader_addr = node.metadata.leader_addr();
    let metadata_leader = membership
        .members
        .iter()
        .find(|m| Some(&m.peer_addr) == leader_addr.as_ref())
        .map(|m| m.id.clone());
    HttpResponse::Ok().json(json!({
        "nodeId": node.cluster.node_id,
        "metadataLeader": metadata_leader,
        "member": node.cluster.is_member(),
        "epoch": membership.epoch,
        "virtualNodes": VIRTUAL_NODES,
        "partitions": PARTITIONS_COUNT,
        "nodes": nodes,
        "rebalance": rebalance,
    }))
}

async fn partitions(node: web::Data<Node>) -> HttpResponse {
    let membership = node.cluster.membership();
    HttpResponse::Ok().json(json!({
        "epoch": membership.epoch,
        "owners": membership.owners,
        "targets": membership.targets(),
        "moving": membership.misplaced(),
    }))
}

async fn ring(node: web::Data<Node>) -> HttpResponse {
    let membership = node.cluster.membership();
    let vnodes: Vec<Value> = membership
        .virtual_nodes()
        .into_iter()
        .map(|(id, pos)| json!({ "node": id, "position": format!("{pos:#018x}"), "angle": pos as f64 / u64::MAX as f64 }))
        .collect();
    HttpResponse::Ok().json(json!({ "epoch": membership.epoch, "virtualNodes": vnodes }))
}

#[derive(Deserialize)]
struct KeyQuery {
    service: String,
    #[serde(default)]
    key: String,
}

async fn owner(query: web::Query<KeyQuery>, node: web::Data<Node>) -> HttpResponse {
    let object = ObjectId::new(&query.service, &query.key);
    let partition = partition_of(object.partition_key());
    let membership = node.cluster.membership();
    let owner = membership.owner(partition).to_owned();
    let ingress = if owner == node.cluster.node_id {
        Some(node.config.ingress_addr.to_string())
    } else {
        node.cluster.peer(&owner).and_then(|p| p.ingress_addr)
    };
    HttpResponse::Ok().json(json!({
        "service": object.service,
        "key": object.key,
        "partition": partition,
        "node": owner,
        "epoch": membership.epoch,
        "ingressAddr": ingress,
    }))
}

#[derive(Deserialize)]
struct ObjectsQuery {
    service: Option<String>,
    key: Option<String>,
    limit: Option<usize>,
}

/// Active objects on every reachable member, filtered.
async fn objects(query: web::Query<ObjectsQuery>, node: web::Data<Node>) -> HttpResponse {
    let membership = node.cluster.membership();
    let limit = query.limit.unwrap_or(1000).clamp(1, 100_000);
    let fetches = membership.members.iter().map(|m| {
        let node = node.clone();
        async move {
            let list = if m.id == node.cluster.node_id {
                Ok(node.objects.active())
            } else {
                node.cluster
                    .call_while_alive(&m.id, client::objects(&m.peer_addr))
                    .await
            };
            (m.id.clone(), list)
        }
    });
    let mut out = Vec::new();
    let mut unreachable = Vec::new();
    let mut truncated = false;
    for (id, list) in futures_util::future::join_all(fetches).await {
        match list {
            Ok(objects) => {
                for o in objects {
                    let keep = query.service.as_deref().is_none_or(|s| s.is_empty() || s == o.service)
                        && query.key.as_deref().is_none_or(|k| o.key.contains(k));
                    if !keep {
                        continue;
                    }
                    if out.len() >= limit {
                        truncated = true;
                        break;
                    }
                    let partition = partition_of(o.partition_key());
                    out.push(json!({ "service": o.service, "key": o.key, "partition": partition, "node": id }));
                }
            }
            Err(_) => unreachable.push(id),
        }
    }
    HttpResponse::Ok().json(json!({ "objects": out, "truncated": truncated, "unreachable": unreachable }))
}

#[derive(Deserialize)]
struct LatestQuery {
    limit: Option<usize>,
}

/// `GET {path}` on the admin API of every member (this one included), each answer bounded by
/// the member's liveness: (member id, its JSON answer, `None` when unreachable or not JSON).
pub(super) async fn fan_out(node: &Arc<Node>, path: &str) -> Vec<(String, Option<Value>)> {
    let membership = node.cluster.membership();
    let fetches = membership.members.iter().map(|m| {
        let admin = if m.id == node.cluster.node_id {
            Some(node.config.admin_addr.to_string())
        } else {
            node.cluster.peer(&m.id).filter(|p| p.alive).and_then(|p| p.admin_addr)
        };
        let node = node.clone();
        async move {
            let Some(admin) = admin else {
                return (m.id.clone(), None);
            };
            let url = format!("http://{admin}{path}");
            let fetch = async {
                let answer = client::http()
                    .get(url)
                    .timeout(std::time::Duration::from_secs(5))
                    .send()
                    .await;
                answer.ok()?.bytes().await.ok()
            };
            let body = node.cluster.while_alive(&m.id, fetch).await.flatten();
            (
                m.id.clone(),
                body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            )
        }
    });
    futures_util::future::join_all(fetches).await
}

/// The newest `limit` invocations (filtered like `GET /invocations`) across reachable members.
async fn invocations(req: HttpRequest, latest: web::Query<LatestQuery>, node: web::Data<Node>) -> HttpResponse {
    let limit = latest.limit.unwrap_or(50).clamp(1, 1000);
    let limit_param = format!("limit={limit}");
    let query: String = req
        .query_string()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("limit=") && !p.starts_with("newest="))
        .chain([limit_param.as_str(), "newest=true"])
        .collect::<Vec<_>>()
        .join("&");
    let pages = fan_out(&node.into_inner(), &format!("/invocations?{query}")).await;
    let mut items: Vec<Value> = Vec::new();
    for (id, page) in pages {
        for mut item in page
            .and_then(|p| p["invocations"].as_array().cloned())
            .into_iter()
            .flatten()
        {
            item["node"] = json!(id);
            items.push(item);
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i["createdAtMs"].as_u64().unwrap_or(0)));
    items.truncate(limit);
    HttpResponse::Ok().json(json!({ "invocations": items }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddNode {
    id: String,
    peer_addr: String,
}

fn rebalance_error(e: RebalanceError) -> ApiError {
    let status = match &e {
        RebalanceError::AddressMismatch { .. } | RebalanceError::LastNode(_) => StatusCode::CONFLICT,
        RebalanceError::UnknownNode(_) => StatusCode::NOT_FOUND,
        RebalanceError::NotMember | RebalanceError::NotJoinable { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

async fn change(node: web::Data<Node>, change: MembershipChange) -> Result<HttpResponse, ApiError> {
    let (epoch, moving) = node
        .into_inner()
        .change_membership(change)
        .await
        .map_err(rebalance_error)?;
    Ok(HttpResponse::Accepted().json(json!({ "epoch": epoch, "moving": moving })))
}

async fn add_node(body: web::Json<AddNode>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let AddNode { id, peer_addr } = body.into_inner();
    crate::config::parse_members(&format!("{id}={peer_addr}")).map_err(|e| ApiError::bad_request(e.to_string()))?;
    change(node, MembershipChange::Add { id, peer_addr }).await
}

async fn abort_rebalance(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    change(node, MembershipChange::Abort).await
}

async fn remove_node(path: web::Path<String>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    change(node, MembershipChange::Remove { id: path.into_inner() }).await
}

/// An object's state, from its owner: values as JSON where they parse, else base64.
async fn object_state(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let (service, key) = path.into_inner();
    let object = ObjectId::new(service, key);
    let node: Arc<Node> = node.into_inner();
    if let Some(answer) = at_owner(&node, &req, partition_of(object.partition_key())).await {
        return Ok(answer);
    }
    let store = node.store.clone();
    let lookup = object.clone();
    let state = web::block(move || store.object_state(&lookup))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let state: serde_json::Map<String, Value> = state
        .into_iter()
        .map(|(name, bytes)| {
            let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "base64": encode_base64(&bytes) }));
            (name, value)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "service": object.service,
        "key": object.key,
        "node": node.cluster.node_id,
        "state": state,
    })))
}

/// Base64 of a state value that is not JSON: 12 lines are not worth a dependency.
mod base64_free {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode_base64(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
