//! Public HTTP API, shaped like Restate's: call or send to handlers, attach to invocations.
//!
//! Boundary: parses and validates requests, then hands them to `Node::submit`; knows nothing
//! of storage layout or actors.

mod body;
mod by_key;
mod callbacks;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::percent_decode_str;
use serde_json::json;

use crate::cluster::forward::{self, Listener};
use crate::http_error::{error_body, ApiError};
use crate::ids::{idempotent_partition_key, partition_of, InvocationId, ObjectId};
use crate::journal::{check_headers, check_idempotency_key, Headers, Output};
use crate::node::{Node, Request};
use crate::storage::{HandlerKind, ServiceKind};

pub use crate::http_error::{INVOCATION_ID_HEADER, RESTATE_ID_HEADER};
const OBJECT_KEY_MAX_BYTES: usize = 1024;

pub fn config(cfg: &mut web::ServiceConfig) {
    crate::http_error::extractor_errors(cfg, 2 * 1024 * 1024);
    cfg.route("/invocations/{id}/attach", web::get().to(attach))
        .route("/invocations/{id}/output", web::get().to(output))
        .route("/restate/invocation/{id}/attach", web::get().to(attach))
        .route("/restate/invocation/{id}/output", web::get().to(output))
        .configure(by_key::config)
        .configure(callbacks::config)
        .route("/{tail:.*}", web::post().to(invoke))
        .default_service(web::to(|req: HttpRequest| async move {
            ApiError::not_found(format!("no route for {} {}", req.method(), req.path())).error_response_owned()
        }));
}

trait OwnedResponse {
    fn error_response_owned(self) -> HttpResponse;
}

impl OwnedResponse for ApiError {
    fn error_response_owned(self) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

/// The HTTP response for a finished invocation. A failure answers with its own code as the
/// status, as Restate does (a `TerminalException(422)` is a 422), when that is an HTTP error
/// status; other codes answer 500. The body is `{code, message}` either way.
pub fn output_response(id: InvocationId, output: &Output) -> HttpResponse {
    let mut r = match output {
        Output::Value(v) => HttpResponse::Ok().content_type("application/json").body(v.clone()),
        Output::Failure(f) => error_body(failure_status(f.code), f.code, &f.message),
    };
    name_invocation(&mut r, id);
    r
}

/// The status a failure with `code` answers: the code itself when it is a 4xx or 5xx.
pub fn failure_status(code: u16) -> StatusCode {
    match StatusCode::from_u16(code) {
        Ok(status) if (400..=599).contains(&code) => status,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Names the invocation in an answer, under Kiln's header and Restate's.
fn name_invocation(r: &mut HttpResponse, id: InvocationId) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        r.headers_mut()
            .insert(HeaderName::from_static(INVOCATION_ID_HEADER), v.clone());
        r.headers_mut().insert(HeaderName::from_static(RESTATE_ID_HEADER), v);
    }
}

struct Target {
    service: String,
    key: String,
    handler: String,
    send: bool,
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request(format!("path segment {segment:?} is not valid UTF-8")))
}

