//! Ingress endpoints for the outside world to reach into running invocations: completing
//! awakeables, and attaching to a workflow's result by its key.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body::read_limited;
use super::wait_for;
use crate::cluster::forward::{self, Listener};
use crate::http_error::ApiError;
use crate::ids::workflow_run_id;
use crate::ids::{parse_awakeable_id, ObjectId};
use crate::journal::{CompletionResult, Failure};
use crate::node::Node;
use crate::node::{CompleteError, Completer};
use crate::storage::{ServiceKind, WriteBatch};

/// Longest rejection reason kept.
const REASON_MAX_BYTES: usize = 4096;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/awakeables/{id}/{action}", web::post().to(complete_awakeable))
        .route("/restate/awakeables/{id}/{action}", web::post().to(complete_awakeable))
        .route("/workflows/{service}/{key}/{what}", web::get().to(workflow_result))
        .route(
            "/restate/workflow/{service}/{key}/{what}",
            web::get().to(workflow_result),
        );
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
    let body = read_limited(&req, payload, node.config.max_body_bytes).await?;
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
