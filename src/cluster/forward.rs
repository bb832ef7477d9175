//! Routing of ingress and admin requests to the node that owns their partition, so any node
//! can take any request (a plain round-robin load balancer in front works).
//!
//! A request is forwarded at most once: a node that receives a forwarded request for a
//! partition it does not serve answers 421 and the forwarder routes again with what it
//! learns. Requests are retried only when the owner cannot have acted on them (421, a
//! partition in motion, a refused connection); an answer lost after sending is a 503 with
//! an "outcome unknown" message, never a silent retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::peer::{client, RemoteOutput};
use super::Placement;
use crate::http_error::{error_body, ApiError};
use crate::ids::InvocationId;
use crate::journal::Output;
use crate::node::{Node, Waited};

/// Header stamped on forwarded requests: the forwarder's ring epoch.
pub const FORWARDED_HEADER: &str = "x-kiln-ring-epoch";
/// Set on a 503 that means "the partition is moving; route again".
pub const MOVING_HEADER: &str = "x-kiln-moving";
/// How long a request waits for a partition in motion before it gets a 503.
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// Retry-After given when the owner of a partition is down.
const DEAD_OWNER_RETRY_AFTER_SECS: u32 = 5;
/// Headers relayed in both directions.
const RELAYED_REQUEST_HEADERS: [&str; 3] = ["content-type", "idempotency-key", "accept"];
const RELAYED_RESPONSE_HEADERS: [&str; 3] = ["content-type", crate::ingress::INVOCATION_ID_HEADER, "retry-after"];

/// Which listener of the owner a request goes to.
#[derive(Clone, Copy)]
pub enum Listener {
    Ingress,
    Admin,
}

/// 503 for a partition whose owner is down: retry later, nothing was done.
pub fn owner_down(partition: u16, node_id: &str) -> HttpResponse {
    let mut r = error_body(
        StatusCode::SERVICE_UNAVAILABLE,
        503,
        &format!("partition {partition} is owned by node {node_id}, which is unreachable; retry later"),
    );
    r.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        HeaderValue::from(DEAD_OWNER_RETRY_AFTER_SECS),
    );
    r
}

fn moving_timeout(partition: u16) -> HttpResponse {
    let mut r = error_body(
        StatusCode::SERVICE_UNAVAILABLE,
        503,
        &format!("partition {partition} is moving between nodes; retry"),
    );
    r.headers_mut()
        .insert(actix_web::http::header::RETRY_AFTER, HeaderValue::from(1u32));
    r
}

/// The 503 a node answers when a partition it just served started moving: route again.
pub fn moving(partition: u16) -> HttpResponse {
    let mut r = moving_timeout(partition);
    r.headers_mut()
        .insert(HeaderName::from_static(MOVING_HEADER), HeaderValue::from_static("1"));
    r
}

