//! `Command::Complete`: entry `index` of `target` gets its result — once. A second result is
//! refused, so a redelivered completion never changes what the handler already saw.

use super::transition::{Action, Completer, PartitionRead, ReadFailed, Refusal, Transition, Write};
use crate::ids::InvocationId;
use crate::journal::{CompletionResult, Entry};

pub fn apply(
    read: &dyn PartitionRead,
    target: InvocationId,
    index: u32,
    result: CompletionResult,
    by: Completer,
) -> Result<Transition, ReadFailed> {
    let mut entry = match read.journal_entry(&target, index)? {
        // Outside callers may complete awakeables only, never a call's or a timer's entry.
        Some(entry) if by == Completer::Message || matches!(entry, Entry::Awakeable { .. }) => entry,
        _ => return Ok(Transition::refused(Refusal::NotFound)),
    };
    match entry.result_slot() {
        None => return Ok(Transition::refused(Refusal::NotFound)),
        Some(Some(_)) => return Ok(Transition::refused(Refusal::AlreadyCompleted)),
        Some(slot) => *slot = Some(result.clone()),
    }
    Ok(Transition {
        writes: vec![Write::Entry(target, index, entry)],
        actions: vec![Action::Wake { target, index, result }],
        ..Transition::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::Memory;

    fn value(v: &[u8]) -> CompletionResult {
        CompletionResult {
            value: Some(v.to_vec()),
            failure: None,
        }
    }

    #[test]
    fn completion_table() {
        let id = InvocationId([1; 16]);
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
        let mut done_call = call.clone();
        *done_call.result_slot().expect("completable") = Some(value(b"first"));
        let awakeable = Entry::Awakeable { result: None };
        let output = Entry::Output {
            value: Some(vec![]),
            failure: None,
        };
        // (stored entry at index 1, completer) → refusal (None: applied)
        let table: [(Option<Entry>, Completer, Option<Refusal>); 7] = [
            (Some(call.clone()), Completer::Message, None),
            (Some(call.clone()), Completer::Awakeable, Some(Refusal::NotFound)),
            (Some(done_call), Completer::Message, Some(Refusal::AlreadyCompleted)),
            (Some(awakeable.clone()), Completer::Awakeable, None),
            (Some(awakeable), Completer::Message, None),
            (Some(output), Completer::Message, Some(Refusal::NotFound)),
            (None, Completer::Message, Some(Refusal::NotFound)),
        ];
        for (stored, by, want) in table {
            let mut memory = Memory::default();
            if let Some(entry) = &stored {
                memory.journal.insert((id, 1), entry.clone());
            }
            let t = apply(&memory, id, 1, value(b"second"), by).expect("reads");
            assert_eq!(t.refused, want, "{stored:?} by {by:?}");
            if want.is_none() {
                assert!(matches!(&t.writes[..], [Write::Entry(_, 1, e)] if e.result() == Some(&value(b"second"))));
                assert_eq!(t.actions.len(), 1);
            } else {
                assert!(t.writes.is_empty() && t.actions.is_empty());
            }
        }
    }
}
