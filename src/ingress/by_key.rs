//! Attach to, or read the output of, an invocation named by its idempotency key, at Restate's
//! path shape: `/restate/invocation/{service}/{handler}/{idempotencyKey}/attach|output` for a
//! service, `/restate/invocation/{service}/{key}/{handler}/{idempotencyKey}/attach|output` for a
//! virtual object or workflow. The id is derived (`ids::idempotent_id`), as the request's was.

use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::percent_decode_str;

use super::{output_of, wait_for};
use crate::cluster::forward::{self, Listener};
use crate::http_error::ApiError;
use crate::ids::{idempotent_id, workflow_run_id, InvocationId, ObjectId};
use crate::journal::HandlerKind;
use crate::node::Node;
use crate::storage::ServiceKind;

pub fn config(cfg: &mut web::ServiceConfig) {
    for shape in [
        "/restate/invocation/{service}/{handler}/{idem}/{what}",
        "/restate/invocation/{service}/{key}/{handler}/{idem}/{what}",
    ] {
        cfg.route(shape, web::get().to(by_key));
    }
}

/// The path's segments after `/restate/invocation/`, decoded, for a service of `kind`:
/// (key, handler, idempotency key), or why they do not fit.
fn parts(kind: ServiceKind, service: &str, segments: &[String]) -> Result<(String, String, String), String> {
    match (kind, segments) {
        (ServiceKind::Service, [handler, idem]) => Ok((String::new(), handler.clone(), idem.clone())),
        (ServiceKind::VirtualObject | ServiceKind::Workflow, [key, handler, idem]) => {
            Ok((key.clone(), handler.clone(), idem.clone()))
        }
        (ServiceKind::Service, _) => Err(format!(
            "{service} is a service: use /restate/invocation/{service}/{{handler}}/{{idempotencyKey}}/attach"
        )),
        _ => Err(format!(
            "{service} has keys: use /restate/invocation/{service}/{{key}}/{{handler}}/{{idempotencyKey}}/attach"
        )),
    }
}

async fn by_key(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let segments: Vec<String> = req
        .path()
        .trim_start_matches("/restate/invocation/")
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let (service_name, rest) = segments.split_first().expect("routed with segments");
    let (what, rest) = rest.split_last().expect("routed with segments");
    let attach = match what.as_str() {
        "attach" => true,
        "output" => false,
        _ => return Err(ApiError::not_found(format!("no route for GET {}", req.path()))),
    };
    let schema = node.schema.snapshot();
    let service = schema
        .services
        .get(service_name)
        .ok_or_else(|| ApiError::not_found(format!("service {service_name:?} not found")))?;
    let (key, handler, idem) = parts(service.kind, service_name, rest).map_err(ApiError::bad_request)?;
    let Some(h) = service.handlers.get(&handler) else {
        return Err(ApiError::not_found(format!(
            "handler {handler:?} not found in service {service_name:?}"
        )));
    };
    // As `Node::submit` names them: a workflow's run is one per key, whatever its request key.
    let id: InvocationId = match h.kind {
        HandlerKind::Workflow => workflow_run_id(&ObjectId::new(service_name, &key)),
        kind => idempotent_id(service_name, &handler, &key, &idem, kind == HandlerKind::Stateless),
    };
    let node = node.into_inner();
    if attach {
        return wait_for(&node, id).await;
    }
    if let Some(answer) = forward::route(&node, &req, &[], id.partition(), Listener::Ingress).await {
        return Ok(answer);
    }
    output_of(&node, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_shapes_table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Case = (
            ServiceKind,
            Vec<String>,
            Option<(&'static str, &'static str, &'static str)>,
        );
        let cases: &[Case] = &[
            (ServiceKind::Service, s(&["greet", "k1"]), Some(("", "greet", "k1"))),
            (
                ServiceKind::VirtualObject,
                s(&["acc-1", "deposit", "k1"]),
                Some(("acc-1", "deposit", "k1")),
            ),
            (
                ServiceKind::Workflow,
                s(&["wf", "run", "k1"]),
                Some(("wf", "run", "k1")),
            ),
            (ServiceKind::Service, s(&["x", "greet", "k1"]), None),
            (ServiceKind::VirtualObject, s(&["deposit", "k1"]), None),
        ];
        for (kind, segments, want) in cases {
            let got = parts(*kind, "S", segments);
            match want {
                Some((k, h, i)) => assert_eq!(got, Ok((k.to_string(), h.to_string(), i.to_string()))),
                None => assert!(got.is_err(), "{kind:?} {segments:?}: {got:?}"),
            }
        }
    }
}
