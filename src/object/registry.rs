//! Maps each active object to its actor, starting actors on demand on a fixed set of
//! arbiters (threads), and retiring them when they passivate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::dev::SendError;
use actix::prelude::*;

use super::{ObjectActor, ObjectMsg};
use crate::ids::{stable_hash, ObjectId};
use crate::node::Node;
use crate::storage::StorageError;

/// Messages an object's mailbox holds before senders get `Overloaded`.
pub(super) const MAILBOX_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("inbox of {0} is full")]
    InboxFull(ObjectId),
    #[error("inbox of {0} holds too many bytes of queued input")]
    InboxBytesFull(ObjectId),
    #[error("mailbox of {0} is full")]
    MailboxFull(ObjectId),
    #[error("too many unfinished invocations on this node")]
    TooManyInvocations,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("object actor stopped before answering")]
    Stopped,
}

/// Shared between the registry and one actor.
#[derive(Default)]
pub struct ActorHandle {
    /// Messages sent to the actor and not yet handled: it may passivate only at zero.
    pub pending: AtomicUsize,
}

struct Slot {
    addr: Addr<ObjectActor>,
    handle: Arc<ActorHandle>,
}

pub struct ObjectRegistry {
    arbiters: Vec<ArbiterHandle>,
    actors: Mutex<HashMap<ObjectId, Slot>>,
}

impl ObjectRegistry {
    pub fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        Self {
            arbiters,
            actors: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `msg` to the object's actor, starting it if needed.
    pub fn send(&self, node: &Arc<Node>, object: &ObjectId, mut msg: ObjectMsg) -> Result<(), SubmitError> {
        for _ in 0..3 {
            let mut actors = self.actors.lock().expect("registry lock");
            let slot = actors.entry(object.clone()).or_insert_with(|| self.start(node, object));
            slot.handle.pending.fetch_add(1, Ordering::AcqRel);
            match slot.addr.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Full(_)) => {
                    slot.handle.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(SubmitError::MailboxFull(object.clone()));
                }
                Err(SendError::Closed(back)) => {
                    // The actor died (a panic is not supervised): forget it and start a new one.
                    actors.remove(object);
                    msg = back;
                }
            }
        }
        Err(SubmitError::Stopped)
    }

    fn start(&self, node: &Arc<Node>, object: &ObjectId) -> Slot {
        let handle = Arc::new(ActorHandle::default());
        let arbiter = &self.arbiters
            [(stable_hash(&[object.service.as_bytes(), object.key.as_bytes()]) % self.arbiters.len() as u64) as usize];
        let (node, object_owned, h) = (node.clone(), object.clone(), handle.clone());
        // The mailbox gets its capacity now, not when the actor starts on its arbiter: until
        // then actix's default (16) would refuse a burst of requests to a cold object.
        let (tx, rx) = actix::dev::channel::channel(MAILBOX_CAPACITY);
        arbiter.spawn_fn(move || {
            let ctx = actix::Context::with_receiver(rx);
            actix::spawn(ctx.into_future(ObjectActor::new(node, object_owned, h)));
        });
        Slot {
            addr: actix::Addr::new(tx),
            handle,
        }
    }

    /// Removes the actor if nothing is on its way to it. Called by the actor itself.
    pub fn try_passivate(&self, object: &ObjectId, handle: &Arc<ActorHandle>) -> bool {
        let mut actors = self.actors.lock().expect("registry lock");
        match actors.get(object) {
            Some(slot) if Arc::ptr_eq(&slot.handle, handle) && handle.pending.load(Ordering::Acquire) == 0 => {
                actors.remove(object);
                true
            }
            _ => false,
        }
    }

    /// Stops the actors of objects `gone` selects (their partition moved away); their running
    /// invocations are dropped mid-attempt and resume, by replay, at the new owner.
    pub fn evict(&self, gone: impl Fn(&ObjectId) -> bool) {
        let mut actors = self.actors.lock().expect("registry lock");
        actors.retain(|object, slot| {
            if !gone(object) {
                return true;
            }
            slot.addr.do_send(ObjectMsg::Evict);
            false
        });
    }

    pub fn active_count(&self) -> usize {
        self.actors.lock().expect("registry lock").len()
    }

    /// Active objects, for the admin API.
    pub fn active(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self.actors.lock().expect("registry lock").keys().cloned().collect();
        v.sort();
        v
    }

    pub fn arbiter(&self, n: usize) -> &ArbiterHandle {
        &self.arbiters[n % self.arbiters.len()]
    }
}

impl ObjectRegistry {
    /// Supervision: actix does not restart an actor that panicked (its mailbox just closes), so
    /// every `interval` replace dead actors with fresh ones, whose activation reloads the inbox
    /// and state from storage and resumes the interrupted invocation by replay.
    pub async fn supervise(node: Arc<Node>, interval: std::time::Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let mut actors = node.objects.actors.lock().expect("registry lock");
            let dead: Vec<ObjectId> = actors
                .iter()
                .filter(|(_, s)| !s.addr.connected())
                .map(|(o, _)| o.clone())
                .collect();
            for object in dead {
                tracing::error!(%object, "object.actor_died; restarting it from storage");
                let slot = node.objects.start(&node, &object);
                actors.insert(object, slot);
            }
        }
    }

    /// Starts the object's actor (its activation resumes its inbox) if it is not running.
    pub fn activate(&self, node: &Arc<Node>, object: &ObjectId) {
        let mut actors = self.actors.lock().expect("registry lock");
        actors.entry(object.clone()).or_insert_with(|| self.start(node, object));
    }
}
