//! The admin deployments API: register (versioned, immutable: `schema::versions`), list with
//! drain status, describe, remove. Every change is committed by the metadata group in a cluster.
//!
//! Drain status: a deployment is `active` while it takes the new invocations of at least one of
//! its services, else `draining` while invocations are still pinned to it, else `drained` (safe
//! to remove and to stop its endpoint).

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::cluster::fan_out;
use crate::cluster::DeploymentError;
use crate::http_error::ApiError;
use crate::ids::stable_hash;
use crate::node::Node;
use crate::schema::versions::Registration;
use crate::schema::Schema;
use crate::storage::{now_ms, DeploymentRecord};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/deployments", web::post().to(register))
        .route("/deployments", web::get().to(list))
        .route("/deployments/{id}", web::get().to(describe))
        .route("/deployments/{id}", web::delete().to(remove));
}

#[derive(Deserialize)]
struct RegisterDeployment {
    uri: String,
    /// Replace a deployment whose URI now answers a different discovery (breaks the
    /// invocations pinned to it).
    #[serde(default)]
    force: bool,
}

fn deployment_error(e: DeploymentError) -> ApiError {
    match e {
        DeploymentError::Refused(m) => ApiError::new(StatusCode::CONFLICT, m),
        DeploymentError::NotFound(m) => ApiError::not_found(m),
        DeploymentError::Unavailable(m) => ApiError::unavailable(format!("{m}; retry")),
        DeploymentError::Storage(s) => s.into(),
    }
}

/// `POST /deployments {uri, force}`: 201 when new; 200 when the same again (a rollback when
/// another deployment took its services since) or forced; 409 when its discovery changed.
async fn register(body: web::Json<RegisterDeployment>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let uri = body.uri.trim_end_matches('/').to_owned();
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(ApiError::bad_request(format!(
            "uri {uri:?} must start with http:// or https://"
        )));
    }
    let services = crate::schema::discover(&uri).await.map_err(|e| match e {
        crate::schema::DiscoveryError::Unreachable { .. } => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
        crate::schema::DiscoveryError::Invalid { .. } => ApiError::bad_request(e.to_string()),
    })?;
    let id = format!("dp_{:016x}", stable_hash(&[uri.as_bytes()]));
    let record = DeploymentRecord {
        id: id.clone(),
        uri,
        services,
        registered_at_ms: now_ms(),
    };
    let node = node.into_inner();
    let registration = node
        .register_deployment(record.clone(), body.force)
        .await
        .map_err(deployment_error)?;
    tracing::info!(deployment = %id, uri = %record.uri, ?registration, "admin.deployment_registered");
    let status = match registration {
        Registration::Create => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let schema = node.schema.snapshot();
    let held = schema.deployments.iter().find(|d| d.id == id).unwrap_or(&record);
    let mut answer = deployment_json(&schema, held, None);
    answer["registration"] = json!(format!("{registration:?}").to_lowercase());
    Ok(HttpResponse::build(status).json(answer))
}

/// A deployment as JSON; with `pinned` (the count of unfinished invocations pinned to it, and
/// the members that could not be asked), its drain status too.
fn deployment_json(schema: &Schema, d: &DeploymentRecord, pinned: Option<&Pinned>) -> Value {
    let newest_for: Vec<&str> = d
        .services
        .iter()
        .filter(|s| schema.services.get(&s.name).is_some_and(|e| e.deployment_id == d.id))
        .map(|s| s.name.as_str())
        .collect();
    let mut v = json!({
        "id": d.id,
        "uri": d.uri,
        "services": d.services.iter().map(super::service_json).collect::<Vec<_>>(),
        "registeredAtMs": d.registered_at_ms,
        "newestFor": newest_for,
    });
    if let Some(p) = pinned {
        let count = p.counts.get(&d.id).copied().unwrap_or(0);
        let status = match (newest_for.is_empty(), count) {
            (false, _) => "active",
            (true, 0) if p.unreachable.is_empty() => "drained",
            (true, _) => "draining",
        };
        v["pinnedInvocations"] = json!(count);
        v["status"] = json!(status);
        v["pinnedUnknownOn"] = json!(p.unreachable);
    }
    v
}

