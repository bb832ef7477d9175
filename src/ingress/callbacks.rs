//! Ingress endpoints for the outside world to reach into running invocations: completing
//! awakeables, attaching to a workflow's result by its key, and to an invocation by the
//! idempotency key it was sent with (Restate's path shapes).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body::read_limited;
use super::wait_for;
use crate::cluster::forward::{self, Listener};
use crate::http_error::ApiError;
use crate::ids::workflow_run_id;
use crate::ids::{parse_awakeable_id, partition_of, stable_hash, ObjectId};
use crate::journal::{CompletionResult, Failure};
use crate::node::Node;
use crate::node::{CompleteError, Completer};
use crate::storage::{keys, ServiceKind, WriteBatch};

/// Longest rejection reason kept.
const REASON_MAX_BYTES: usize = 4096;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/awakeables/{id}/{action}", web::post().to(complete_awakeable))
        .route("/restate/awakeables/{id}/{action}", web::post().to(complete_awakeable))
        .route("/workflows/{service}/{key}/{what}", web::get().to(workflow_result))
        .route(
            "/restate/workflow/{service}/{key}/{what}",
            web::get().to(workflow_result),
        )
        .route(
            "/restate/invocation/{service}/{handler}/{idempotency_key}/{what}",
            web::get().to(|r, p: web::Path<(String, String, String, String)>, n| {
                let (service, handler, idempotency_key, what) = p.into_inner();
                by_idempotency_key(r, n, service, String::new(), handler, idempotency_key, what)
            }),
        )
        .route(
            "/restate/invocation/{service}/{key}/{handler}/{idempotency_key}/{what}",
            web::get().to(|r, p: web::Path<(String, String, String, String, String)>, n| {
                let (service, key, handler, idempotency_key, what) = p.into_inner();
                by_idempotency_key(r, n, service, key, handler, idempotency_key, what)
            }),
        );
}

/// `GET /restate/invocation/{service}[/{key}]/{handler}/{idempotencyKey}/attach|output`: the
/// invocation created with that idempotency key, at its owner.
async fn by_idempotency_key(
    req: HttpRequest,
    node: web::Data<Node>,
    service: String,
    key: String,
    handler: String,
    idempotency_key: String,
    what: String,
) -> Result<HttpResponse, ApiError> {
    let node = node.into_inner();
    let kind = node.schema.snapshot().services.get(&service).map(|s| s.kind);
    let partition_key = match kind {
        None => return Err(ApiError::not_found(format!("service {service:?} not found"))),
        Some(ServiceKind::Service) if !key.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "{service} is a service: use /restate/invocation/{service}/{handler}/{{idempotencyKey}}/{what}"
            )))
        }
        Some(ServiceKind::Service) => {
            stable_hash(&[service.as_bytes(), handler.as_bytes(), idempotency_key.as_bytes()])
        }
        Some(_) if key.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "{service} is keyed: use /restate/invocation/{service}/{{key}}/{handler}/{{idempotencyKey}}/{what}"
            )))
        }
        Some(_) => ObjectId::new(&service, &key).partition_key(),
    };
    if what != "attach" && what != "output" {
        return Err(ApiError::not_found(format!(
            "unknown action {what:?}: use attach or output"
        )));
    }
    if let Some(answer) = forward::route(&node, &req, &[], partition_of(partition_key), Listener::Ingress).await {
        return Ok(answer);
    }
    let row = keys::idempotency(
        partition_key,
        &keys::Target {
            service: &service,
            key: &key,
            handler: &handler,
        },
        &idempotency_key,
    );
    let store = node.store.clone();
    let found = web::block(move || store.idempotency(&row))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let Some(found) = found else {
        return Err(ApiError::not_found(format!(
            "no invocation of {service}/{handler} with idempotency key {idempotency_key:?} (or it expired)"
        )));
    };
    match what.as_str() {
        "attach" => wait_for(&node, found.invocation_id).await,
        _ => super::output_of(&node, found.invocation_id).await,
    }
}

/// `POST …/awakeables/{id}/resolve` (body: the JSON value) or `…/reject` (body: the reason).
async fn complete_awakeable(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, action) = path.into_inner();
    let (target, index) = parse_awakeable_id(&raw_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let body = read_limited(
        &req,
        payload,
        node.config.max_body_bytes,
        node.config.body_read_timeout(),
    )
    .await?;
    let node = node.into_inner();
    if let Some(answer) = forward::route(&node, &req, &body, target.partition(), Listener::Ingress).await {
        return Ok(answer);
    }
    let result = match action.as_str() {
        "resolve" => CompletionResult {
            value: Some(body),
            failure: None,
        },
        "reject" => {
            let mut reason = String::from_utf8_lossy(&body).into_owned();
            reason.truncate(REASON_MAX_BYTES);
            CompletionResult {
                value: None,
                failure: Some(Failure {
                    code: 500,
                    message: reason,
                }),
            }
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown awakeable action {other:?}: use resolve or reject"
            )))
        }
    };
    match node
        .complete(target, index, result, WriteBatch::new(), Completer::Awakeable)
        .await
    {
        Ok(()) => Ok(HttpResponse::Accepted().json(json!({ "status": "completed" }))),
        Err(CompleteError::NotFound) => Err(ApiError::not_found(format!("awakeable {raw_id} not found"))),
        Err(CompleteError::AlreadyCompleted) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("awakeable {raw_id} was already completed; an awakeable completes once"),
        )),
        Err(CompleteError::Storage(e)) => Err(e.into()),
    }
}

/// `GET …/workflows/{service}/{key}/attach|output`.
async fn workflow_result(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let node = node.into_inner();
    let (service, key, what) = path.into_inner();
    let is_workflow = node
        .schema
        .snapshot()
        .services
        .get(&service)
        .is_some_and(|s| s.kind == ServiceKind::Workflow);
    if !is_workflow {
        return Err(ApiError::not_found(format!("workflow {service:?} not found")));
    }
    let id = workflow_run_id(&ObjectId::new(service, key));
    match what.as_str() {
        "attach" => wait_for(&node, id).await,
        "output" => match forward::route(&node, &req, &[], id.partition(), Listener::Ingress).await {
            Some(answer) => Ok(answer),
            None => super::output_of(&node, id).await,
        },
        other => Err(ApiError::not_found(format!(
            "unknown workflow action {other:?}: use attach or output"
        ))),
    }
}
