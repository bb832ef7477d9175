//! Carrying out what the core's planner (`core::entry`) decides for one SDK entry: its writes
//! join the entry's batch (journal, state, outbox and timer rows) and its actions follow the
//! commit (deliver a message, arm a timer, complete the entry at once).

use std::collections::BTreeSet;

use super::Attempt;
use crate::core::entry::{After, EntryInputs};
use crate::journal::{CompletionResult, Entry, Failure, Output, StateEffect};
use crate::storage::{encode, keys, now_ms, OutboxMessage, Table, TimerRecord, WriteBatch};

/// An action taken once the batch is durable, in order.
pub(super) enum AfterCommit {
    Deliver(Vec<u8>, Box<OutboxMessage>),
    ArmTimer(Vec<u8>, u64, TimerRecord),
    /// The entry was completed in its own batch (e.g. a call to an unknown service).
    Completed(u32, CompletionResult),
}

/// Entries on their way to disk, with everything they write and trigger.
pub(super) struct PendingCommit {
    pub first_index: u32,
    pub last_index: u32,
    pub entries: Vec<Entry>,
    pub effects: Vec<StateEffect>,
    pub output: Option<Output>,
    pub batch: WriteBatch,
    pub after: Vec<AfterCommit>,
    /// Answered once this commit is durable (a cancel recorded by the attempt).
    pub on_durable: Option<tokio::sync::oneshot::Sender<super::ControlAnswer>>,
}

impl PendingCommit {
    pub fn empty(first_index: u32) -> Self {
        Self {
            first_index,
            last_index: first_index,
            entries: Vec::new(),
            effects: Vec::new(),
            output: None,
            batch: WriteBatch::new(),
            after: Vec::new(),
            on_durable: None,
        }
    }
}

impl Attempt<'_> {
    /// Adds `entry`, accepted at `index`, to `pending`, as the core's planner decides from this
    /// attempt's inputs: the time, the schema, fresh id bits, and (for a clear-all) the state
    /// names the attempt started with. `written` collects every state name this attempt set.
    pub(super) fn plan(
        &self,
        index: u32,
        entry: Entry,
        effect: StateEffect,
        pending: &mut PendingCommit,
        written: &mut BTreeSet<String>,
    ) -> Result<(), Failure> {
        let catalog = self.host.catalog();
        let known_state = match (&effect, self.state) {
            (StateEffect::ClearAll, Some(state)) => state.snapshot().keys().cloned().collect(),
            _ => Vec::new(),
        };
        let inputs = EntryInputs {
            id: self.id,
            record: self.record,
            index,
            now_ms: now_ms(),
            catalog: &*catalog,
            fresh_id_bits: fastrand::u64(..),
            known_state,
        };
        let planned = crate::core::entry::plan(&inputs, entry, &effect, written)?;
        let partition = self.id.partition();
        let after = &mut pending.after;
        let host = &self.host;
        pending.batch.put_writes(planned.writes, |batch, message| {
            let key = host.outbox_key(partition);
            batch.put(Table::Outbox, key.clone(), encode(&message));
            after.push(AfterCommit::Deliver(key, Box::new(message)));
        });
        for action in planned.after {
            after.push(match action {
                After::ArmTimer { due_ms, timer } => {
                    AfterCommit::ArmTimer(keys::timer_row(due_ms, &timer), due_ms, timer)
                }
                After::Completed(index, result) => AfterCommit::Completed(index, result),
            });
        }
        pending.output = crate::journal::output_of(&planned.entry);
        pending.effects.push(effect);
        pending.entries.push(planned.entry);
        pending.last_index = index;
        Ok(())
    }
}
