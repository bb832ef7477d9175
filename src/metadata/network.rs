//! How a metadata replica reaches the others: Raft's RPCs as MessagePack over the node-to-node
//! HTTP endpoint (`POST /cluster/v1/raft/{append,vote,pre_vote,snapshot}`, served by
//! `cluster::raft`), through the shared node-to-node client. A refused connection is
//! `Unreachable` (Raft backs off), anything else a network error (it retries).

use std::future::Future;
use std::time::Duration;

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MetaCommand, MetaConfig, MetaResponse, NodeId};
use crate::placement::client::{post_msgpack, PeerError};
use crate::storage::encode;

/// A snapshot as sent to a replica that is too far behind for the log.
#[derive(Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: VoteOf<MetaConfig>,
    pub meta: SnapshotMetaOf<MetaConfig>,
    pub data: Vec<u8>,
}

impl SnapshotRequest {
    pub fn into_parts(self) -> (VoteOf<MetaConfig>, SnapshotOf<MetaConfig, Vec<u8>>) {
        let snapshot = SnapshotOf::<MetaConfig, Vec<u8>> {
            meta: self.meta,
            snapshot: self.data,
        };
        (self.vote, snapshot)
    }
}

/// Why a call failed, before Raft's error types: the peer could not be reached, or answered
/// something unusable.
enum CallError {
    Unreachable(String),
    Network(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl CallError {
    fn rpc(self) -> RPCError<MetaConfig> {
        match self {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Failed(m))),
            CallError::Network(m) => RPCError::Network(NetworkError::new(&Failed(m))),
        }
    }

    fn streaming(self) -> StreamingError<MetaConfig> {
        match self {
            CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&Failed(m))),
            CallError::Network(m) => StreamingError::Network(NetworkError::new(&Failed(m))),
        }
    }
}

/// Proposes `command` at the replica at `addr` (the leader, as this one last knew it).
pub async fn propose_at(addr: &str, command: &MetaCommand) -> Result<MetaResponse, String> {
    let peer = MetaPeer { addr: addr.to_owned() };
    peer.call("propose", command, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            CallError::Unreachable(m) | CallError::Network(m) => m,
        })
}

/// Makes a client per replica (Raft asks for one per target).
#[derive(Clone, Default)]
pub struct MetaNetwork;

impl RaftNetworkFactory<MetaConfig> for MetaNetwork {
    type Network = MetaPeer;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> MetaPeer {
        MetaPeer {
            addr: node.addr.clone(),
        }
    }
}

/// One replica's address (its `--peer-addr`).
pub struct MetaPeer {
    addr: String,
}

impl MetaPeer {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        what: &str,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let path = format!("/cluster/v1/raft/{what}");
        let body = post_msgpack(&self.addr, &path, encode(request), ttl)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(m) => CallError::Unreachable(m),
                // The replica is not running its group (starting, stopping): back off.
                PeerError::Refused { status: 503, message } => CallError::Unreachable(message),
                e @ (PeerError::Refused { .. } | PeerError::Unresponsive | PeerError::Other(_)) => {
                    CallError::Network(e.to_string())
                }
            })?;
        rmp_serde::from_slice(&body).map_err(|e| CallError::Network(format!("malformed answer: {e}")))
    }
}

impl RaftNetworkV2<MetaConfig> for MetaPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MetaConfig>, RPCError<MetaConfig>> {
        self.call("append", &rpc, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<MetaConfig>, RPCError<MetaConfig>> {
        self.call("vote", &rpc, option.hard_ttl()).await.map_err(CallError::rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<MetaConfig>, RPCError<MetaConfig>> {
        self.call("pre_vote", &rpc, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<MetaConfig>,
        snapshot: SnapshotOf<MetaConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<MetaConfig>, StreamingError<MetaConfig>> {
        let request = SnapshotRequest {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        self.call("snapshot", &request, option.hard_ttl())
            .await
            .map_err(CallError::streaming)
    }
}
