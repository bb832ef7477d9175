//! Routing of ingress and admin requests to the node that owns their partition, so any node
//! can take any request (a plain round-robin load balancer in front works).
//!
//! A request is forwarded at most once: a node that receives a forwarded request for a
//! partition it does not serve answers 421 and the forwarder routes again with what it
//! learns. Requests are retried only when the owner cannot have acted on them (421, a
//! partition in motion, a refused connection); an answer lost after sending is a 503 with
//! an "outcome unknown" message, never a silent retry. A wait on the owner lasts only while
//! the owner answers pings (`placement::liveness`): one that stops answering — paused, cut
//! off — costs its callers ≤ ~1.6 s and a 503 with Retry-After, and only for its partitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::http_error::{error_body, ApiError, INVOCATION_ID_HEADER, MOVING_HEADER, RESTATE_ID_HEADER};
use crate::ids::InvocationId;
use crate::journal::Output;
use crate::node::{Node, Waited};
use crate::placement::client::{self, RemoteOutput};
use crate::placement::Placement;

/// Header stamped on forwarded requests: the forwarder's ring epoch.
pub const FORWARDED_HEADER: &str = "x-kiln-ring-epoch";
/// How long a request waits for a partition in motion before it gets a 503.
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// Headers relayed in both directions.
/// Request headers a forwarded request does not carry on: the connection's own (hop-by-hop)
/// and the forwarding marker. The rest reach the owner, which hands them to the handler.
pub const UNRELAYED_REQUEST_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    FORWARDED_HEADER,
];
const RELAYED_RESPONSE_HEADERS: [&str; 4] = ["content-type", INVOCATION_ID_HEADER, RESTATE_ID_HEADER, "retry-after"];

/// Which listener of the owner a request goes to.
#[derive(Clone, Copy)]
pub enum Listener {
    Ingress,
    Admin,
}

/// `None`: this node serves `partition`, handle the request here. `Some`: the owner's answer
/// (or why there is none).
pub async fn route(
    node: &Arc<Node>,
    req: &HttpRequest,
    body: &[u8],
    partition: u16,
    listener: Listener,
) -> Option<HttpResponse> {
    let answer = |e: ApiError| Some(actix_web::ResponseError::error_response(&e));
    let deadline = Instant::now() + MOVE_WAIT;
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    loop {
        if Instant::now() > deadline {
            return answer(ApiError::unavailable(format!(
                "partition {partition} is moving between nodes; retry"
            )));
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
            return answer(ApiError::owner_down(partition, &peer.id));
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
        let exchange = async {
            let response = send(node, req, body, &addr).await?;
            let status = response.status().as_u16();
            let moving = status == 503 && response.headers().contains_key(MOVING_HEADER);
            Ok::<_, reqwest::Error>((status, moving, relay(response).await))
        };
        match node.cluster.while_alive(&peer.id, exchange).await {
            Some(Ok((421, _, _))) => {
                node.pull_membership(&peer.peer_addr).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some(Ok((_, true, _))) => tokio::time::sleep(Duration::from_millis(10)).await,
            Some(Ok((_, false, response))) => return Some(response),
            Some(Err(e)) if e.is_connect() => {
                node.cluster.mark_unreachable(&peer.id);
                return answer(ApiError::owner_down(partition, &peer.id));
            }
            Some(Err(e)) => return answer(outcome_unknown(&peer.id, partition, &crate::invoker::error_chain(&e))),
            None => return answer(outcome_unknown(&peer.id, partition, "it stopped answering")),
        }
    }
}

/// The owner may have acted on a request it did not answer.
fn outcome_unknown(node_id: &str, partition: u16, why: &str) -> ApiError {
    ApiError::unavailable(format!(
        "node {node_id} (owner of partition {partition}) failed while answering; the outcome is unknown — \
         retry with an idempotency-key to be safe: {why}"
    ))
}

async fn send(node: &Node, req: &HttpRequest, body: &[u8], addr: &str) -> Result<reqwest::Response, reqwest::Error> {
    let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut request = client::http()
        .request(method, format!("http://{addr}{path}"))
        .header(FORWARDED_HEADER, node.cluster.epoch().to_string())
        .body(body.to_vec());
    for (name, v) in req.headers() {
        if !UNRELAYED_REQUEST_HEADERS.contains(&name.as_str()) {
            request = request.header(name.as_str(), v.as_bytes());
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
        Err(e) => actix_web::ResponseError::error_response(&ApiError::unavailable(format!(
            "the owner node failed while answering; the outcome is unknown: {e}"
        ))),
    }
}

/// Waits for the output of `id` wherever it runs, following its partition if it moves.
pub async fn wait_output(node: &Arc<Node>, id: InvocationId) -> Result<Option<Output>, ApiError> {
    let partition = id.partition();
    let deadline = Instant::now() + MOVE_WAIT;
    loop {
        match node.cluster.placement(partition) {
            Placement::Local => match node.output(id).await? {
                Waited::Output(o) => return Ok(Some(o)),
                Waited::NotFound => return Ok(None),
                Waited::Moved => continue,
            },
            Placement::Moving => {
                if Instant::now() > deadline {
                    return Err(ApiError::unavailable(format!("partition {partition} is moving; retry")));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Placement::Remote(peer) if !peer.alive => {
                return Err(ApiError::owner_down(partition, &peer.id));
            }
            Placement::Remote(peer) => match node
                .cluster
                .call_while_alive(&peer.id, client::output(&peer.peer_addr, id))
                .await
            {
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