fn parse_target(node: &Node, path: &str) -> Result<(Target, crate::schema::ServiceEntry), ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let service_name = decode(segments[0])?;
    let schema = node.schema.snapshot();
    let Some(service) = schema.services.get(&service_name) else {
        return Err(ApiError::not_found(format!(
            "service {service_name:?} not found; registered services: GET /services on the admin API"
        )));
    };
    let target = match (service.kind, segments.as_slice()) {
        (ServiceKind::Service, [_, h]) => Target {
            service: service_name,
            key: String::new(),
            handler: decode(h)?,
            send: false,
        },
        (ServiceKind::Service, [_, h, "send"]) => Target {
            service: service_name,
            key: String::new(),
            handler: decode(h)?,
            send: true,
        },
        (ServiceKind::VirtualObject | ServiceKind::Workflow, [_, k, h]) => Target {
            service: service_name,
            key: decode(k)?,
            handler: decode(h)?,
            send: false,
        },
        (ServiceKind::VirtualObject | ServiceKind::Workflow, [_, k, h, "send"]) => Target {
            service: service_name,
            key: decode(k)?,
            handler: decode(h)?,
            send: true,
        },
        (ServiceKind::VirtualObject | ServiceKind::Workflow, [_, _]) => {
            return Err(ApiError::bad_request(format!(
                "{service_name} is a virtual object: call POST /{service_name}/{{key}}/{{handler}}"
            )))
        }
        _ => return Err(ApiError::not_found(format!("no route for POST {path}"))),
    };
    if target.key.len() > OBJECT_KEY_MAX_BYTES {
        return Err(ApiError::bad_request(format!(
            "object key longer than {OBJECT_KEY_MAX_BYTES} bytes"
        )));
    }
    if !service.handlers.contains_key(&target.handler) {
        return Err(ApiError::not_found(format!(
            "handler {:?} not found in service {:?}",
            target.handler, target.service
        )));
    }
    Ok((target, service.clone()))
}

/// The partition key an ingress call is placed by.
fn routing_key(node: &Node, target: &Target, kind: HandlerKind, idempotency_key: Option<&str>) -> u64 {
    match (kind, idempotency_key) {
        (HandlerKind::Stateless, Some(k)) => idempotent_partition_key(&target.service, &target.handler, "", k, true),
        (HandlerKind::Stateless, None) => {
            // Any partition will do: prefer one served here (no hop).
            let mut pk = fastrand::u64(..);
            for _ in 0..64 {
                if node.cluster.owns(partition_of(pk)) {
                    break;
                }
                pk = fastrand::u64(..);
            }
            pk
        }
        _ => ObjectId::new(&target.service, &target.key).partition_key(),
    }
}

/// The request headers the handler sees (START `headers`): all but the connection's own,
/// within the limits of `journal::check_headers`. Values that are not UTF-8 are left out.
fn handed_headers(req: &HttpRequest) -> Result<Headers, ApiError> {
    let headers: Headers = req
        .headers()
        .iter()
        .filter(|(name, _)| !forward::UNRELAYED_REQUEST_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    check_headers(&headers).map_err(ApiError::bad_request)?;
    Ok(headers)
}

async fn invoke(req: HttpRequest, payload: web::Payload, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let node: Arc<Node> = node.into_inner();
    let (target, service) = parse_target(&node, req.path())?;
    let delay = parse_delay(req.query_string(), target.send)?;
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("idempotency-key must be visible ASCII"))?;
            check_idempotency_key(k).map_err(|why| ApiError::bad_request(format!("idempotency-key: {why}")))?;
            Some(k.to_owned())
        }
    };
    let headers = handed_headers(&req)?;
    let input = body::read_limited(
        &req,
        payload,
        node.config.max_body_bytes,
        node.config.body_read_timeout(),
    )
    .await?;
    let kind = service.handlers[&target.handler].kind;
    let partition_key = routing_key(&node, &target, kind, idempotency_key.as_deref());
    let send = target.send;
    let mut request = Some(Request {
        service: target.service,
        handler: target.handler,
        key: target.key,
        kind,
        deployment_id: service.deployment_id,
        input,
        idempotency_key,
        delay,
        partition_key: Some(partition_key),
        awaits_output: !send,
        headers,
    });
    loop {
        let body = &request.as_ref().expect("kept while it may be routed again").input;
        if let Some(answer) = forward::route(&node, &req, body, partition_of(partition_key), Listener::Ingress).await {
            return Ok(answer);
        }
        // In a cluster the partition may start moving before the write (which is then
        // refused): keep the request to route it again. A lone node moves nothing.
        let attempt = if node.cluster.is_clustered() {
            request.clone()
        } else {
            request.take()
        };
        let submitted = match node.submit(attempt.expect("present")).await {
            Err(crate::object::SubmitError::Storage(crate::storage::StorageError::NotOwner(_)))
                if request.is_some() =>
            {
                continue
            }
            other => other?,
        };
        if send {
            let status = if submitted.existing {
                "PreviouslyAccepted"
            } else {
                "Accepted"
            };
            let mut r =
                HttpResponse::Accepted().json(json!({ "invocationId": submitted.id.to_string(), "status": status }));
            name_invocation(&mut r, submitted.id);
            return Ok(r);
        }
        let Some(output) = submitted.output else {
            return wait_for(&node, submitted.id).await;
        };
        // Created unwritten: storage does not know it until its first commit.
        match output.await {
            Ok(output) => return Ok(output_response(submitted.id, &output)),
            // Dropped: written and then moved with its partition (wait at the new owner), or
            // lost before its first write — its partition moved, the node is stopping — when
            // nothing of it is durable and submitting it again is safe.
            Err(_) => match forward::wait_output(&node, submitted.id).await? {
                Some(output) => return Ok(output_response(submitted.id, &output)),
                None if request.is_some() => continue,
                None => {
                    return Err(ApiError::unavailable(format!(
                        "invocation {} was interrupted before it started; nothing of it was recorded, retry",
                        submitted.id
                    )))
                }
            },
        }
    }
}

