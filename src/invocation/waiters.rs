//! Callers waiting for invocations' outputs (ingress calls, attach, idempotent duplicates).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::ids::InvocationId;
use crate::journal::Output;

#[derive(Default)]
pub struct Waiters(Mutex<HashMap<InvocationId, Vec<oneshot::Sender<Output>>>>);

impl Waiters {
    /// Subscribe *before* checking storage for a finished output, so none is missed.
    pub fn subscribe(&self, id: InvocationId) -> oneshot::Receiver<Output> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().expect("waiters lock").entry(id).or_default().push(tx);
        rx
    }

    /// Drops subscriptions whose receivers are gone (the output was found in storage, or the
    /// caller disconnected).
    pub fn prune(&self, id: InvocationId) {
        let mut map = self.0.lock().expect("waiters lock");
        if let Some(list) = map.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(&id);
            }
        }
    }

    /// Drops the subscriptions of invocations `gone` selects (their partition moved away):
    /// their callers see the channel close and wait at the new owner instead.
    pub fn release(&self, gone: &dyn Fn(&InvocationId) -> bool) {
        self.0.lock().expect("waiters lock").retain(|id, _| !gone(id));
    }

    pub fn notify(&self, id: InvocationId, output: &Output) {
        let list = self.0.lock().expect("waiters lock").remove(&id);
        for tx in list.into_iter().flatten() {
            let _ = tx.send(output.clone());
        }
    }
}
