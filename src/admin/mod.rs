//! Admin API: services, invocations (inspect, cancel, kill), health, metrics; deployments in
//! `deployments`, the cluster in `cluster`, the web UI in `ui`.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

mod cluster;
mod deployments;
mod ui;

use crate::cluster::forward::{self, Listener};
use crate::http_error::ApiError;
use crate::ids::InvocationId;
use crate::journal::{Entry, Output};
use crate::node::ControlError;
use crate::node::Node;
use crate::storage::{InvocationRecord, InvocationStatus, ServiceKind, ServiceRecord};

pub fn config(cfg: &mut web::ServiceConfig) {
    crate::http_error::extractor_errors(cfg, 64 * 1024);
    cfg.route("/health", web::get().to(health))
        .route("/services", web::get().to(list_services))
        .route("/invocations", web::get().to(list_invocations))
        .route("/invocations/{id}", web::get().to(get_invocation))
        .route(
            "/invocations/{id}/cancel",
            web::patch().to(|r, p, n| control_invocation(r, p, n, Control::Cancel)),
        )
        .route(
            "/invocations/{id}/kill",
            web::patch().to(|r, p, n| control_invocation(r, p, n, Control::Kill)),
        )
        .route("/metrics", web::get().to(metrics))
        .configure(deployments::config)
        .configure(cluster::config)
        .configure(ui::config)
        .default_service(web::to(|req: HttpRequest| async move {
            actix_web::ResponseError::error_response(&ApiError::not_found(format!(
                "no route for {} {}",
                req.method(),
                req.path()
            )))
        }));
}

async fn health(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "inflightInvocations": node.inflight() }))
}

/// Prometheus text format; two counters are not worth a metrics dependency yet.
async fn metrics(node: web::Data<Node>) -> HttpResponse {
    let stats = &node.store.log.stats;
    let body = format!(
        "# TYPE kiln_storage_commits_total counter\nkiln_storage_commits_total {}\n\
         # TYPE kiln_storage_fsyncs_total counter\nkiln_storage_fsyncs_total {}\n\
         # TYPE kiln_storage_written_bytes_total counter\nkiln_storage_written_bytes_total {}\n\
         # TYPE kiln_storage_invocation_rows_read_total counter\nkiln_storage_invocation_rows_read_total {}\n\
         # TYPE kiln_storage_index_rows_read_total counter\nkiln_storage_index_rows_read_total {}\n\
         # TYPE kiln_invocations_inflight gauge\nkiln_invocations_inflight {}\n\
         # TYPE kiln_objects_active gauge\nkiln_objects_active {}\n",
        stats.commits.load(Ordering::Relaxed),
        stats.fsyncs.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        node.store.stats.invocation_rows_read.load(Ordering::Relaxed),
        node.store.stats.index_rows_read.load(Ordering::Relaxed),
        node.inflight(),
        node.objects.active().len(),
    );
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

async fn list_services(node: web::Data<Node>) -> HttpResponse {
    let schema = node.schema.snapshot();
    let mut services: Vec<Value> = schema
        .deployments
        .iter()
        .flat_map(|d| d.services.iter().map(move |s| (d, s)))
        .filter(|(d, s)| schema.services.get(&s.name).is_some_and(|e| e.deployment_id == d.id))
        .map(|(d, s)| json!({ "name": s.name, "kind": s.kind, "deploymentId": d.id, "handlers": handlers_json(s) }))
        .collect();
    services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    HttpResponse::Ok().json(json!({ "services": services }))
}

/// A service's handlers as shown: those of a stateless service are `stateless` (stored as
/// `shared`, the discovery's word, so that stored deployments compare unchanged).
pub(crate) fn handlers_json(service: &ServiceRecord) -> Value {
    let handlers: Vec<Value> = service
        .handlers
        .iter()
        .map(|h| {
            let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
            if service.kind == ServiceKind::Service {
                v["kind"] = json!("stateless");
            }
            v
        })
        .collect();
    Value::Array(handlers)
}

/// A service record as shown.
pub(crate) fn service_json(service: &ServiceRecord) -> Value {
    json!({ "name": service.name, "kind": service.kind, "handlers": handlers_json(service) })
}

/// Payloads are shown as text when they are UTF-8 (JSON from the Kotlin SDK), else as bytes.
fn payload(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "bytes": bytes }),
    }
}

