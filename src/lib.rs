//! Kiln: durable execution of virtual objects. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod core;
pub mod http_error;
pub mod ids;
pub mod ingress;
pub mod invocation;
pub mod invoker;
pub mod journal;
pub mod metadata;
pub mod node;
pub mod object;
pub mod placement;
pub mod schema;
pub mod serve;
pub mod storage;
pub mod timers;
