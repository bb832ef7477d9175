//! In-memory status of running invocations (what an attempt is doing right now), so status
//! changes that need no durability cost no write.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ids::InvocationId;
use crate::storage::InvocationStatus;

#[derive(Clone, Debug)]
pub struct LiveStatus {
    pub status: InvocationStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_retry_at_ms: Option<u64>,
}

#[derive(Default)]
pub struct LiveTable(Mutex<HashMap<InvocationId, LiveStatus>>);

impl LiveTable {
    pub fn set(&self, id: InvocationId, status: LiveStatus) {
        self.0.lock().expect("live lock").insert(id, status);
    }

    pub fn remove(&self, id: &InvocationId) {
        self.0.lock().expect("live lock").remove(id);
    }

    /// Keeps only the invocations `keep` selects.
    pub fn retain(&self, keep: impl Fn(&InvocationId) -> bool) {
        self.0.lock().expect("live lock").retain(|id, _| keep(id));
    }

    pub fn get(&self, id: &InvocationId) -> Option<LiveStatus> {
        self.0.lock().expect("live lock").get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("live lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
