//! The commands the core applies and what applying one produces: the writes of one partition
//! (one batch) and the actions that may run only once that batch is durable.

use crate::core::records::{
    InvocationRecord, InvocationStatus, InvokeMessage, OutboxMessage, PromiseMessage, PromiseRecord, TimerRecord,
};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::{CompletionResult, Entry, Output};

/// A change to the invocations, objects and promises of one partition, with every input it
/// needs (time, retention). Whoever applies it serialises it with every other command for the
/// same invocation or promise.
#[derive(Clone, Debug)]
pub enum Command {
    /// A message creating an invocation (a call or a send) arrived. `redelivery`: it may have
    /// been applied before (sent again after a crash or a lost answer).
    Invoke { message: InvokeMessage, redelivery: bool },
    /// Entry `index` of `target` gets `result` (a call's result, a timer, an awakeable).
    Complete {
        target: InvocationId,
        index: u32,
        result: CompletionResult,
        by: Completer,
    },
    /// An operation on a workflow's durable promise.
    Promise(PromiseMessage),
    /// The invocation ended with `output` (`record` is its latest record: its one writer holds it).
    Finish {
        id: InvocationId,
        record: Box<InvocationRecord>,
        status: InvocationStatus,
        output: Output,
        now_ms: u64,
        retention_ms: u64,
    },
}

impl Command {
    /// Deciding it reads committed state (the others carry all they need).
    pub fn reads_storage(&self) -> bool {
        match self {
            Command::Invoke { message, redelivery } => {
                *redelivery
                    || message.kind == crate::core::records::HandlerKind::Workflow
                    || message.idempotency_key.is_some()
            }
            Command::Complete { .. } | Command::Promise(_) => true,
            Command::Finish { .. } => false,
        }
    }
}

/// Who completes an entry: a message (a duplicate is dropped silently) or an outside caller
/// completing an awakeable (who must hear about a duplicate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completer {
    Message,
    Awakeable,
}

/// One write of a transition. Storage turns them into rows; all of a transition's writes go to
/// the partition the command belongs to and commit together.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// The invocation's record (storage keeps its index rows in step).
    Record(InvocationId, InvocationRecord),
    /// Journal entry `index` of an invocation.
    Entry(InvocationId, u32, Entry),
    /// Removes an ended exclusive invocation from its object's inbox.
    Dequeue(ObjectId, u64),
    /// A workflow's durable promise.
    Promise(ObjectId, String, PromiseRecord),
    /// A message to another invocation, staged as an outbox row of this partition and
    /// delivered once durable.
    Outbox(OutboxMessage),
    /// A state entry of an object: set to a value, or deleted (`None`).
    State(ObjectId, String, Option<Vec<u8>>),
    /// A durable timer due at the given time.
    Timer(u64, TimerRecord),
}

/// What runs after the transition's writes are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Entry `index` of `target` has `result`: tell its running attempt, or resume it.
    Wake {
        target: InvocationId,
        index: u32,
        result: CompletionResult,
    },
    /// The invocation ended with `output`: tell whoever waits for it.
    Finished(InvocationId, Output),
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A duplicate of a message already applied: dropped.
    Duplicate,
    /// The entry to complete does not exist (or is not completable by this completer).
    NotFound,
    /// The entry already has a result; a second one is refused.
    AlreadyCompleted,
}

/// The result of applying a command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    pub writes: Vec<Write>,
    /// The invocation this command creates. Its creation joins `writes` in the same batch;
    /// the owner of its object numbers its inbox row.
    pub create: Option<InvokeMessage>,
    pub actions: Vec<Action>,
    /// Set when the command took no effect (then `writes` and `actions` are empty).
    pub refused: Option<Refusal>,
}

impl Transition {
    pub fn refused(why: Refusal) -> Self {
        Self {
            refused: Some(why),
            ..Self::default()
        }
    }

    /// The messages this transition stages, in order.
    pub fn messages(&self) -> impl Iterator<Item = &OutboxMessage> {
        self.writes.iter().filter_map(|w| match w {
            Write::Outbox(m) => Some(m),
            _ => None,
        })
    }
}

/// A storage read the core needed failed; the command was not applied (retry it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("read failed: {0}")]
pub struct ReadFailed(pub String);

/// What the core may read of a partition's committed state. Production reads fjall; the
/// simulation reads its in-memory log.
pub trait PartitionRead {
    fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, ReadFailed>;
    fn journal_entry(&self, id: &InvocationId, index: u32) -> Result<Option<Entry>, ReadFailed>;
    fn promise(&self, object: &ObjectId, name: &str) -> Result<Option<PromiseRecord>, ReadFailed>;
}
