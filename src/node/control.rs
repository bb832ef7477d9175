//! Operator control of invocations: cancel and kill, applied by the invocation's owner
//! (`object::commands`), which hands them to a running attempt or writes them itself.

use std::sync::Arc;

use crate::core::control::Control;
use crate::ids::InvocationId;
use crate::invocation::Invocation;
use crate::journal::Entry;
use crate::node::Node;
use crate::object::{ControlError, ObjectMsg};

impl Node {
    /// Requests cancellation: the handler sees a `TerminalException(409)` at its next await and
    /// can compensate. Cascades to the invocations its pending calls wait on.
    pub async fn cancel(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        retry_interrupted(|| self.control_once(id, Control::Cancel)).await?;
        let callees = match crate::object::load(&self.store, id).await? {
            Some(inv) => pending_callees(&inv),
            None => Vec::new(),
        };
        tracing::info!(invocation_id = %id, callees = callees.len(), "invocation.cancel");
        for callee in callees {
            if let Err(e) = Box::pin(self.cancel(callee)).await {
                tracing::debug!(invocation_id = %callee, error = %e, "cancel of callee skipped");
            }
        }
        Ok(())
    }

    /// Ends the invocation at once as `killed`, running no more of its code: a running attempt
    /// stops (its owner writes the end) unless its output is already on its way to disk;
    /// otherwise the owner writes the end. Answers once the end is durable.
    pub async fn kill(self: &Arc<Self>, id: InvocationId) -> Result<(), ControlError> {
        retry_interrupted(|| self.control_once(id, Control::Kill)).await
    }

    async fn control_once(self: &Arc<Self>, id: InvocationId, control: Control) -> Result<(), ControlError> {
        let Some(owner) = self.owner_of(id).await? else {
            return Err(ControlError::NotFound(id));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Err(e) = self
            .objects
            .send(&self.host(), &owner, ObjectMsg::Control { id, control, reply })
        {
            tracing::debug!(invocation_id = %id, error = %e, "owner unreachable");
            return Err(ControlError::Interrupted(id));
        }
        answer.await.unwrap_or(Err(ControlError::Interrupted(id)))
    }
}

/// Runs `once` again while the owner or attempt it was handed to ended without answering (at
/// most 3 times): the next try finds no attempt, or a new one, and applies it there.
async fn retry_interrupted<F, Fut>(once: F) -> Result<(), ControlError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>>,
{
    let mut result = once().await;
    for _ in 0..2 {
        match result {
            Err(ControlError::Interrupted(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                result = once().await;
            }
            other => return other,
        }
    }
    result
}

/// Callees of `inv`'s calls that have no result yet.
fn pending_callees(inv: &Invocation) -> Vec<InvocationId> {
    inv.journal
        .iter()
        .filter_map(|e| match e {
            Entry::Call {
                invocation_id: Some(callee),
                result: None,
                ..
            } => Some(*callee),
            _ => None,
        })
        .collect()
}
