//! The records an invocation's attempts leave: running, backing off after a retryable failure
//! (or giving up), suspended while it waits for a completion, activated when its delay is
//! over. Each is a pure function of the record, the journal and the inputs (time, delay,
//! limit); the runtime writes what it returns.

use super::records::{InvocationRecord, InvocationStatus};
use crate::journal::{codes, Entry, Failure};

/// The record while attempt `record.attempts` runs.
pub fn running(record: &InvocationRecord, now_ms: u64) -> InvocationRecord {
    let mut running = record.clone();
    running.status = InvocationStatus::Running;
    running.waiting_on.clear();
    running.modified_at_ms = now_ms;
    running
}

/// What a retryable failure of attempt `record.attempts` leads to.
#[derive(Debug, PartialEq)]
pub enum Retry {
    /// Try again at `next_retry_at_ms` (the record says so).
    BackOff(Box<InvocationRecord>),
    /// The attempts are used up: the invocation fails with this.
    GiveUp(Failure),
}

/// `max_attempts` 0 means retry for ever.
pub fn failed(record: &InvocationRecord, error: String, now_ms: u64, delay_ms: u64, max_attempts: u32) -> Retry {
    if max_attempts != 0 && record.attempts >= max_attempts {
        return Retry::GiveUp(Failure {
            code: codes::RETRIES_EXHAUSTED,
            // The first line: a stack trace belongs in `lastError`, not in the caller's failure.
            message: format!(
                "gave up after {} attempts; last error: {}",
                record.attempts,
                error.lines().next().unwrap_or_default()
            ),
        });
    }
    let mut backing_off = record.clone();
    backing_off.status = InvocationStatus::BackingOff;
    backing_off.last_error = Some(error);
    backing_off.next_retry_at_ms = Some(now_ms.saturating_add(delay_ms));
    backing_off.modified_at_ms = now_ms;
    Retry::BackOff(Box::new(backing_off))
}

/// Whether an invocation waiting on `waiting_on` (or on nothing) may run again: one of those
/// entries has its result, or a cancel it has not seen yet is pending.
pub fn resumable(record: &InvocationRecord, journal: &[Entry]) -> bool {
    record.waiting_on.is_empty()
        || record
            .waiting_on
            .iter()
            .any(|i| journal.get(*i as usize).and_then(|e| e.result()).is_some())
        || cancel_pending(record, journal)
}

/// Cancellation was requested and the handler has not observed it yet.
pub fn cancel_pending(record: &InvocationRecord, journal: &[Entry]) -> bool {
    record.cancel_requested && !journal.iter().any(|e| matches!(e, Entry::Cancelled))
}

/// The SDK suspended waiting on `waiting_on`: the suspended record, or `None` when it can go
/// on at once (a completion or cancel landed meanwhile: start a new attempt).
pub fn suspended(
    record: &InvocationRecord,
    journal: &[Entry],
    waiting_on: Vec<u32>,
    now_ms: u64,
) -> Option<InvocationRecord> {
    let mut suspended = record.clone();
    suspended.waiting_on = waiting_on;
    if resumable(&suspended, journal) {
        return None;
    }
    suspended.status = InvocationStatus::Suspended;
    suspended.modified_at_ms = now_ms;
    Some(suspended)
}

/// A scheduled invocation whose time has come becomes pending; any other is left alone
/// (`None`: the timer was stale — it already ran, or ended).
pub fn activated(record: &InvocationRecord) -> Option<InvocationRecord> {
    if record.status != InvocationStatus::Scheduled {
        return None;
    }
    let mut pending = record.clone();
    pending.status = InvocationStatus::Pending;
    pending.not_before_ms = None;
    Some(pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::records::HandlerKind;
    use crate::core::testing::invoke;
    use crate::journal::CompletionResult;

    fn record(attempts: u32) -> InvocationRecord {
        let (_, mut record, _) = invoke(HandlerKind::Exclusive, "k").into_invocation_at(5);
        record.attempts = attempts;
        record
    }

    #[test]
    fn retry_table() {
        // (attempts so far, max attempts) → gives up?
        for (attempts, max, gives_up) in [
            (1, 3, false),
            (2, 3, false),
            (3, 3, true),
            (9, 3, true),
            (500, 0, false),
        ] {
            match failed(&record(attempts), "boom".into(), 1_000, 250, max) {
                Retry::GiveUp(f) => {
                    assert!(gives_up, "{attempts}/{max}");
                    assert_eq!(f.code, codes::RETRIES_EXHAUSTED);
                    assert!(f.message.contains("boom"));
                }
                Retry::BackOff(r) => {
                    assert!(!gives_up, "{attempts}/{max}");
                    assert_eq!(
                        (r.status, r.next_retry_at_ms, r.last_error.as_deref()),
                        (InvocationStatus::BackingOff, Some(1_250), Some("boom"))
                    );
                }
            }
        }
    }

    #[test]
    fn suspension_table() {
        let call = |result: Option<CompletionResult>| Entry::Call {
            idempotency_key: None,
            headers: Default::default(),
            service: "S".into(),
            handler: "h".into(),
            key: String::new(),
            value: vec![],
            invocation_id: None,
            result,
        };
        let input = Entry::Input { value: vec![] };
        let done = Some(CompletionResult::default());
        // (journal after the input, waiting on, cancel requested) → suspends?
        let table = [
            (vec![call(None)], vec![1], false, true),
            (vec![call(done.clone())], vec![1], false, false), // completed meanwhile
            (vec![call(None), call(done)], vec![1, 2], false, false), // any one is enough
            (vec![call(None)], vec![1], true, false),          // a cancel it has not seen
            (vec![call(None), Entry::Cancelled], vec![1], true, true), // seen already
            (vec![call(None)], vec![], false, false),          // waits on nothing
        ];
        for (entries, waiting_on, cancel, suspends) in table {
            let journal: Vec<Entry> = std::iter::once(input.clone()).chain(entries).collect();
            let mut r = record(1);
            r.cancel_requested = cancel;
            let got = suspended(&r, &journal, waiting_on.clone(), 42);
            assert_eq!(
                got.is_some(),
                suspends,
                "{journal:?} waiting on {waiting_on:?} cancel={cancel}"
            );
            if let Some(s) = got {
                assert_eq!(
                    (s.status, s.waiting_on, s.modified_at_ms),
                    (InvocationStatus::Suspended, waiting_on, 42)
                );
            }
        }
    }

    #[test]
    fn activation_only_of_scheduled() {
        let mut r = record(0);
        for (status, activates) in [
            (InvocationStatus::Scheduled, true),
            (InvocationStatus::Pending, false),
            (InvocationStatus::Completed, false),
        ] {
            r.status = status;
            r.not_before_ms = Some(9);
            let got = activated(&r);
            assert_eq!(got.is_some(), activates, "{status:?}");
            if let Some(p) = got {
                assert_eq!((p.status, p.not_before_ms), (InvocationStatus::Pending, None));
            }
        }
        let running = running(&record(2), 77);
        assert_eq!(
            (running.status, running.modified_at_ms),
            (InvocationStatus::Running, 77)
        );
    }
}
