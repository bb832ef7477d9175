//! `Command::Invoke`: a message creating an invocation. Its id is the dedup key (assigned by
//! the sender and journaled with the sender's entry), so a redelivered message finds the
//! invocation its first copy created; a workflow key runs once.

use super::records::{HandlerKind, InvokeMessage, OutboxMessage};
use super::transition::{PartitionRead, ReadFailed, Refusal, Transition, Write};
use crate::ids::ObjectId;
use crate::journal::{codes, CompletionResult};

pub fn apply(read: &dyn PartitionRead, message: InvokeMessage, redelivery: bool) -> Result<Transition, ReadFailed> {
    let target = ObjectId::new(&message.service, &message.key);
    if message.kind.is_exclusive() && message.call_chain.contains(&target) {
        let chain: Vec<String> = message.call_chain.iter().map(|o| o.to_string()).collect();
        let text = format!(
            "call cycle: {} → {target} would wait forever, because {target} is locked by an invocation up this call chain",
            chain.join(" → ")
        );
        return Ok(answer(&message, CompletionResult::failure(codes::CALL_CYCLE, text)));
    }
    // Only a message sent again can meet its own earlier copy; a workflow run, or an
    // invocation with an idempotency key (its id is derived from it), can meet one that an
    // ingress request or another caller created.
    let workflow = message.kind == HandlerKind::Workflow;
    let idempotent = message.idempotency_key.is_some();
    if redelivery || workflow || idempotent {
        if let Some(existing) = read.invocation(&message.id)? {
            let duplicate = redelivery && (!(workflow || idempotent) || existing.caller == message.caller);
            if duplicate || message.caller.is_none() {
                return Ok(Transition::refused(Refusal::Duplicate));
            }
            let result = match (&existing.output, workflow) {
                (Some(output), _) => CompletionResult::from(output),
                (None, true) => CompletionResult::failure(
                    codes::ALREADY_COMPLETED,
                    format!("workflow {target} is already running; attach to its result by key"),
                ),
                // A second caller of an idempotent invocation waits for its output.
                (None, false) => return Ok(attach(&message)),
            };
            return Ok(answer(&message, result));
        }
    }
    Ok(Transition {
        create: Some(message),
        ..Transition::default()
    })
}

/// Makes the caller of `message` wait for the output of the invocation it names (a durable
/// waiter in this partition: `node::attach`).
fn attach(message: &InvokeMessage) -> Transition {
    let Some(reply_to) = message.caller else {
        return Transition::refused(Refusal::Duplicate);
    };
    Transition {
        writes: vec![Write::Outbox(OutboxMessage::Attach {
            target: message.id,
            reply_to,
        })],
        ..Transition::default()
    }
}