/// Unfinished invocations per deployment, and the members whose count is missing.
#[derive(Default)]
struct Pinned {
    counts: HashMap<String, u64>,
    unreachable: Vec<String>,
}

/// This node's count: unfinished invocations of the partitions it owns, per deployment.
async fn pinned_here(node: &Arc<Node>) -> Result<HashMap<String, u64>, ApiError> {
    let store = node.store.clone();
    let owner = node.clone();
    let unfinished = web::block(move || store.unfinished_invocations(&|p| owner.cluster.owns(p)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut counts = HashMap::new();
    for (_, record) in unfinished {
        *counts.entry(record.deployment_id).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Every member's count (`fan_out`), summed; a lone node asks only itself.
async fn pinned_everywhere(node: &Arc<Node>) -> Result<Pinned, ApiError> {
    if !node.cluster.is_clustered() {
        return Ok(Pinned {
            counts: pinned_here(node).await?,
            unreachable: Vec::new(),
        });
    }
    let mut pinned = Pinned::default();
    for (member, answer) in fan_out(node, "/deployments?local=true").await {
        let Some(list) = answer.as_ref().and_then(|a| a["deployments"].as_array()) else {
            pinned.unreachable.push(member);
            continue;
        };
        for d in list {
            if let (Some(id), Some(n)) = (d["id"].as_str(), d["pinnedInvocations"].as_u64()) {
                *pinned.counts.entry(id.to_owned()).or_insert(0) += n;
            }
        }
    }
    Ok(pinned)
}

#[derive(Deserialize)]
struct ListQuery {
    /// Count this node's pinned invocations only (what a cluster-wide listing asks each member).
    #[serde(default)]
    local: bool,
}

/// `GET /deployments`: every deployment with its drain status, newest first.
async fn list(query: web::Query<ListQuery>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let node = node.into_inner();
    let pinned = if query.local {
        Pinned {
            counts: pinned_here(&node).await?,
            unreachable: Vec::new(),
        }
    } else {
        pinned_everywhere(&node).await?
    };
    let schema = node.schema.snapshot();
    let mut deployments: Vec<&DeploymentRecord> = schema.deployments.iter().collect();
    deployments.sort_by_key(|d| std::cmp::Reverse(d.registered_at_ms));
    let items: Vec<Value> = deployments
        .into_iter()
        .map(|d| deployment_json(&schema, d, Some(&pinned)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "deployments": items })))
}

async fn describe(path: web::Path<String>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let node = node.into_inner();
    let schema = node.schema.snapshot();
    let Some(d) = schema.deployments.iter().find(|d| d.id == *path) else {
        return Err(ApiError::not_found(format!("deployment {path} not found")));
    };
    let pinned = pinned_everywhere(&node).await?;
    Ok(HttpResponse::Ok().json(deployment_json(&schema, d, Some(&pinned))))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /deployments/{id}[?force=true]`: refused (409) while invocations are pinned to it,
/// and (503) while a member's count is unknown, unless forced. Invocations still pinned to a
/// removed deployment fail at their next attempt.
async fn remove(
    path: web::Path<String>,
    query: web::Query<RemoveQuery>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let node = node.into_inner();
    let id = path.into_inner();
    let pinned = pinned_everywhere(&node).await?;
    if !pinned.unreachable.is_empty() && !query.force {
        return Err(ApiError::unavailable(format!(
            "cannot count the invocations pinned to {id} on {}; retry, or pass ?force=true",
            pinned.unreachable.join(", ")
        )));
    }
    let count = pinned.counts.get(&id).copied().unwrap_or(0);
    node.remove_deployment(&id, count, query.force)
        .await
        .map_err(deployment_error)?;
    tracing::info!(deployment = %id, pinned = count, force = query.force, "admin.deployment_removed");
    Ok(HttpResponse::Ok().json(json!({ "id": id, "removed": true, "pinnedInvocations": count })))
}
