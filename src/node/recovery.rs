//! What a node does for the partitions it serves as a whole: recovers them at start (or when
//! it gains them), forgets them when they move away, and sweeps their expired history.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::ids::InvocationId;
use crate::invocation::Invocation;
use crate::object::{ObjectMsg, Owner};
use crate::storage::{
    blocking, key_partition, now_ms, InvocationStatus, OutboxMessage, StorageError, Table, WriteBatch,
};

impl Node {
    /// Recovery of the partitions `owned` selects (all this node serves at start; those it
    /// gains later), in an order that keeps per-sender message order: first every undelivered
    /// outbox message, then timers, then unfinished invocations.
    pub(crate) async fn recover_partitions(
        self: &Arc<Self>,
        owned: Arc<dyn Fn(u16) -> bool + Send + Sync>,
    ) -> Result<(), StorageError> {
        // Read what is unfinished before redelivery creates more (those start on their own).
        // Scans block: they run on the blocking pool, never on an async thread.
        let (unfinished, objects_with_inbox, outbox) = blocking(&self.store, {
            let owned = owned.clone();
            move |store| {
                Ok((
                    store.unfinished_invocations(&*owned)?,
                    store.objects_with_inbox(&*owned)?,
                    store.outbox(&*owned)?,
                ))
            }
        })
        .await?;
        let last_seq = outbox
            .iter()
            .filter_map(|(k, _)| k.get(2..10))
            .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
            .max();
        if let Some(last) = last_seq {
            self.outbox_seq.fetch_max(last + 1, Ordering::Relaxed);
        }
        // Count unfinished work first: redelivery starts actors that may finish some of it.
        let counted = unfinished
            .iter()
            .filter(|(_, r)| r.status != InvocationStatus::Scheduled)
            .count();
        self.inflight.fetch_add(counted, Ordering::AcqRel);
        let redelivered = outbox.len();
        tracing::info!(unfinished = unfinished.len(), outbox = redelivered, "node.recovering");
        // In order per sending partition (a sender's rows are all in its partition), the
        // partitions side by side so their commits share fdatasyncs. Messages to other nodes go
        // in the background, so a node that is down does not hold up this one.
        let mut local: BTreeMap<u16, Vec<(Vec<u8>, OutboxMessage)>> = Default::default();
        let mut remote: BTreeMap<u16, Vec<(Vec<u8>, OutboxMessage)>> = Default::default();
        for (key, message) in outbox {
            let by_sender = if self.cluster.owns(message.target_partition()) {
                &mut local
            } else {
                &mut remote
            };
            by_sender.entry(key_partition(&key)).or_default().push((key, message));
        }
        let started = std::time::Instant::now();
        futures_util::future::join_all(local.into_values().map(|messages| async move {
            for (key, message) in messages {
                tracing::debug!(outbox = ?message, "node.redeliver");
                self.deliver(Some(key), message, true).await;
            }
        }))
        .await;
        if redelivered > 0 {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "node.redelivered");
        }
        for (_, messages) in remote {
            let node = self.clone();
            actix_rt::spawn(async move {
                for (key, message) in messages {
                    node.deliver(Some(key), message, true).await;
                }
            });
        }
        let node = self.clone();
        blocking(&self.store, move |store| node.timers.load(store, &*owned)).await?;
        let mut resumed = 0usize;
        for object in objects_with_inbox {
            // Activation rebuilds the inbox queue and resumes its head.
            self.objects.activate(&self.host(), &object);
        }
        for (id, record) in unfinished {
            if record.status == InvocationStatus::Scheduled {
                continue; // its timer activates it
            }
            resumed += 1;
            if record.kind.is_exclusive() {
                continue; // resumed through its object's inbox
            }
            // Its owner reads it (after redelivery, which may have completed some of its
            // entries) and runs it, or holds it while it stays suspended.
            let owner = Owner::of(id, &record);
            if let Err(e) = self.objects.send(&self.host(), &owner, ObjectMsg::Recover(id)) {
                tracing::error!(invocation_id = %id, error = %e, "cannot resume invocation");
            }
        }
        tracing::info!(resumed, redelivered, "node.recovered");
        Ok(())
    }

    /// Forgets everything held in memory for `partitions`, which this node stopped serving
    /// (their rows are durable and now served elsewhere): owners (with what they hold),
    /// timers, waiters (who then wait at the new owner) and in-flight counts.
    pub(crate) async fn release_partitions(self: &Arc<Self>, partitions: &[u16]) {
        let set: HashSet<u16> = partitions.iter().copied().collect();
        let gone = |id: &InvocationId| set.contains(&id.partition());
        self.objects.evict(|p| set.contains(&p));
        self.timers.forget(|p| set.contains(&p));
        self.live.retain(|id| !gone(id));
        self.waiters.release(&gone);
        let store = self.store.clone();
        let unfinished = tokio::task::spawn_blocking(move || -> Result<usize, StorageError> {
            let counted = store.unfinished_invocations(&|p| set.contains(&p))?;
            Ok(counted
                .iter()
                .filter(|(_, r)| r.status != InvocationStatus::Scheduled)
                .count())
        })
        .await;
        match unfinished {
            Ok(Ok(n)) => {
                let _ = self
                    .inflight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(c.saturating_sub(n)));
            }
            other => tracing::error!(error = ?other, "cannot count released invocations"),
        }
        tracing::info!(partitions = partitions.len(), "node.partitions_released");
    }

    /// Deletes finished invocations past their retention, in small batches.
    pub(crate) async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let store = self.store.clone();
            let expired = tokio::task::spawn_blocking(move || -> Result<WriteBatch, StorageError> {
                let mut batch = WriteBatch::new();
                // Reads only the `expiry` index rows already due, in owned partitions (a copy
                // left by a hand-off is deleted by its clean-up).
                let owned = |p: u16| store.gate.owns(p);
                let expired = store.expired(now_ms(), 10_000, &owned)?;
                for key in expired.stale_index_rows {
                    if owned(key_partition(&key)) {
                        batch.delete(Table::Expiry, key);
                    }
                }
                for (id, record) in expired.invocations {
                    if !store.gate.owns(id.partition()) {
                        continue; // moved away since the scan
                    }
                    batch.delete_invocation(&id, &record);
                    let inv = Invocation::new(id, record, vec![]);
                    if let Some(row) = inv.idempotency_row() {
                        batch.delete(Table::Idempotency, row);
                    }
                    for key in store.journal_keys(&id)? {
                        batch.delete(Table::Journal, key);
                    }
                }
                Ok(batch)
            })
            .await;
            if let Ok(Ok(batch)) = expired {
                // One batch per partition (every batch writes one), queued together so they
                // share one group commit.
                let commits: Vec<_> = batch
                    .into_partitions()
                    .into_iter()
                    .map(|b| self.store.log.append(b))
                    .collect();
                for commit in commits {
                    if let Err(e) = commit.await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
            }
        }
    }
}
