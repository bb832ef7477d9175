//! The fake invoker: the simulation's handlers as pure steps over their journal. Each step
//! either journals entries (and the messages they send), ends the invocation, or waits.

use crate::core::records::{HandlerKind, InvocationRecord, InvokeMessage, OutboxMessage, PromiseMessage, PromiseOp};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::{CompletionResult, Entry, Output};

/// Services of the simulated application.
pub const CALLER: &str = "Caller"; // stateless: calls Counter/{key}/add, returns its answer
pub const SENDER: &str = "Sender"; // stateless: sends Counter/{key}/add, returns at once
pub const COUNTER: &str = "Counter"; // exclusive `add`: reads its count, then writes count + 1
pub const WAITER: &str = "Waiter"; // stateless: waits for promise `p` of workflow Flow/{key}
pub const RESOLVER: &str = "Resolver"; // stateless: completes promise `p` of Flow/{key}
pub const FLOW: &str = "Flow";

/// What one step of a handler does.
#[derive(Debug)]
pub enum Step {
    /// Journal `entry` at the next index, staging `message` with it.
    Journal(Entry, Option<Box<OutboxMessage>>),
    /// Journal the output entry and end with it; `count`: the counter value to store with it.
    Finish(Output, Option<u64>),
    /// Waiting for a completion.
    Wait,
}

/// The next step of invocation `id` with `journal`; `count` is its object's committed counter;
/// `new_id` names the invocation a call or send creates (the runtime assigns it, journaled).
pub fn next(id: InvocationId, record: &InvocationRecord, journal: &[Entry], count: u64, new_id: InvocationId) -> Step {
    let key = record.key.clone();
    let input = match journal.first() {
        Some(Entry::Input { value }) => String::from_utf8_lossy(value).into_owned(),
        _ => String::new(),
    };
    let add = |caller: Option<(InvocationId, u32)>| {
        OutboxMessage::Invoke(InvokeMessage {
            headers: Default::default(),
            id: new_id,
            service: COUNTER.into(),
            handler: "add".into(),
            key: input.clone(),
            kind: HandlerKind::Exclusive,
            deployment_id: "dp_sim".into(),
            input: Vec::new(),
            caller,
            call_chain: Vec::new(),
            not_before_ms: None,
            idempotency_key: None,
        })
    };
    let promise = |op: PromiseOp| {
        OutboxMessage::Promise(PromiseMessage {
            object: ObjectId::new(FLOW, &input),
            name: "p".into(),
            op,
            reply_to: (id, 1),
        })
    };
    let answered = |entry: &Entry| entry.result().cloned();
    match (record.service.as_str(), journal.len()) {
        (CALLER, 1) => Step::Journal(call_entry(&input, new_id), Some(Box::new(add(Some((id, 1)))))),
        (CALLER, _) => match answered(&journal[1]) {
            Some(result) => Step::Finish(output_of(result), None),
            None => Step::Wait,
        },
        (SENDER, 1) => Step::Journal(send_entry(&input, new_id), Some(Box::new(add(None)))),
        (SENDER, _) => Step::Finish(Output::Value(Vec::new()), None),
        (COUNTER, 1) => Step::Journal(
            Entry::Run {
                name: "read".into(),
                value: Some(count.to_be_bytes().to_vec()),
                failure: None,
            },
            None,
        ),
        // The value read in step one, not the current one: two adds that overlapped would
        // both write the same count, and the test would see an add lost.
        (COUNTER, _) => {
            let read = match &journal[1] {
                Entry::Run { value: Some(v), .. } => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                other => panic!("unexpected {other:?} in {key}"),
            };
            Step::Finish(Output::Value((read + 1).to_be_bytes().to_vec()), Some(read + 1))
        }
        (WAITER, 1) => Step::Journal(
            Entry::GetPromise {
                name: "p".into(),
                result: None,
            },
            Some(Box::new(promise(PromiseOp::Get))),
        ),
        (RESOLVER, 1) => {
            let value = CompletionResult {
                value: Some(b"resolved".to_vec()),
                failure: None,
            };
            let entry = Entry::CompletePromise {
                name: "p".into(),
                value: value.value.clone(),
                failure: None,
                result: None,
            };
            Step::Journal(entry, Some(Box::new(promise(PromiseOp::Complete(value)))))
        }
        (WAITER | RESOLVER, _) => match answered(&journal[1]) {
            Some(result) => Step::Finish(output_of(result), None),
            None => Step::Wait,
        },
        (other, _) => panic!("no simulated handler for {other}"),
    }
}

fn output_of(result: CompletionResult) -> Output {
    match result.failure {
        Some(failure) => Output::Failure(failure),
        None => Output::Value(result.value.unwrap_or_default()),
    }
}

fn call_entry(key: &str, callee: InvocationId) -> Entry {
    Entry::Call {
        idempotency_key: None,
        headers: Default::default(),
        service: COUNTER.into(),
        handler: "add".into(),
        key: key.into(),
        value: Vec::new(),
        invocation_id: Some(callee),
        result: None,
    }
}

fn send_entry(key: &str, callee: InvocationId) -> Entry {
    Entry::Send {
        idempotency_key: None,
        headers: Default::default(),
        service: COUNTER.into(),
        handler: "add".into(),
        key: key.into(),
        value: Vec::new(),
        delay_ms: None,
        invocation_id: Some(callee),
    }
}
