//! Maps each active owner — a virtual object, or one stateless invocation — to its actor,
//! starting actors on demand and retiring them when they passivate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::dev::SendError;
use actix::prelude::*;

use super::host::OwnerHost;
use super::{ObjectActor, ObjectMsg};
use crate::ids::{partition_of, stable_hash, InvocationId, ObjectId};
use crate::storage::{HandlerKind, InvocationRecord, InvokeMessage, StorageError};

/// Who owns an invocation: every command for it goes through this owner's mailbox. A virtual
/// object (or workflow) owns all of its invocations; a stateless invocation owns itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Object(ObjectId),
    Stateless(InvocationId),
}

impl Owner {
    pub fn of(id: InvocationId, record: &InvocationRecord) -> Self {
        Self::for_kind(record.kind, id, &record.service, &record.key)
    }

    pub fn of_message(message: &InvokeMessage) -> Self {
        Self::for_kind(message.kind, message.id, &message.service, &message.key)
    }

    fn for_kind(kind: HandlerKind, id: InvocationId, service: &str, key: &str) -> Self {
        match kind {
            HandlerKind::Stateless => Owner::Stateless(id),
            _ => Owner::Object(ObjectId::new(service, key)),
        }
    }

    pub fn partition(&self) -> u16 {
        match self {
            Owner::Object(object) => partition_of(object.partition_key()),
            Owner::Stateless(id) => id.partition(),
        }
    }

    pub fn object(&self) -> Option<&ObjectId> {
        match self {
            Owner::Object(object) => Some(object),
            Owner::Stateless(_) => None,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Object(object) => object.fmt(f),
            Owner::Stateless(id) => id.fmt(f),
        }
    }
}

thread_local! {
    /// This thread may run owners started from it (an ingress worker or an actor thread).
    static OWNER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that runs the stateless owners it starts.
pub fn runs_owners_here() {
    OWNER_THREAD.set(true);
}

/// Messages an object's mailbox holds before senders get `Overloaded`.
pub(super) const MAILBOX_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("inbox of {0} is full")]
    InboxFull(Owner),
    #[error("inbox of {0} holds too many bytes of queued input")]
    InboxBytesFull(Owner),
    #[error("mailbox of {0} is full")]
    MailboxFull(Owner),
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
    actors: Mutex<HashMap<Owner, Slot>>,
}

impl ObjectRegistry {
    pub fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        Self {
            arbiters,
            actors: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `msg` to the owner's actor, starting it if needed.
    pub fn send(&self, node: &Arc<dyn OwnerHost>, owner: &Owner, mut msg: ObjectMsg) -> Result<(), SubmitError> {
        for _ in 0..3 {
            let mut actors = self.actors.lock().expect("registry lock");
            let slot = actors.entry(owner.clone()).or_insert_with(|| self.start(node, owner));
            slot.handle.pending.fetch_add(1, Ordering::AcqRel);
            match slot.addr.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Full(_)) => {
                    slot.handle.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(SubmitError::MailboxFull(owner.clone()));
                }
                Err(SendError::Closed(back)) => {
                    // The actor died (a panic is not supervised): forget it and start a new one.
                    actors.remove(owner);
                    msg = back;
                }
            }
        }
        Err(SubmitError::Stopped)
    }

    fn start(&self, node: &Arc<dyn OwnerHost>, owner: &Owner) -> Slot {
        let handle = Arc::new(ActorHandle::default());
        let arbiter = match owner {
            // An object lives on one thread, chosen by its key.
            Owner::Object(object) => self.arbiters[(stable_hash(&[object.service.as_bytes(), object.key.as_bytes()])
                % self.arbiters.len() as u64) as usize]
                .clone(),
            // A stateless invocation runs where it was submitted (no thread hop) if that is an
            // ingress worker or an actor thread; from anywhere else (recovery, timers on the
            // main thread), on an actor thread chosen by its id.
            Owner::Stateless(id) => actix::Arbiter::try_current()
                .filter(|_| OWNER_THREAD.get())
                .unwrap_or_else(|| self.arbiters[(id.partition_key() % self.arbiters.len() as u64) as usize].clone()),
        };
        let (node, owner_owned, h) = (node.clone(), owner.clone(), handle.clone());
        // The mailbox gets its capacity now, not when the actor starts on its arbiter: until
        // then actix's default (16) would refuse a burst of requests to a cold object.
        let (tx, rx) = actix::dev::channel::channel(MAILBOX_CAPACITY);
        arbiter.spawn_fn(move || {
            let ctx = actix::Context::with_receiver(rx);
            actix::spawn(ctx.into_future(ObjectActor::new(node, owner_owned, h)));
        });
        Slot {
            addr: actix::Addr::new(tx),
            handle,
        }
    }

    /// Removes the actor if nothing is on its way to it. Called by the actor itself.
    pub fn try_passivate(&self, owner: &Owner, handle: &Arc<ActorHandle>) -> bool {
        let mut actors = self.actors.lock().expect("registry lock");
        match actors.get(owner) {
            Some(slot) if Arc::ptr_eq(&slot.handle, handle) && handle.pending.load(Ordering::Acquire) == 0 => {
                actors.remove(owner);
                true
            }
            _ => false,
        }
    }

    /// Stops the actors of owners whose partition `gone` selects (it moved away); their running
    /// invocations are dropped mid-attempt and resume, by replay, at the new owner.
    pub fn evict(&self, gone: impl Fn(u16) -> bool) {
        let mut actors = self.actors.lock().expect("registry lock");
        actors.retain(|owner, slot| {
            if !gone(owner.partition()) {
                return true;
            }
            // Counted like every message (the actor counts it down when it handles it).
            slot.handle.pending.fetch_add(1, Ordering::AcqRel);
            slot.addr.do_send(ObjectMsg::Evict);
            false
        });
    }

    /// Active objects (stateless invocations are not objects).
    pub fn active_count(&self) -> usize {
        self.actors
            .lock()
            .expect("registry lock")
            .keys()
            .filter(|o| o.object().is_some())
            .count()
    }

    /// Active objects, for the admin API.
    pub fn active(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self
            .actors
            .lock()
            .expect("registry lock")
            .keys()
            .filter_map(|o| o.object().cloned())
            .collect();
        v.sort();
        v
    }
}

