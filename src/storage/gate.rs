//! The partition gate: the one boundary every partitioned write crosses. The log thread
//! refuses a batch that touches a partition this node does not own (or is handing off), so
//! no key is ever written by two owners. A replicated log per partition would slot in here.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::ids::PARTITIONS_COUNT;

/// What this node may do with a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PartitionState {
    /// Another node owns it (or nobody yet): no writes here.
    Remote = 0,
    /// This node owns it and serves it.
    Owned = 1,
    /// This node owns it but is handing it off: writes wait for the new owner.
    Frozen = 2,
}

pub struct PartitionGate {
    states: Vec<AtomicU8>,
}

impl PartitionGate {
    /// Every partition in `initial`.
    pub fn new(initial: PartitionState) -> Self {
        Self {
            states: (0..PARTITIONS_COUNT).map(|_| AtomicU8::new(initial as u8)).collect(),
        }
    }

    pub fn get(&self, partition: u16) -> PartitionState {
        match self.states[partition as usize].load(Ordering::Acquire) {
            1 => PartitionState::Owned,
            2 => PartitionState::Frozen,
            _ => PartitionState::Remote,
        }
    }

    pub fn set(&self, partition: u16, state: PartitionState) {
        self.states[partition as usize].store(state as u8, Ordering::Release);
    }

    pub fn owns(&self, partition: u16) -> bool {
        self.get(partition) == PartitionState::Owned
    }

    pub fn owned_count(&self) -> usize {
        (0..PARTITIONS_COUNT as u16).filter(|p| self.owns(*p)).count()
    }
}

/// Partition of a key in a partitioned table (its first two bytes).
pub fn key_partition(key: &[u8]) -> u16 {
    match key {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) % PARTITIONS_COUNT as u16,
        _ => 0,
    }
}
