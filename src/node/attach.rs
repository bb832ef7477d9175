//! Durable waiters: an `attach_invocation` entry, or a second caller of an idempotent
//! invocation, waits for another invocation's output. The waiter is an outbox row
//! (`OutboxMessage::Attach`) in the *target's* partition, so it is recovered with the target
//! and moves with it; the node that serves the partition waits in memory and, once the output
//! is there, swaps the row for the answer (`Complete`) in one batch, which is then delivered
//! like any other message. A crash before the swap leaves the row: recovery waits again.

use std::sync::Arc;
use std::time::Duration;

use crate::ids::InvocationId;
use crate::journal::CompletionResult;
use crate::node::{Node, Waited};
use crate::storage::{encode, key_partition, OutboxMessage, Table, WriteBatch};

impl Node {
    /// Takes up an `Attach` whose target's partition this node serves. `key` is the row that
    /// carried it here (none when another node sent it). Returns whether the row `key` may
    /// be deleted by the caller: the waiter is durable in the target's partition by then.
    pub(super) async fn take_up_attach(
        self: &Arc<Self>,
        key: Option<Vec<u8>>,
        target: InvocationId,
        reply_to: (InvocationId, u32),
    ) -> AttachTaken {
        let partition = target.partition();
        if let Some(row) = key.filter(|k| key_partition(k) == partition) {
            self.wait_to_answer(row, target, reply_to);
            return AttachTaken::Held;
        }
        // Carried by a row of another partition (or by a peer): write the waiter's own row.
        let row = self.next_outbox_key(partition);
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Outbox,
            row.clone(),
            encode(&OutboxMessage::Attach { target, reply_to }),
        );
        match self.store.log.append_retrying(batch).await {
            Ok(()) => {
                self.wait_to_answer(row, target, reply_to);
                AttachTaken::Moved
            }
            Err(e) => {
                tracing::warn!(invocation_id = %target, error = %e, "attach not taken up; retried");
                AttachTaken::NotYet
            }
        }
    }

    /// Waits, in the background, for `target`'s output, then swaps the waiter's `row` for the
    /// answer to `reply_to` and delivers it.
    fn wait_to_answer(self: &Arc<Self>, row: Vec<u8>, target: InvocationId, reply_to: (InvocationId, u32)) {
        let node = self.clone();
        actix_rt::spawn(async move {
            let mut delay = Duration::from_millis(50);
            let result = loop {
                match node.output(target).await {
                    Ok(Waited::Output(output)) => break CompletionResult::from(&output),
                    Ok(Waited::NotFound) => {
                        break CompletionResult::failure(404, format!("invocation {target} not found"))
                    }
                    // The row moved with the partition; the new owner waits.
                    Ok(Waited::Moved) => return,
                    Err(e) => {
                        tracing::warn!(invocation_id = %target, error = %e, "attach wait failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            };
            let (caller, index) = reply_to;
            let answer = OutboxMessage::Complete {
                target: caller,
                index,
                result,
            };
            let key = node.next_outbox_key(target.partition());
            let mut batch = WriteBatch::new();
            batch.delete(Table::Outbox, row);
            batch.put(Table::Outbox, key.clone(), encode(&answer));
            if let Err(e) = node.store.log.append_retrying(batch).await {
                // Not written (the partition moved, or storage failed): the row stays.
                tracing::warn!(invocation_id = %target, error = %e, "attach answer not written");
                return;
            }
            node.deliver(Some(key), answer, false).await;
        });
    }
}

/// What became of the row that carried an `Attach`.
pub(super) enum AttachTaken {
    /// It is the waiter now: keep it.
    Held,
    /// The waiter has a row of its own: the carrying row may go.
    Moved,
    /// Nothing durable happened: keep it, to deliver again.
    NotYet,
}