/// An entry as JSON: its own fields, with byte payloads (`value`) shown as text when UTF-8.
fn entry_json(index: usize, entry: &Entry) -> Value {
    let mut v = serde_json::to_value(entry).unwrap_or(Value::Null);
    readable_payloads(&mut v);
    if let Value::Object(map) = &mut v {
        map.insert("index".into(), json!(index));
        map.entry("name").or_insert(Value::Null);
    }
    v
}

fn readable_payloads(v: &mut Value) {
    if let Value::Object(map) = v {
        for (key, field) in map.iter_mut() {
            match field {
                Value::Array(items) if key == "value" => {
                    let bytes: Option<Vec<u8>> = items
                        .iter()
                        .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
                        .collect();
                    if let Some(bytes) = bytes {
                        *field = payload(&bytes);
                    }
                }
                Value::Array(items) if key == "invocation_id" => {
                    let bytes: Option<Vec<u8>> = items
                        .iter()
                        .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
                        .collect();
                    if let Some(id) = bytes.and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                        *field = json!(InvocationId(id).to_string());
                    }
                }
                other => readable_payloads(other),
            }
        }
    }
}

fn invocation_json(node: &Node, id: InvocationId, record: &InvocationRecord, journal: &[Entry]) -> Value {
    let live = node.live.get(&id).filter(|_| !record.status.is_finished());
    let status = live.as_ref().map(|l| l.status).unwrap_or(record.status);
    let output = record.output.as_ref().map(|o| match o {
        Output::Value(v) => json!({ "value": payload(v) }),
        Output::Failure(f) => json!({ "failure": { "code": f.code, "message": f.message } }),
    });
    json!({
        "id": id.to_string(),
        "service": record.service,
        "key": record.key,
        "handler": record.handler,
        "kind": record.kind,
        "status": status.as_str(),
        "attempts": live.as_ref().map(|l| l.attempts).unwrap_or(record.attempts),
        "lastError": live.as_ref().map(|l| l.last_error.clone()).unwrap_or(record.last_error.clone()),
        "nextRetryAtMs": live.as_ref().map(|l| l.next_retry_at_ms).unwrap_or(record.next_retry_at_ms),
        // When a scheduled invocation (a delayed send) becomes pending.
        "scheduledAtMs": record.not_before_ms.filter(|_| status == InvocationStatus::Scheduled),
        "headers": record.headers,
        "deploymentId": record.deployment_id,
        "idempotencyKey": record.idempotency_key,
        "createdAtMs": record.created_at_ms,
        "modifiedAtMs": record.modified_at_ms,
        "journal": journal.iter().enumerate().map(|(i, e)| entry_json(i, e)).collect::<Vec<_>>(),
        "output": output,
    })
}

/// Answers from the node that owns `partition` (`Some`), or `None` to answer here.
async fn at_owner(node: &std::sync::Arc<Node>, req: &HttpRequest, partition: u16) -> Option<HttpResponse> {
    forward::route(node, req, &[], partition, Listener::Admin).await
}