/// Answers the caller of `message` with `result` instead of creating anything (nothing to
/// answer for a send).
fn answer(message: &InvokeMessage, result: CompletionResult) -> Transition {
    let Some((target, index)) = message.caller else {
        return Transition::refused(Refusal::Duplicate);
    };
    Transition {
        writes: vec![Write::Outbox(OutboxMessage::Complete { target, index, result })],
        ..Transition::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{invoke, Memory};
    use crate::ids::InvocationId;

    #[test]
    fn dedup_table() {
        let caller = Some((InvocationId([7; 16]), 3));
        let other = Some((InvocationId([8; 16]), 1));
        // (kind, stored invocation with this caller?, redelivery, message caller) → outcome
        #[derive(Debug, PartialEq)]
        enum Want {
            Create,
            Dropped,
            Answered,
        }
        use Want::*;
        let table = [
            (HandlerKind::Exclusive, None, false, caller, Create),
            (HandlerKind::Exclusive, None, true, caller, Create),
            (HandlerKind::Exclusive, Some(caller), true, caller, Dropped),
            // A first delivery does not look: ids of non-workflow invocations are fresh.
            (HandlerKind::Exclusive, Some(caller), false, caller, Create),
            (HandlerKind::Stateless, Some(None), true, None, Dropped),
            (HandlerKind::Workflow, None, false, caller, Create),
            (HandlerKind::Workflow, Some(caller), true, caller, Dropped),
            (HandlerKind::Workflow, Some(other), true, caller, Answered),
            (HandlerKind::Workflow, Some(other), false, caller, Answered),
            (HandlerKind::Workflow, Some(None), false, None, Dropped),
        ];
        for (kind, stored, redelivery, msg_caller, want) in table {
            let mut memory = Memory::default();
            let mut message = invoke(kind, "k");
            message.caller = msg_caller;
            if let Some(stored_caller) = stored {
                let mut existing = message.clone();
                existing.caller = stored_caller;
                memory.insert(existing.into_invocation_at(1));
            }
            let t = apply(&memory, message, redelivery).expect("reads");
            let got = match (&t.create, &t.refused) {
                (Some(_), None) => Create,
                (None, Some(Refusal::Duplicate)) => Dropped,
                (None, None) if t.messages().count() == 1 => Answered,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(
                got, want,
                "{kind:?} stored={stored:?} redelivery={redelivery} caller={msg_caller:?}"
            );
        }
    }

    #[test]
    fn a_call_cycle_is_answered_with_a_failure() {
        let mut message = invoke(HandlerKind::Exclusive, "k");
        message.caller = Some((InvocationId([7; 16]), 3));
        message.call_chain = vec![ObjectId::new(&message.service, &message.key)];
        let t = apply(&Memory::default(), message, false).expect("reads");
        assert!(t.create.is_none());
        let answer = t.messages().next().cloned();
        match answer {
            Some(OutboxMessage::Complete { result, index: 3, .. }) => {
                assert_eq!(result.failure.as_ref().map(|f| f.code), Some(codes::CALL_CYCLE))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn idempotency_key_table() {
        let first = Some((InvocationId([7; 16]), 3));
        let second = Some((InvocationId([8; 16]), 1));
        #[derive(Debug, PartialEq)]
        enum Want {
            Create,
            Dropped,
            Answered,
            Waits,
        }
        use Want::*;
        // (stored: its caller and finished?, redelivery, message caller) → outcome
        let table = [
            (None, false, first, Create),
            (None, false, None, Create),
            // Another caller (or the ingress) made it: a call waits for it or gets its output.
            (Some((first, false)), false, second, Waits),
            (Some((first, true)), false, second, Answered),
            (Some((None, false)), false, second, Waits),
            // A send that meets it does nothing.
            (Some((first, false)), false, None, Dropped),
            // The same message again.
            (Some((first, false)), true, first, Dropped),
        ];
        for (stored, redelivery, caller, want) in table {
            let mut memory = Memory::default();
            let mut message = invoke(HandlerKind::Exclusive, "k");
            message.idempotency_key = Some("order-1".into());
            message.caller = caller;
            if let Some((stored_caller, finished)) = stored {
                let mut existing = message.clone();
                existing.caller = stored_caller;
                let (id, mut record, journal) = existing.into_invocation_at(1);
                if finished {
                    record.output = Some(crate::journal::Output::Value(b"7".to_vec()));
                }
                memory.insert((id, record, journal));
            }
            let command = crate::core::Command::Invoke {
                message: message.clone(),
                redelivery,
            };
            assert!(command.reads_storage(), "an idempotent message is looked up");
            let t = apply(&memory, message.clone(), redelivery).expect("reads");
            let got = match (&t.create, &t.refused, t.messages().next()) {
                (Some(_), None, _) => Create,
                (None, Some(Refusal::Duplicate), _) => Dropped,
                (None, None, Some(OutboxMessage::Complete { .. })) => Answered,
                (None, None, Some(OutboxMessage::Attach { target, reply_to })) => {
                    assert_eq!((*target, Some(*reply_to)), (message.id, caller));
                    Waits
                }
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, want, "stored={stored:?} redelivery={redelivery} caller={caller:?}");
        }
    }
}