pub(super) async fn wait_for(node: &Arc<Node>, id: InvocationId) -> Result<HttpResponse, ApiError> {
    match forward::wait_output(node, id).await? {
        Some(output) => Ok(output_response(id, &output)),
        None => Err(ApiError::not_found(format!("invocation {id} not found"))),
    }
}

/// `?delay=10s` (also `500ms`, `2m`, `1h`, plain milliseconds, or ISO-8601 such as `PT10S`),
/// only with `/send`.
fn parse_delay(query: &str, send: bool) -> Result<Option<std::time::Duration>, ApiError> {
    let mut delay = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "delay" {
            return Err(ApiError::bad_request(format!("unknown query parameter {name:?}")));
        }
        if !send {
            return Err(ApiError::bad_request("delay is only allowed with /send"));
        }
        let value = percent_decode_str(value).decode_utf8_lossy();
        let ms = delay_ms(&value).ok_or_else(|| {
            ApiError::bad_request(format!(
                "malformed delay {value:?}: use e.g. 10s, 500ms, 2m, 1h or ISO-8601 (PT10S, P1DT2H)"
            ))
        })?;
        if ms > crate::journal::DELAY_MS_MAX {
            return Err(ApiError::bad_request(format!(
                "delay {value:?} is beyond the longest supported delay ({} days)",
                crate::journal::DELAY_MS_MAX / 86_400_000
            )));
        }
        delay = Some(std::time::Duration::from_millis(ms));
    }
    Ok(delay)
}

/// A delay in milliseconds: `10s`, `500ms`, `2m`, `1h`, `1500` (ms), or an ISO-8601 duration
/// of days, hours, minutes and (fractional) seconds (`PT10S`, `PT0.5S`, `P1DT2H30M`).
/// `None` when malformed or too large for a u64.
fn delay_ms(value: &str) -> Option<u64> {
    if let Some(iso) = value.strip_prefix('P').or_else(|| value.strip_prefix('p')) {
        return iso_duration_ms(iso);
    }
    let (digits, unit_ms) = match value {
        v if v.ends_with("ms") => (&v[..v.len() - 2], 1),
        v if v.ends_with('s') => (&v[..v.len() - 1], 1_000),
        v if v.ends_with('m') => (&v[..v.len() - 1], 60_000),
        v if v.ends_with('h') => (&v[..v.len() - 1], 3_600_000),
        v => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit_ms)
}

