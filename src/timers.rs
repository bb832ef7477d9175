//! Durable timers: rows in the `timers` table ordered by due time per partition; only those
//! due within the next `WINDOW_MS` are held in memory, so millions of pending timers cost disk,
//! not memory. Firing a timer commits its effect together with the deletion of its row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::storage::{key_partition, now_ms, StorageError, Store, TimerRecord};

/// How far ahead timers are loaded into memory.
const WINDOW_MS: u64 = 30_000;
/// Longest sleep of the timer loop (new near timers also wake it).
const TICK_MS_MAX: u64 = 1_000;

#[derive(Default)]
struct Near {
    timers: BTreeMap<(u64, Vec<u8>), TimerRecord>,
    loaded_until_ms: u64,
}

#[derive(Default)]
pub struct TimerService {
    near: Mutex<Near>,
    wake: tokio::sync::Notify,
}

impl TimerService {
    /// Called after the timer's row is durable.
    pub fn register(&self, key: Vec<u8>, due_ms: u64, timer: TimerRecord) {
        let mut near = self.near.lock().expect("timers lock");
        if due_ms < near.loaded_until_ms {
            near.timers.insert((due_ms, key), timer);
            drop(near);
            self.wake.notify_one();
        }
    }

    /// Loads every timer of the partitions `owned` selects that is due within the window
    /// (re-loading one already held is harmless).
    pub fn load(&self, store: &Store, owned: &dyn Fn(u16) -> bool) -> Result<(), StorageError> {
        let until = now_ms() + WINDOW_MS;
        let rows = store.timers_due_before(until, owned)?;
        let mut near = self.near.lock().expect("timers lock");
        for (key, due, timer) in rows {
            near.timers.insert((due, key), timer);
        }
        near.loaded_until_ms = near.loaded_until_ms.max(until);
        Ok(())
    }

    /// Drops the timers of partitions this node no longer serves.
    pub fn forget(&self, gone: impl Fn(u16) -> bool) {
        self.near
            .lock()
            .expect("timers lock")
            .timers
            .retain(|(_, key), _| !gone(key_partition(key)));
    }

    pub fn pending_in_memory(&self) -> usize {
        self.near.lock().expect("timers lock").timers.len()
    }

    /// The timer loop: hands each due timer to `fire` (with its row's key, which `fire`
    /// deletes in the batch of the timer's effect), refills the window from `store`, sleeps
    /// until the next one.
    pub async fn run(self: Arc<Self>, store: Store, fire: impl Fn(Vec<u8>, TimerRecord) + 'static) {
        loop {
            let now = now_ms();
            let due: Vec<((u64, Vec<u8>), TimerRecord)> = {
                let mut near = self.near.lock().expect("timers lock");
                let later = near.timers.split_off(&(now + 1, Vec::new()));
                std::mem::replace(&mut near.timers, later).into_iter().collect()
            };
            for ((_, key), timer) in due {
                fire(key, timer);
            }
            let refill = self.near.lock().expect("timers lock").loaded_until_ms <= now + WINDOW_MS / 2;
            if refill {
                let (store, timers) = (store.clone(), self.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let gate = store.gate.clone();
                    if let Err(e) = timers.load(&store, &move |p| gate.owns(p)) {
                        tracing::error!(error = %e, "timers.load failed");
                    }
                })
                .await;
            }
            let next_due = self
                .near
                .lock()
                .expect("timers lock")
                .timers
                .keys()
                .next()
                .map(|(d, _)| *d);
            let wait_ms = next_due
                .map_or(TICK_MS_MAX, |d| d.saturating_sub(now_ms()))
                .min(TICK_MS_MAX);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
