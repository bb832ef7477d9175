//! `Command::Promise`: an operation on a workflow's durable promise. A promise is completed
//! once; `get` waits for that, `peek` answers at once. Every answer is a message staged in the
//! promise's partition.

use super::records::{OutboxMessage, PromiseMessage, PromiseOp};
use super::transition::{PartitionRead, ReadFailed, Transition, Write};
use crate::ids::InvocationId;
use crate::journal::{codes, CompletionResult};

pub fn apply(read: &dyn PartitionRead, message: PromiseMessage) -> Result<Transition, ReadFailed> {
    let mut record = read.promise(&message.object, &message.name)?.unwrap_or_default();
    let (target, index) = message.reply_to;
    let mut replies: Vec<(InvocationId, u32, CompletionResult)> = Vec::new();
    match message.op {
        PromiseOp::Get => match &record.result {
            Some(result) => replies.push((target, index, result.clone())),
            None if !record.waiters.contains(&message.reply_to) => record.waiters.push(message.reply_to),
            None => {} // a redelivered `get`: already waiting
        },
        PromiseOp::Peek => replies.push((target, index, record.result.clone().unwrap_or_default())),
        PromiseOp::Complete(_) if record.completed_by == Some(message.reply_to) => {
            // Sent again after a lost answer: answer as the first time (the entry takes one).
            replies.push((target, index, CompletionResult::default()));
        }
        PromiseOp::Complete(result) => {
            if record.result.is_some() {
                let text = format!("promise '{}' of {} is already completed", message.name, message.object);
                replies.push((target, index, CompletionResult::failure(codes::ALREADY_COMPLETED, text)));
            } else {
                for (w, i) in std::mem::take(&mut record.waiters) {
                    replies.push((w, i, result.clone()));
                }
                record.result = Some(result);
                record.completed_by = Some(message.reply_to);
                replies.push((target, index, CompletionResult::default()));
            }
        }
    }
    let mut writes = vec![Write::Promise(message.object, message.name, record)];
    writes.extend(
        replies
            .into_iter()
            .map(|(target, index, result)| Write::Outbox(OutboxMessage::Complete { target, index, result })),
    );
    Ok(Transition {
        writes,
        ..Transition::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::Memory;
    use crate::ids::ObjectId;

    fn op(op: PromiseOp, from: u8) -> PromiseMessage {
        PromiseMessage {
            object: ObjectId::new("W", "k"),
            name: "approved".into(),
            op,
            reply_to: (InvocationId([from; 16]), 1),
        }
    }

    fn answers(t: &Transition) -> Vec<(u8, Option<u16>)> {
        t.messages()
            .map(|m| match m {
                OutboxMessage::Complete { target, result, .. } => {
                    (target.0[0], result.failure.as_ref().map(|f| f.code))
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn get_waits_complete_answers_everyone_once() {
        let mut memory = Memory::default();
        let done = CompletionResult {
            value: Some(b"yes".to_vec()),
            failure: None,
        };
        // (operation, from, answers expected: (from, failure code))
        type Answers = Vec<(u8, Option<u16>)>;
        let steps: Vec<(PromiseOp, u8, Answers)> = vec![
            (PromiseOp::Get, 1, vec![]),
            (PromiseOp::Get, 1, vec![]), // redelivered: still one waiter
            (PromiseOp::Peek, 2, vec![(2, None)]),
            (PromiseOp::Complete(done.clone()), 3, vec![(1, None), (3, None)]),
            (PromiseOp::Complete(done.clone()), 3, vec![(3, None)]), // redelivered: a duplicate
            (PromiseOp::Complete(done), 4, vec![(4, Some(codes::ALREADY_COMPLETED))]),
            (PromiseOp::Get, 5, vec![(5, None)]),
        ];
        for (operation, from, want) in steps {
            let t = apply(&memory, op(operation.clone(), from)).expect("reads");
            assert_eq!(answers(&t), want, "{operation:?} from {from}");
            memory.apply(&t);
        }
    }
}
