//! Test support for the core: `Memory`, a partition's committed state in memory that applies
//! transitions exactly as storage does (the unit tests' fixture and the simulation's log).

use std::collections::BTreeMap;

use super::records::{HandlerKind, InvocationRecord, InvokeMessage, OutboxMessage, PromiseRecord, TimerRecord};
use super::transition::{PartitionRead, ReadFailed, Transition, Write};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::Entry;

#[derive(Clone, Default)]
pub struct Memory {
    pub invocations: BTreeMap<InvocationId, InvocationRecord>,
    pub journal: BTreeMap<(InvocationId, u32), Entry>,
    pub promises: BTreeMap<(ObjectId, String), PromiseRecord>,
    pub inbox: BTreeMap<(ObjectId, u64), InvocationId>,
    /// Outbox rows by sequence number (the order they were staged in).
    pub outbox: BTreeMap<u64, OutboxMessage>,
    pub next_outbox_seq: u64,
    pub state: BTreeMap<(ObjectId, String), Vec<u8>>,
    pub timers: Vec<(u64, TimerRecord)>,
}

impl Memory {
    /// Stores a created invocation: its record, its journal and (exclusive) its inbox row.
    pub fn insert(&mut self, (id, record, journal): (InvocationId, InvocationRecord, Vec<Entry>)) {
        if let Some(seq) = record.inbox_seq {
            self.inbox
                .insert((ObjectId::new(&record.service, &record.key), seq), id);
        }
        for (i, entry) in journal.into_iter().enumerate() {
            self.journal.insert((id, i as u32), entry);
        }
        self.invocations.insert(id, record);
    }

    /// Applies `t`'s writes (not its creation: the owner of the object numbers that); returns
    /// the outbox sequence numbers of the messages it staged, in order.
    pub fn apply(&mut self, t: &Transition) -> Vec<u64> {
        let mut staged = Vec::new();
        for write in &t.writes {
            match write.clone() {
                Write::Record(id, record) => {
                    self.invocations.insert(id, record);
                }
                Write::Entry(id, index, entry) => {
                    self.journal.insert((id, index), entry);
                }
                Write::Dequeue(object, seq) => {
                    self.inbox.remove(&(object, seq));
                }
                Write::Promise(object, name, record) => {
                    self.promises.insert((object, name), record);
                }
                Write::State(object, name, Some(value)) => {
                    self.state.insert((object, name), value);
                }
                Write::State(object, name, None) => {
                    self.state.remove(&(object, name));
                }
                Write::Timer(due_ms, timer) => self.timers.push((due_ms, timer)),
                Write::Outbox(message) => {
                    let seq = self.next_outbox_seq;
                    self.next_outbox_seq += 1;
                    self.outbox.insert(seq, message);
                    staged.push(seq);
                }
            }
        }
        staged
    }
}

impl PartitionRead for Memory {
    fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, ReadFailed> {
        Ok(self.invocations.get(id).cloned())
    }

    fn journal_entry(&self, id: &InvocationId, index: u32) -> Result<Option<Entry>, ReadFailed> {
        Ok(self.journal.get(&(*id, index)).cloned())
    }

    fn promise(&self, object: &ObjectId, name: &str) -> Result<Option<PromiseRecord>, ReadFailed> {
        Ok(self.promises.get(&(object.clone(), name.to_owned())).cloned())
    }
}

/// A message invoking handler `add` of a service of `kind` at `key`.
pub fn invoke(kind: HandlerKind, key: &str) -> InvokeMessage {
    let object = ObjectId::new("Counter", key);
    InvokeMessage {
        headers: Default::default(),
        id: InvocationId::new(object.partition_key()),
        service: "Counter".into(),
        handler: "add".into(),
        key: key.into(),
        kind,
        deployment_id: "dp_1".into(),
        input: b"1".to_vec(),
        caller: None,
        call_chain: Vec::new(),
        not_before_ms: None,
        idempotency_key: None,
    }
}
