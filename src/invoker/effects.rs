//! What accepting one SDK entry does: the writes that join the entry's batch (journal row,
//! state rows, outbox rows, timer rows) and the actions that follow its commit (deliver a
//! message, arm a timer, complete the entry at once).

use std::collections::BTreeSet;

use super::Attempt;
use crate::ids::{parse_awakeable_id, InvocationId, ObjectId};
use crate::journal::{CompletionResult, Entry, Failure, Output, StateEffect};
use crate::node::workflow_run_id;
use crate::storage::{
    encode, keys, now_ms, HandlerKind, InvokeMessage, OutboxMessage, PromiseMessage, PromiseOp, ServiceKind, Table,
    TimerRecord, WriteBatch,
};

/// An action taken once the batch is durable, in order.
pub(super) enum AfterCommit {
    Deliver(Vec<u8>, OutboxMessage),
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

fn bad_request(message: String) -> Failure {
    Failure { code: 400, message }
}

impl Attempt<'_> {
    /// Adds `entry`, accepted at `index`, to `pending`. `written` collects every state name this
    /// attempt set, so that `clear_all_state` also deletes names whose batches are not yet
    /// applied to the state cache.
    pub(super) fn plan(
        &self,
        index: u32,
        mut entry: Entry,
        effect: StateEffect,
        pending: &mut PendingCommit,
        written: &mut BTreeSet<String>,
    ) -> Result<(), Failure> {
        let batch = &mut pending.batch;
        let me = ObjectId::new(&self.record.service, &self.record.key);
        if self.record.kind.is_exclusive() {
            match &effect {
                StateEffect::None => {}
                StateEffect::Set(name, value) => {
                    written.insert(name.clone());
                    batch.put(Table::State, keys::state_entry(&me, name), value.clone());
                }
                StateEffect::Clear(name) => batch.delete(Table::State, keys::state_entry(&me, name)),
                StateEffect::ClearAll => {
                    let cached = self.state.map(|s| s.snapshot()).unwrap_or_default();
                    for name in cached.keys().chain(written.iter()) {
                        batch.delete(Table::State, keys::state_entry(&me, name));
                    }
                    written.clear();
                }
            }
        }
        let partition = self.id.partition();
        let promise_op = match &entry {
            Entry::GetPromise { name, .. } => Some((name.clone(), PromiseOp::Get)),
            Entry::PeekPromise { name, .. } => Some((name.clone(), PromiseOp::Peek)),
            Entry::CompletePromise {
                name, value, failure, ..
            } => Some((
                name.clone(),
                PromiseOp::Complete(CompletionResult {
                    value: value.clone(),
                    failure: failure.clone(),
                }),
            )),
            _ => None,
        };
        if let Some((name, op)) = promise_op {
            let is_workflow = self
                .node
                .schema
                .snapshot()
                .services
                .get(&self.record.service)
                .is_some_and(|s| s.kind == ServiceKind::Workflow);
            if !is_workflow {
                return Err(bad_request(format!(
                    "{} is not a workflow: durable promises exist only in workflows",
                    self.record.service
                )));
            }
            let message = PromiseMessage {
                object: me.clone(),
                name,
                op,
                reply_to: (self.id, index),
            };
            pending
                .after
                .push(self.stage(batch, partition, OutboxMessage::Promise(message)));
        }
        match &mut entry {
            Entry::Call {
                service,
                handler,
                key,
                value,
                invocation_id,
                result,
            } => match self.invoke_message(service, handler, key, value, Some((self.id, index)), None) {
                Ok(message) => {
                    *invocation_id = Some(message.id);
                    pending
                        .after
                        .push(self.stage(batch, partition, OutboxMessage::Invoke(message)));
                }
                Err(failure) => {
                    let completion = CompletionResult {
                        value: None,
                        failure: Some(failure),
                    };
                    *result = Some(completion.clone());
                    pending.after.push(AfterCommit::Completed(index, completion));
                }
            },
            Entry::Send {
                service,
                handler,
                key,
                value,
                delay_ms,
                invocation_id,
            } => {
                let not_before = match delay_ms.filter(|d| *d > 0) {
                    Some(d) => Some(crate::journal::due_at_ms(now_ms(), d)?),
                    None => None,
                };
                let message = self.invoke_message(service, handler, key, value, None, not_before)?;
                *invocation_id = Some(message.id);
                pending
                    .after
                    .push(self.stage(batch, partition, OutboxMessage::Invoke(message)));
            }
            Entry::Sleep { wake_up_at_ms, .. } => {
                let key = keys::timer(&self.id, *wake_up_at_ms, index);
                let timer = TimerRecord::Wake {
                    invocation: self.id,
                    index,
                };
                batch.put(Table::Timers, key.clone(), encode(&timer));
                pending.after.push(AfterCommit::ArmTimer(key, *wake_up_at_ms, timer));
            }
            Entry::CompleteAwakeable { id, value, failure } => {
                let (target, target_index) = parse_awakeable_id(id).map_err(|e| bad_request(e.to_string()))?;
                let result = CompletionResult {
                    value: value.clone(),
                    failure: failure.clone(),
                };
                pending.after.push(self.stage(
                    batch,
                    partition,
                    OutboxMessage::Complete {
                        target,
                        index: target_index,
                        result,
                    },
                ));
            }
            _ => {}
        }
        batch.put(Table::Journal, keys::journal_entry(&self.id, index), encode(&entry));
        pending.output = crate::journal::output_of(&entry);
        pending.effects.push(effect);
        pending.entries.push(entry);
        pending.last_index = index;
        Ok(())
    }