impl ObjectRegistry {
    /// Supervision: actix does not restart an actor that panicked (its mailbox just closes), so
    /// every `interval` replace dead actors with fresh ones, whose activation reloads the inbox
    /// and state from storage and resumes the interrupted invocation by replay.
    pub async fn supervise(node: Arc<dyn OwnerHost>, interval: std::time::Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let mut actors = node.owners().actors.lock().expect("registry lock");
            let dead: Vec<Owner> = actors
                .iter()
                .filter(|(_, s)| !s.addr.connected())
                .map(|(o, _)| o.clone())
                .collect();
            for owner in dead.iter() {
                tracing::error!(%owner, "object.actor_died; restarting it from storage");
                let slot = node.owners().start(&node, owner);
                actors.insert(owner.clone(), slot);
            }
            drop(actors);
            for owner in dead {
                // Its activation reloads the inbox; what it held besides (shared and stateless
                // invocations, running or suspended) is recovered from the unfinished index.
                let node = node.clone();
                actix_rt::spawn(async move { node.owners().recover_held(&node, owner).await });
            }
        }
    }

    /// Sends `Recover` for every unfinished invocation of `owner` that is not exclusive (those
    /// resume through the inbox), reading only the unfinished index of its partition.
    async fn recover_held(&self, node: &Arc<dyn OwnerHost>, owner: Owner) {
        let partition = owner.partition();
        let unfinished = crate::storage::blocking(node.store(), move |store| {
            store.unfinished_invocations(&|p| p == partition)
        })
        .await;
        let unfinished = match unfinished {
            Ok(unfinished) => unfinished,
            Err(e) => return tracing::error!(%owner, error = %e, "cannot recover a restarted owner"),
        };
        for (id, record) in unfinished {
            let resumable = !record.kind.is_exclusive() && record.status != crate::storage::InvocationStatus::Scheduled;
            if resumable && Owner::of(id, &record) == owner {
                if let Err(e) = self.send(node, &owner, ObjectMsg::Recover(id)) {
                    tracing::error!(invocation_id = %id, error = %e, "cannot recover invocation");
                }
            }
        }
    }

    /// Starts the object's actor (its activation resumes its inbox) if it is not running.
    pub fn activate(&self, node: &Arc<dyn OwnerHost>, object: &ObjectId) {
        let owner = Owner::Object(object.clone());
        let mut actors = self.actors.lock().expect("registry lock");
        actors.entry(owner.clone()).or_insert_with(|| self.start(node, &owner));
    }
}