/// The part of an ISO-8601 duration after `P`: `[nD][T[nH][nM][n[.f]S]]`.
fn iso_duration_ms(iso: &str) -> Option<u64> {
    let (date, time) = match iso.split_once(['T', 't']) {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (iso, None),
    };
    let mut total: u64 = 0;
    let mut add = |number: &str, unit_ms: f64| -> Option<()> {
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        let ms = number.parse::<f64>().ok()? * unit_ms;
        if !ms.is_finite() || ms > u64::MAX as f64 {
            return None;
        }
        total = total.checked_add(ms.round() as u64)?;
        Some(())
    };
    let mut rest = date;
    if !rest.is_empty() {
        rest = rest.strip_suffix(['D', 'd'])?;
        add(rest, 86_400_000.0)?;
    }
    if let Some(time) = time {
        let mut number = String::new();
        let mut seen = String::new();
        for c in time.chars() {
            let unit = match c.to_ascii_uppercase() {
                'H' => 3_600_000.0,
                'M' => 60_000.0,
                'S' => 1_000.0,
                _ => {
                    number.push(c);
                    continue;
                }
            };
            let u = c.to_ascii_uppercase();
            // Units once each, in order (H, M, S); only seconds may be fractional.
            if seen.contains(u) || seen.chars().any(|s| "HMS".find(s) > "HMS".find(u)) {
                return None;
            }
            if u != 'S' && number.contains('.') {
                return None;
            }
            seen.push(u);
            add(&number, unit)?;
            number.clear();
        }
        if !number.is_empty() {
            return None;
        }
    }
    (!date.is_empty() || time.is_some()).then_some(total)
}

fn parse_id(raw: &str) -> Result<InvocationId, ApiError> {
    Ok(raw.parse()?)
}

async fn attach(path: web::Path<String>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    wait_for(&node.into_inner(), id).await
}

async fn output(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let node = node.into_inner();
    if let Some(answer) = forward::route(&node, &req, &[], id.partition(), Listener::Ingress).await {
        return Ok(answer);
    }
    output_of(&node, id).await
}

/// The output if finished, 470 if not.
pub(super) async fn output_of(node: &Node, id: InvocationId) -> Result<HttpResponse, ApiError> {
    let store = node.store.clone();
    let record = web::block(move || store.invocation(&id))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    match record {
        None => Err(ApiError::not_found(format!("invocation {id} not found"))),
        Some(r) => match r.output {
            Some(output) => Ok(output_response(id, &output)),
            // 470 is what Restate answers for "not completed yet".
            None => Ok(error_body(
                StatusCode::from_u16(470).expect("valid status"),
                470,
                &format!("invocation {id} has not completed yet"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_in_both_notations() {
        // (query value, milliseconds or None when refused)
        let table: &[(&str, Option<u64>)] = &[
            ("1500", Some(1500)),
            ("500ms", Some(500)),
            ("10s", Some(10_000)),
            ("2m", Some(120_000)),
            ("1h", Some(3_600_000)),
            ("PT10S", Some(10_000)),
            ("PT0.5S", Some(500)),
            ("PT1M30S", Some(90_000)),
            ("P1DT2H", Some(93_600_000)),
            ("P2D", Some(172_800_000)),
            ("pt3s", Some(3_000)),
            ("PT", None),
            ("P", None),
            ("PT1.5M", None),
            ("PT10S5M", None),
            ("PT1H1H", None),
            ("PT10", None),
            ("P1W", None),
            ("10x", None),
            ("", None),
            ("-5s", None),
        ];
        for (value, want) in table {
            assert_eq!(delay_ms(value), *want, "{value}");
        }
    }

    #[test]
    fn failures_answer_their_own_status() {
        // (failure code, HTTP status)
        let table: &[(u16, u16)] = &[
            (422, 422),
            (400, 400),
            (409, 409),
            (500, 500),
            (570, 570),
            (0, 500),
            (200, 500),
            (1000, 500),
            (600, 500),
        ];
        for (code, status) in table {
            assert_eq!(failure_status(*code).as_u16(), *status, "{code}");
        }
    }
}
