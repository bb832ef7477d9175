//! Changing the cluster, through the node: gossip that keeps the membership current, membership
//! changes and the partition hand-offs they call for, the node-to-node endpoint, and the
//! forwarding of requests to the node that serves them. What the node reads of placement is
//! `placement`, below it. See docs/cluster.md for the protocol and the admin API.
//!
//! Invariant: a partition is written only by the node whose partition gate says `Owned`, and
//! only the current owner hands a partition to another node (`handoff`), so no key ever has
//! two owners. A node learns newer memberships by gossip; the highest epoch wins.

mod consensus;
pub use consensus::DeploymentError;
pub mod forward;
mod gossip;
mod handoff;
pub mod peer;
pub mod raft;