/// `None`: this node serves `partition`, handle the request here. `Some`: the owner's answer
/// (or why there is none).
pub async fn route(
    node: &Arc<Node>,
    req: &HttpRequest,
    body: &bytes::Bytes,
    partition: u16,
    listener: Listener,
) -> Option<HttpResponse> {
    let deadline = Instant::now() + MOVE_WAIT;
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    loop {
        if Instant::now() > deadline {
            return Some(moving_timeout(partition));
        }
        let peer = match node.cluster.placement(partition) {
            Placement::Local => return None,
            Placement::Moving => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Placement::Remote(peer) => peer,
        };
        if forwarded {
            // Never forward twice: the first forwarder knows where to go once it catches up.
            let mut r = error_body(
                StatusCode::MISDIRECTED_REQUEST,
                421,
                &format!("partition {partition} is owned by {}", peer.id),
            );
            r.headers_mut().insert(
                HeaderName::from_static(FORWARDED_HEADER),
                HeaderValue::from(node.cluster.epoch()),
            );
            return Some(r);
        }
        if !peer.alive {
            return Some(owner_down(partition, &peer.id));
        }
        let addr = match listener {
            Listener::Ingress => peer.ingress_addr.clone(),
            Listener::Admin => peer.admin_addr.clone(),
        };
        let Some(addr) = addr else {
            // Not pinged yet (just started): its addresses come with the first ping.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match send(node, req, body, &addr).await {
            Ok(response) if response.status().as_u16() == 421 => {
                node.pull_membership(&peer.peer_addr).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(response) if response.status().as_u16() == 503 && response.headers().contains_key(MOVING_HEADER) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(response) => return Some(relay(response).await),
            Err(e) if e.is_connect() => {
                node.cluster.mark_unreachable(&peer.id);
                return Some(owner_down(partition, &peer.id));
            }
            Err(e) => {
                let mut r = error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    503,
                    &format!(
                        "node {} (owner of partition {partition}) failed while answering; the outcome is unknown — retry with an idempotency-key to be safe: {}",
                        peer.id,
                        crate::invoker::error_chain(&e)
                    ),
                );
                r.headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, HeaderValue::from(1u32));
                return Some(r);
            }
        }
    }
}

async fn send(
    node: &Node,
    req: &HttpRequest,
    body: &bytes::Bytes,
    addr: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut request = http()
        .request(method, format!("http://{addr}{path}"))
        .header(FORWARDED_HEADER, node.cluster.epoch().to_string())
        .body(body.clone());
    for name in RELAYED_REQUEST_HEADERS {
        if let Some(v) = req.headers().get(name) {
            request = request.header(name, v.as_bytes());
        }
    }
    request.send().await
}

async fn relay(response: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    for name in RELAYED_RESPONSE_HEADERS {
        if let Some(v) = response.headers().get(name) {
            out.insert_header((name, v.as_bytes()));
        }
    }
    match response.bytes().await {
        Ok(body) => out.body(body),
        Err(e) => error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            503,
            &format!("the owner node failed while answering; the outcome is unknown: {e}"),
        ),
    }
}

thread_local! {
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(256)
        // Under the servers' keep-alive (actix: 5 s): never reuse a connection being closed.
        // (A longer server keep-alive let actix answer 408 on reused idle connections.)
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
}

fn http() -> reqwest::Client {
    CLIENT.with(|c| c.clone())
}

/// Waits for the output of `id` wherever it runs, following its partition if it moves.
pub async fn wait_output(node: &Arc<Node>, id: InvocationId) -> Result<Option<Output>, ApiError> {
    let partition = id.partition();
    let deadline_moving = MOVE_WAIT;
    let mut waited_moving = Duration::ZERO;
    loop {
        match node.cluster.placement(partition) {
            Placement::Local => match node.output(id).await? {
                Waited::Output(o) => return Ok(Some(o)),
                Waited::NotFound => return Ok(None),
                Waited::Moved => continue,
            },
            Placement::Moving => {
                if waited_moving > deadline_moving {
                    return Err(ApiError::unavailable(format!("partition {partition} is moving; retry")));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited_moving += Duration::from_millis(10);
            }
            Placement::Remote(peer) if !peer.alive => {
                return Err(ApiError::owner_down(partition, &peer.id));
            }
            Placement::Remote(peer) => match client::output(&peer.peer_addr, id).await {
                Ok(RemoteOutput::Output(o)) => return Ok(Some(o)),
                Ok(RemoteOutput::NotFound) => return Ok(None),
                Err(e) if e.misdirected() => {
                    node.pull_membership(&peer.peer_addr).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(client::PeerError::Unreachable(_)) => {
                    node.cluster.mark_unreachable(&peer.id);
                    return Err(ApiError::owner_down(partition, &peer.id));
                }
                Err(e) => {
                    return Err(ApiError::unavailable(format!(
                        "node {} failed while waiting for {id}: {e}",
                        peer.id
                    )))
                }
            },
        }
    }
}