    /// Stages `message` as an outbox row of this batch; it is delivered after the commit.
    fn stage(&self, batch: &mut WriteBatch, partition: u16, message: OutboxMessage) -> AfterCommit {
        let (key, message) = self.node.stage(batch, partition, message);
        AfterCommit::Deliver(key, message)
    }

    /// The message that creates the callee of a `call` or `send`; the target must be known.
    fn invoke_message(
        &self,
        service: &str,
        handler: &str,
        key: &str,
        input: &[u8],
        caller: Option<(InvocationId, u32)>,
        not_before_ms: Option<u64>,
    ) -> Result<InvokeMessage, Failure> {
        let schema = self.node.schema.snapshot();
        let target = schema.services.get(service).ok_or_else(|| Failure {
            code: 404,
            message: format!(
                "service {service:?} not found (called from {}/{})",
                self.record.service, self.record.handler
            ),
        })?;
        let entry = target.handlers.get(handler).ok_or_else(|| Failure {
            code: 404,
            message: format!("handler {handler:?} not found in service {service:?}"),
        })?;
        let key = if target.kind == ServiceKind::Service {
            String::new()
        } else {
            key.to_owned()
        };
        let object = ObjectId::new(service, &key);
        let id = match entry.kind {
            HandlerKind::Workflow => workflow_run_id(&object),
            HandlerKind::Stateless => InvocationId::new(fastrand::u64(..)),
            _ => InvocationId::new(object.partition_key()),
        };
        // Only a call waits on its callee, so only calls extend the chain of held locks; a send
        // starts a fresh one (a delayed self-send is no cycle).
        let mut call_chain = Vec::new();
        if caller.is_some() {
            call_chain = self.record.call_chain.clone();
            if self.record.kind.is_exclusive() {
                call_chain.push(ObjectId::new(&self.record.service, &self.record.key));
            }
        }
        Ok(InvokeMessage {
            id,
            service: service.to_owned(),
            handler: handler.to_owned(),
            key,
            kind: entry.kind,
            deployment_id: target.deployment_id.clone(),
            input: input.to_vec(),
            caller,
            call_chain,
            not_before_ms,
            idempotency_key: None,
        })
    }
}
