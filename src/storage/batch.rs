//! A batch: the writes of one step that become durable together (entry, state, inbox,
//! record and its index rows, outbox rows), in the tables a batch can write.

use super::gate::key_partition;
use super::{keys, InvocationRecord, OutboxMessage};
use crate::ids::InvocationId;

/// Tables a batch can write. The order of variants is not stored anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Invocations,
    Journal,
    State,
    Inbox,
    Idempotency,
    Deployments,
    Outbox,
    Timers,
    Promises,
    /// Cluster metadata (membership); not partitioned.
    Cluster,
    /// Index: one row per unfinished invocation (derived from `Invocations`).
    Unfinished,
    /// Index: one row per finished invocation with a retention deadline, by deadline.
    Expiry,
    /// The metadata Raft group's log, vote and state machine (`metadata/`); not partitioned.
    Raft,
}

impl Table {
    /// Every partitioned table, in the order a partition's rows are moved. A position here is
    /// the table's index in a hand-off's `ImportRequest` (node-to-node wire format): append new
    /// tables, never reorder. The indexes are moved like any table, so a partition arrives with
    /// them in step with its records.
    pub const PARTITIONED: [Table; 10] = [
        Table::Invocations,
        Table::Journal,
        Table::State,
        Table::Inbox,
        Table::Idempotency,
        Table::Outbox,
        Table::Timers,
        Table::Promises,
        Table::Unfinished,
        Table::Expiry,
    ];

    /// Keys start with the partition id (all tables but metadata).
    pub fn is_partitioned(self) -> bool {
        !matches!(self, Table::Deployments | Table::Cluster | Table::Raft)
    }
}

#[derive(Clone)]
pub(super) enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

impl Op {
    /// The table and key it writes.
    pub(super) fn target(&self) -> (Table, &[u8]) {
        match self {
            Op::Put(t, k, _) | Op::Delete(t, k) => (*t, k),
        }
    }

    /// The partition it writes, if its table is partitioned.
    pub(super) fn partition(&self) -> Option<u16> {
        let (table, key) = self.target();
        table.is_partitioned().then(|| key_partition(key))
    }
}

/// Writes that must become durable together (one step: entry + state + inbox + ...).
#[derive(Default, Clone)]
pub struct WriteBatch {
    pub(super) ops: Vec<Op>,
    /// Partition moves write partitions this node does not serve; nothing else may.
    pub(super) bypass_gate: bool,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    /// Writes an invocation's record. The one way a record is written, so that the indexes
    /// derived from it (`unfinished`, `expiry`) stay in step with it, in the same batch.
    /// Within a batch (and a log group) the last write of a key wins, so an unfinished put
    /// followed by a finished one leaves no `unfinished` row.
    pub fn put_invocation(&mut self, id: &InvocationId, record: &InvocationRecord) {
        self.put(Table::Invocations, keys::invocation(id), super::encode(record));
        let (unfinished, expiry) = super::indexes::index_rows(id, record);
        match unfinished {
            Some(key) => self.put(Table::Unfinished, key, Vec::new()),
            None => self.delete(Table::Unfinished, keys::unfinished(id)),
        }
        // A finished record is written once; should one be rewritten with another deadline,
        // the sweep drops the stale `expiry` row (it checks every row against its record).
        if let Some(key) = expiry {
            self.put(Table::Expiry, key, Vec::new());
        }
    }

    /// Adds the writes of a core transition, except its messages: `stage` adds each of those
    /// (as an outbox row) in order.
    pub fn put_writes(&mut self, writes: Vec<crate::core::Write>, mut stage: impl FnMut(&mut Self, OutboxMessage)) {
        use crate::core::Write;
        for write in writes {
            match write {
                Write::Record(id, record) => self.put_invocation(&id, &record),
                Write::Entry(id, index, entry) => {
                    self.put(Table::Journal, keys::journal_entry(&id, index), super::encode(&entry))
                }
                Write::Dequeue(object, seq) => self.delete(Table::Inbox, keys::inbox_entry(&object, seq)),
                Write::Promise(object, name, record) => {
                    self.put(Table::Promises, keys::promise(&object, &name), super::encode(&record))
                }
                Write::Outbox(message) => stage(self, message),
                Write::State(object, name, Some(value)) => {
                    self.put(Table::State, keys::state_entry(&object, &name), value)
                }
                Write::State(object, name, None) => self.delete(Table::State, keys::state_entry(&object, &name)),
                Write::Timer(due_ms, timer) => {
                    self.put(Table::Timers, keys::timer_row(due_ms, &timer), super::encode(&timer))
                }
            }
        }
    }

    /// Deletes a finished invocation's record (retention over), with its index rows.
    pub fn delete_invocation(&mut self, id: &InvocationId, record: &InvocationRecord) {
        self.delete(Table::Invocations, keys::invocation(id));
        self.delete(Table::Unfinished, keys::unfinished(id));
        if let Some(at) = record.expires_at_ms {
            self.delete(Table::Expiry, keys::expiry(id, at));
        }
    }

    /// A batch of a partition move (import or clean-up): passes the partition gate.
    pub fn for_partition_move() -> Self {
        Self {
            ops: Vec::new(),
            bypass_gate: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// This batch split into one per partition written (unpartitioned writes go with the
    /// first), in key order of partitions; each may be committed on its own.
    pub fn into_partitions(self) -> Vec<WriteBatch> {
        let mut by_partition: std::collections::BTreeMap<Option<u16>, WriteBatch> = Default::default();
        for op in self.ops {
            let part = by_partition.entry(op.partition()).or_insert_with(|| WriteBatch {
                ops: Vec::new(),
                bypass_gate: self.bypass_gate,
            });
            part.ops.push(op);
        }
        by_partition.into_values().collect()
    }

    /// Moves every write of `other` into this batch.
    pub fn append(&mut self, mut other: WriteBatch) {
        self.ops.append(&mut other.ops);
    }
}
