//! `Command::Finish`: an invocation ends with its output (completed, failed or killed). Its
//! record says so until retention ends, it leaves its object's inbox, and its caller's `call`
//! entry gets the output as a message staged in the same batch.

use super::records::{InvocationRecord, InvocationStatus, OutboxMessage};
use super::transition::{Action, Transition, Write};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::{CompletionResult, Output};

pub fn apply(
    id: InvocationId,
    record: &InvocationRecord,
    status: InvocationStatus,
    output: Output,
    now_ms: u64,
    retention_ms: u64,
) -> Transition {
    let mut done = record.clone();
    done.status = status;
    done.output = Some(output.clone());
    done.modified_at_ms = now_ms;
    done.next_retry_at_ms = None;
    done.waiting_on.clear();
    done.expires_at_ms = Some(now_ms.saturating_add(retention_ms));
    let mut writes = vec![Write::Record(id, done)];
    if let Some(seq) = record.inbox_seq {
        writes.push(Write::Dequeue(ObjectId::new(&record.service, &record.key), seq));
    }
    if let Some((target, index)) = record.caller {
        let result = CompletionResult::from(&output);
        writes.push(Write::Outbox(OutboxMessage::Complete { target, index, result }));
    }
    Transition {
        writes,
        actions: vec![Action::Finished(id, output)],
        ..Transition::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::records::HandlerKind;
    use crate::core::testing::invoke;
    use crate::journal::Failure;

    #[test]
    fn finish_table() {
        let failure = Output::Failure(Failure {
            code: 500,
            message: "boom".into(),
        });
        // (kind, has caller, status, output) → (dequeues, messages caller)
        let table = [
            (
                HandlerKind::Exclusive,
                true,
                InvocationStatus::Completed,
                Output::Value(b"1".to_vec()),
                true,
                true,
            ),
            (
                HandlerKind::Stateless,
                false,
                InvocationStatus::Completed,
                Output::Value(vec![]),
                false,
                false,
            ),
            (
                HandlerKind::Shared,
                true,
                InvocationStatus::Failed,
                failure.clone(),
                false,
                true,
            ),
            (
                HandlerKind::Workflow,
                false,
                InvocationStatus::Killed,
                failure,
                true,
                false,
            ),
        ];
        for (kind, has_caller, status, output, dequeues, messages) in table {
            let mut message = invoke(kind, "k");
            message.caller = has_caller.then_some((InvocationId([9; 16]), 2));
            let (id, mut record, _) = message.into_invocation_at(10);
            if kind.is_exclusive() {
                record.inbox_seq = Some(4);
            }
            let t = apply(id, &record, status, output.clone(), 1_000, 60_000);
            let Write::Record(_, done) = &t.writes[0] else {
                panic!("record first")
            };
            assert_eq!(done.status, status);
            assert_eq!(done.output.as_ref(), Some(&output));
            assert_eq!(done.expires_at_ms, Some(61_000));
            assert_eq!(
                t.writes.iter().any(|w| matches!(w, Write::Dequeue(_, 4))),
                dequeues,
                "{kind:?}"
            );
            assert_eq!(t.messages().count() == 1, messages, "{kind:?}");
            assert_eq!(t.actions, vec![Action::Finished(id, output)]);
        }
    }
}
