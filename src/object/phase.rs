//! Where an invocation an owner has taken up stands, and the owner's rules that read it: pure
//! functions, so the decisions that keep a command in step with the invocation's progress are
//! tables, not timing.

use tokio::sync::mpsc;

use crate::invocation::Invocation;
use crate::invoker::AttemptSignal;

/// Where an invocation this actor has taken up stands.
pub(super) enum Phase {
    /// Its creation batch is on its way to disk; it runs once that lands (shared, stateless).
    Creating(Invocation),
    /// Its journal is being read, or what follows its attempt is being written.
    Starting,
    /// An attempt runs; signals reach it through this channel.
    Running(mpsc::Sender<AttemptSignal>),
    /// Waiting out its back-off; a timer of this actor starts the next attempt.
    BackingOff(Invocation),
    /// Waiting for one of the entries in `record.waiting_on` to be completed.
    Suspended(Invocation),
}

/// What a durable completion of entry `index` — or a cancel (`None`) — does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// Tell the running attempt (it sends the COMPLETION down).
    Signal,
    /// Start a new attempt: it was suspended on this entry (or a cancel must be seen).
    Resume,
    /// Nothing now: its next attempt reads the journal (backing off, queued, starting), or it
    /// waits on other entries.
    Nothing,
}

pub(super) fn wake(phase: Option<&Phase>, index: Option<u32>) -> Wake {
    match (phase, index) {
        (Some(Phase::Running(_)), Some(_)) => Wake::Signal,
        (Some(Phase::Suspended(_)), None) => Wake::Resume,
        (Some(Phase::Suspended(inv)), Some(i)) if inv.record.waiting_on.contains(&i) => Wake::Resume,
        _ => Wake::Nothing,
    }
}

/// Who applies a cancel or kill.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ControlBy {
    /// The running attempt, in its own commit order (it answers `Finishing` once its output is
    /// submitted).
    Attempt,
    /// The owner, from the copy it holds (the newest: the owner wrote it, or it is not on disk).
    Owner,
    /// The owner, from storage, read in the owner's order.
    OwnerFromStorage,
}

pub(super) fn control_by(phase: Option<&Phase>, queued_copy: bool) -> ControlBy {
    match phase {
        Some(Phase::Running(_)) => ControlBy::Attempt,
        Some(Phase::BackingOff(_) | Phase::Suspended(_) | Phase::Creating(_)) => ControlBy::Owner,
        Some(Phase::Starting) | None if queued_copy => ControlBy::Owner,
        Some(Phase::Starting) | None => ControlBy::OwnerFromStorage,
    }
}

/// Whether taking up `loaded` must read it from storage first: when there is no copy, or when
/// completions may have landed in its journal since the copy was read. An unwritten
/// invocation has nothing on disk to read.
pub(super) fn needs_read(loaded: Option<&Invocation>) -> bool {
    match loaded {
        None => true,
        Some(inv) => !inv.unwritten && inv.awaits_completions(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InvocationId;
    use crate::journal::Entry;
    use crate::storage::{HandlerKind, InvokeMessage};

    fn invocation(waiting_on: Vec<u32>, journal: Vec<Entry>, unwritten: bool) -> Invocation {
        let message = InvokeMessage {
            headers: Default::default(),
            id: InvocationId::from_parts(1, 1),
            service: "Counter".into(),
            handler: "add".into(),
            key: "k".into(),
            kind: HandlerKind::Exclusive,
            deployment_id: "dp".into(),
            input: b"1".to_vec(),
            caller: None,
            call_chain: Vec::new(),
            not_before_ms: None,
            idempotency_key: None,
        };
        let mut inv = message.into_invocation();
        inv.record.waiting_on = waiting_on;
        inv.journal.extend(journal);
        inv.unwritten = unwritten;
        inv
    }

    fn running() -> Phase {
        Phase::Running(mpsc::channel(1).0)
    }

    fn suspended_on(entries: Vec<u32>) -> Phase {
        Phase::Suspended(invocation(entries, vec![], false))
    }

    #[test]
    fn wake_table() {
        // (phase, completed entry or a cancel) → what happens
        let cases: Vec<(Option<Phase>, Option<u32>, Wake)> = vec![
            (Some(running()), Some(2), Wake::Signal),
            (Some(suspended_on(vec![2, 5])), Some(2), Wake::Resume),
            (Some(suspended_on(vec![5])), Some(2), Wake::Nothing),
            (Some(suspended_on(vec![5])), None, Wake::Resume),
            (
                Some(Phase::BackingOff(invocation(vec![], vec![], false))),
                Some(2),
                Wake::Nothing,
            ),
            (Some(Phase::Starting), Some(2), Wake::Nothing),
            // A cancel of a running attempt goes to it as a control, not as a wake.
            (Some(running()), None, Wake::Nothing),
            (None, Some(2), Wake::Nothing),
        ];
        for (n, (phase, index, expected)) in cases.into_iter().enumerate() {
            assert_eq!(wake(phase.as_ref(), index), expected, "case {n}");
        }
    }

    #[test]
    fn control_table() {
        // (phase, a queued copy in memory) → who applies a cancel or kill
        let cases: Vec<(Option<Phase>, bool, ControlBy)> = vec![
            (Some(running()), false, ControlBy::Attempt),
            (Some(suspended_on(vec![1])), false, ControlBy::Owner),
            (
                Some(Phase::BackingOff(invocation(vec![], vec![], false))),
                false,
                ControlBy::Owner,
            ),
            (
                Some(Phase::Creating(invocation(vec![], vec![], false))),
                false,
                ControlBy::Owner,
            ),
            (None, true, ControlBy::Owner),
            (None, false, ControlBy::OwnerFromStorage),
        ];
        for (n, (phase, queued, expected)) in cases.into_iter().enumerate() {
            assert_eq!(control_by(phase.as_ref(), queued), expected, "case {n}");
        }
    }

    #[test]
    fn needs_read_table() {
        let call = Entry::Call {
            idempotency_key: None,
            headers: Default::default(),
            service: "S".into(),
            handler: "h".into(),
            key: String::new(),
            value: vec![],
            invocation_id: None,
            result: None,
        };
        // (copy held, unwritten, journal awaits a completion) → read storage first
        for (copy, unwritten, awaiting, expected) in [
            (false, false, false, true),
            (true, false, false, false),
            (true, false, true, true),
            (true, true, true, false),
        ] {
            let journal = if awaiting { vec![call.clone()] } else { vec![] };
            let inv = copy.then(|| invocation(vec![], journal, unwritten));
            assert_eq!(needs_read(inv.as_ref()), expected, "{copy} {unwritten} {awaiting}");
        }
    }
}