async fn get_invocation(
    req: HttpRequest,
    path: web::Path<String>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let id: InvocationId = path.parse()?;
    let node = node.into_inner();
    if let Some(answer) = at_owner(&node, &req, id.partition()).await {
        return Ok(answer);
    }
    let store = node.store.clone();
    let found = web::block(move || -> Result<_, crate::storage::StorageError> {
        Ok(match store.invocation(&id)? {
            Some(record) => Some((record, store.journal(&id)?)),
            None => None,
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    match found {
        None => Err(ApiError::not_found(format!("invocation {id} not found"))),
        Some((record, journal)) => Ok(HttpResponse::Ok().json(invocation_json(&node, id, &record, &journal))),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    key: Option<String>,
    handler: Option<String>,
    limit: Option<usize>,
    /// The last id of the previous page.
    after: Option<String>,
    /// `true`: the newest `limit` matches (a full scan) instead of a page in storage order.
    #[serde(default)]
    newest: bool,
}

/// Largest page of `GET /invocations`.
const LIST_LIMIT_MAX: usize = 1000;

/// `GET /invocations?status=&service=&key=&handler=&limit=&after=`: a page of invocations
/// (without journals), in storage order (partition, then id); `nextAfter` continues the listing.
async fn list_invocations(query: web::Query<ListQuery>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(InvocationStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?}: use pending, running, suspended, backing-off, scheduled, completed, failed or killed"
            ))
        })?),
    };
    let after: Option<InvocationId> = match q.after.as_deref() {
        None => None,
        Some(a) => Some(a.parse()?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX);
    let store = node.store.clone();
    let live_node = node.clone();
    let newest = q.newest;
    let page = web::block(move || {
        let matches = |id: &InvocationId, r: &InvocationRecord| {
            live_node.cluster.owns(id.partition())
                && q.service.as_deref().is_none_or(|s| s == r.service)
                && q.key.as_deref().is_none_or(|k| k == r.key)
                && q.handler.as_deref().is_none_or(|h| h == r.handler)
                && status.is_none_or(|s| s == effective_status(&live_node, id, r))
        };
        // Live statuses come from the `unfinished` index (a page of it, or all of it for
        // `newest`), so listing live work does not scan finished history.
        let unfinished_only = status.is_some_and(|s| !s.is_finished());
        let list = |after: Option<&InvocationId>,
                    limit: usize,
                    keep: &mut dyn FnMut(&InvocationId, &InvocationRecord) -> bool| {
            if unfinished_only {
                store.list_unfinished_invocations(after, limit, keep)
            } else {
                store.list_invocations(after, limit, keep)
            }
        };
        if !newest {
            return list(after.as_ref(), limit, &mut |id, r| matches(id, r));
        }
        // Keep the newest `limit` seen so far; trimmed in batches to stay O(n log limit).
        let mut top: Vec<(InvocationId, InvocationRecord)> = Vec::new();
        let trim = |top: &mut Vec<(InvocationId, InvocationRecord)>| {
            top.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_at_ms));
            top.truncate(limit);
        };
        list(None, 1, &mut |id, r| {
            if matches(id, r) {
                top.push((*id, r.clone()));
                if top.len() >= 2 * limit {
                    trim(&mut top);
                }
            }
            false
        })?;
        trim(&mut top);
        Ok(top)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let next_after = (page.len() == limit && !newest)
        .then(|| page.last().map(|(id, _)| id.to_string()))
        .flatten();
    let items: Vec<Value> = page
        .iter()
        .map(|(id, r)| invocation_json(&node, *id, r, &[]))
        .map(|mut v| {
            if let Value::Object(m) = &mut v {
                m.remove("journal");
            }
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "invocations": items, "nextAfter": next_after })))
}

fn effective_status(node: &Node, id: &InvocationId, record: &InvocationRecord) -> InvocationStatus {
    if record.status.is_finished() {
        return record.status;
    }
    node.live.get(id).map(|l| l.status).unwrap_or(record.status)
}

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::NotFound(_) => ApiError::not_found(e.to_string()),
        ControlError::Finished(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        ControlError::Interrupted(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ControlError::Storage(s) => s.into(),
    }
}

/// What `PATCH /invocations/{id}/…` asks for.
#[derive(Clone, Copy)]
enum Control {
    /// The handler sees `TerminalException(409)` at its next await and may compensate; the
    /// calls it waits on are cancelled too.
    Cancel,
    /// Stops at once, without compensation; status `killed`.
    Kill,
}

/// `PATCH /invocations/{id}/cancel` and `…/kill`, at the invocation's owner.
async fn control_invocation(
    req: HttpRequest,
    path: web::Path<String>,
    node: web::Data<Node>,
    control: Control,
) -> Result<HttpResponse, ApiError> {
    let id: InvocationId = path.parse()?;
    let node = node.into_inner();
    if let Some(answer) = at_owner(&node, &req, id.partition()).await {
        return Ok(answer);
    }
    let status = match control {
        Control::Cancel => node.cancel(id).await.map(|()| "cancel requested"),
        Control::Kill => node.kill(id).await.map(|()| "kill requested"),
    }
    .map_err(control_error)?;
    Ok(HttpResponse::Accepted().json(json!({ "id": id.to_string(), "status": status })))
}
