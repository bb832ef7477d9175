//! Storage tests: commits survive reopen, the gate, group commit, and the indexes.
use super::indexes::{owned_runs, INDEX_VERSION, INDEX_VERSION_KEY};
use super::*;
use crate::journal::Entry;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn committed_batches_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let object = ObjectId::new("Counter", "a");
    let id = InvocationId::new(object.partition_key()); // one partition: one batch
    {
        let store = Store::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Journal,
            keys::journal_entry(&id, 0),
            encode(&Entry::Input { value: b"1".to_vec() }),
        );
        batch.put(Table::State, keys::state_entry(&object, "count"), b"41".to_vec());
        batch.put(Table::Inbox, keys::inbox_entry(&object, 3), encode(&id));
        rt().block_on(store.log.append(batch)).unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.journal(&id).unwrap().len(), 1);
    assert_eq!(store.object_state(&object).unwrap()["count"], Bytes::from_static(b"41"));
    assert_eq!(store.inbox(&object).unwrap(), vec![(3, id)]);
    assert_eq!(store.objects_with_inbox(&|_| true).unwrap(), vec![object]);
}

#[test]
fn a_batch_writes_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (InvocationId::new(5), InvocationId::new(6));
    assert_ne!(a.partition(), b.partition());
    let mut batch = WriteBatch::new();
    batch.put(Table::Journal, keys::journal_entry(&a, 0), vec![1]);
    batch.put(Table::Journal, keys::journal_entry(&b, 0), vec![1]);
    batch.put(Table::Cluster, b"membership".to_vec(), vec![1]); // not partitioned: allowed
    let refused = rt().block_on(store.log.append(batch));
    assert!(matches!(refused, Err(StorageError::SpansPartitions(..))), "{refused:?}");
    assert!(store.journal(&a).unwrap().is_empty() && store.journal(&b).unwrap().is_empty());
}

#[test]
fn the_gate_refuses_writes_to_partitions_not_owned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = InvocationId::new(5); // partition 5
    let write = || {
        let mut b = WriteBatch::new();
        b.put(Table::Journal, keys::journal_entry(&id, 0), vec![1]);
        b
    };
    rt().block_on(async {
        store.log.append(write()).await.unwrap();
        store.gate.set(id.partition(), PartitionState::Frozen);
        let refused = store.log.append(write()).await;
        assert!(matches!(refused, Err(StorageError::NotOwner(5))), "{refused:?}");
        // Metadata is not partitioned; a partition move passes.
        let mut meta = WriteBatch::new();
        meta.put(Table::Cluster, b"membership".to_vec(), vec![1]);
        store.log.append(meta).await.unwrap();
        let mut moved = WriteBatch::for_partition_move();
        moved.delete(Table::Journal, keys::journal_entry(&id, 0));
        store.log.append(moved).await.unwrap();
    });
    assert!(store.journal(&id).unwrap().is_empty());
}

#[test]
fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    rt().block_on(async {
        let futures: Vec<_> = (0..200u32)
            .map(|i| {
                let mut b = WriteBatch::new();
                b.put(Table::Journal, keys::journal_entry(&InvocationId::new(1), i), vec![1]);
                store.log.append(b)
            })
            .collect();
        for f in futures {
            f.await.unwrap();
        }
    });
    let fsyncs = store.log.stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fsyncs < 200, "expected grouped fsyncs, got {fsyncs}");
}

fn record(status: InvocationStatus, expires_at_ms: Option<u64>) -> InvocationRecord {
    InvocationRecord {
        headers: Default::default(),
        service: "Svc".into(),
        handler: "run".into(),
        key: String::new(),
        kind: HandlerKind::Stateless,
        deployment_id: "dp_1".into(),
        status,
        attempts: 0,
        last_error: None,
        next_retry_at_ms: None,
        created_at_ms: 1,
        modified_at_ms: 1,
        idempotency_key: None,
        inbox_seq: None,
        output: None,
        expires_at_ms,
        caller: None,
        call_chain: vec![],
        waiting_on: vec![],
        cancel_requested: false,
        not_before_ms: None,
    }
}

/// Opens `dir` again once the log thread of a dropped store has let go of it.
fn reopen(dir: &Path) -> Store {
    for _ in 0..200 {
        match Store::open(dir) {
            Err(StorageError::Io(e)) if e.contains("Locked") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stays locked", dir.display());
}

/// Commits `batch`, one batch per partition it writes (as the log requires).
fn commit(store: &Store, batch: WriteBatch) {
    for part in batch.into_partitions() {
        rt().block_on(store.log.append(part)).unwrap();
    }
}

fn rows(store: &Store, table: Table) -> Vec<Vec<u8>> {
    store
        .tables
        .get(table)
        .iter()
        .map(|i| i.key().unwrap().to_vec())
        .collect()
}

fn reads(store: &Store) -> (u64, u64) {
    (
        store.stats.invocation_rows_read.load(Ordering::Relaxed),
        store.stats.index_rows_read.load(Ordering::Relaxed),
    )
}

/// The pre-index recovery scan (every record of every owned partition), for comparison.
fn unfinished_by_full_scan(store: &Store) -> Vec<InvocationId> {
    let mut out = Vec::new();
    for item in store.owned_rows(Table::Invocations, &|_| true) {
        let (key, value) = item.into_inner().unwrap();
        let record: InvocationRecord = decode("invocations", &value).unwrap();
        if !record.status.is_finished() {
            out.push(keys::unfinished_id(&key).unwrap());
        }
    }
    out
}

#[test]
fn owned_runs_cover_exactly_the_owned_partitions() {
    assert_eq!(owned_runs(&|_| true), vec![(vec![0, 0], vec![4, 0])]);
    assert!(owned_runs(&|_| false).is_empty());
    let runs = owned_runs(&|p| p == 3 || p == 4 || p == 9 || p == 1023);
    assert_eq!(
        runs,
        vec![
            (vec![0, 3], vec![0, 5]),
            (vec![0, 9], vec![0, 10]),
            (vec![3, 255], vec![4, 0])
        ]
    );
}

#[test]
fn index_rows_follow_the_record_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = InvocationId::new(42);
    let put = |status, expires| {
        let mut b = WriteBatch::new();
        b.put_invocation(&id, &record(status, expires));
        commit(&store, b);
    };
    for status in [
        InvocationStatus::Scheduled,
        InvocationStatus::Pending,
        InvocationStatus::Running,
        InvocationStatus::Suspended,
        InvocationStatus::BackingOff,
    ] {
        put(status, None);
        assert_eq!(
            rows(&store, Table::Unfinished),
            vec![keys::unfinished(&id)],
            "{status:?}"
        );
        assert!(rows(&store, Table::Expiry).is_empty());
        assert_eq!(store.unfinished_invocations(&|_| true).unwrap().len(), 1);
    }
    put(InvocationStatus::Completed, Some(1_000));
    assert!(rows(&store, Table::Unfinished).is_empty());
    assert_eq!(rows(&store, Table::Expiry), vec![keys::expiry(&id, 1_000)]);
    assert!(store.unfinished_invocations(&|_| true).unwrap().is_empty());
    assert!(store.expired_invocations(999, 10).unwrap().is_empty());
    let expired = store.expired_invocations(1_000, 10).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, id);

    let mut b = WriteBatch::new();
    b.delete_invocation(&id, &expired[0].1);
    commit(&store, b);
    assert!(store.invocation(&id).unwrap().is_none());
    assert!(rows(&store, Table::Unfinished).is_empty());
    assert!(rows(&store, Table::Expiry).is_empty());

    // Finished without a deadline: in neither index.
    put(InvocationStatus::Killed, None);
    assert!(rows(&store, Table::Unfinished).is_empty());
    assert!(rows(&store, Table::Expiry).is_empty());
}

#[test]
fn the_last_write_of_a_batch_decides_the_index_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (InvocationId::new(1), InvocationId::new(2));
    let mut batch = WriteBatch::new();
    batch.put_invocation(&a, &record(InvocationStatus::Pending, None));
    batch.put_invocation(&a, &record(InvocationStatus::Failed, Some(5)));
    batch.put_invocation(&b, &record(InvocationStatus::Pending, None));
    batch.put_invocation(&b, &record(InvocationStatus::Running, None));
    commit(&store, batch);
    // Separate commits folded into one log group behave the same.
    rt().block_on(async {
        let mut first = WriteBatch::new();
        first.put_invocation(&b, &record(InvocationStatus::Suspended, None));
        let mut second = WriteBatch::new();
        second.put_invocation(&b, &record(InvocationStatus::Completed, Some(7)));
        let (x, y) = (store.log.append(first), store.log.append(second));
        x.await.unwrap();
        y.await.unwrap();
    });
    assert!(rows(&store, Table::Unfinished).is_empty());
    let mut expiry = vec![keys::expiry(&a, 5), keys::expiry(&b, 7)];
    expiry.sort();
    assert_eq!(rows(&store, Table::Expiry), expiry);
}

#[test]
fn recovery_and_sweep_read_only_index_ranges() {
    const FINISHED: u64 = 5_000;
    const UNFINISHED: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = now_ms();
    let mut batch = WriteBatch::new();
    let mut live = Vec::new();
    for i in 0..FINISHED {
        let status = [InvocationStatus::Completed, InvocationStatus::Failed][i as usize % 2];
        batch.put_invocation(&InvocationId::new(i), &record(status, Some(now + 3_600_000 + i)));
    }
    for i in 0..UNFINISHED {
        let id = InvocationId::new(i * 101);
        let status = [InvocationStatus::Pending, InvocationStatus::Scheduled][i as usize % 2];
        batch.put_invocation(&id, &record(status, None));
        live.push(id);
    }
    commit(&store, batch);

    let before = reads(&store);
    let started = std::time::Instant::now();
    let mut found: Vec<InvocationId> = store
        .unfinished_invocations(&|_| true)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let indexed = started.elapsed();
    let after = reads(&store);
    found.sort();
    live.sort();
    assert_eq!(found, live);
    assert_eq!(after.0 - before.0, UNFINISHED, "records read by recovery");
    assert_eq!(after.1 - before.1, UNFINISHED, "index rows read by recovery");
    // Only the owned partitions' ranges.
    let one = live[0].partition();
    assert_eq!(store.unfinished_invocations(&|p| p == one).unwrap().len(), 1);

    // Nothing has expired yet: the sweep reads nothing at all.
    let before = reads(&store);
    assert!(store.expired_invocations(now, 10_000).unwrap().is_empty());
    assert_eq!(reads(&store), before, "the sweep read rows with nothing expired");

    // Once some have: only those (and the limit holds).
    let before = reads(&store);
    let expired = store.expired_invocations(now + 3_600_000 + 99, 10_000).unwrap();
    assert_eq!(expired.len(), 100);
    assert_eq!(reads(&store).0 - before.0, 100);
    assert_eq!(store.expired_invocations(u64::MAX - 1, 250).unwrap().len(), 250);

    let started = std::time::Instant::now();
    let mut scanned = unfinished_by_full_scan(&store);
    let full = started.elapsed();
    scanned.sort();
    assert_eq!(scanned, live);
    eprintln!(
        "unfinished scan with {FINISHED} finished + {UNFINISHED} unfinished: index {:.2} ms, full scan {:.2} ms",
        indexed.as_secs_f64() * 1e3,
        full.as_secs_f64() * 1e3
    );
}

/// `cargo test --lib measure_unfinished_scan -- --ignored --nocapture` (timings only).
/// Each invocation is written as a real one is: unfinished first, finished later (so the
/// `unfinished` index holds a tombstone per finished invocation until compaction drops it).
#[test]
#[ignore]
fn measure_unfinished_scan_with_50k_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<InvocationId> = (0..50_000u64).map(InvocationId::new).collect();
    for status in [InvocationStatus::Running, InvocationStatus::Completed] {
        let mut batch = WriteBatch::new();
        for (i, id) in ids.iter().enumerate() {
            let expires = status.is_finished().then_some(u64::MAX - i as u64);
            batch.put_invocation(id, &record(status, expires));
        }
        commit(&store, batch);
    }
    for i in 0..10u64 {
        let mut batch = WriteBatch::new();
        batch.put_invocation(
            &InvocationId::new(100_000 + i * 7),
            &record(InvocationStatus::Suspended, None),
        );
        commit(&store, batch);
    }
    drop(store);
    let measure = |store: &Store, label: &str| {
        for round in 0..3 {
            let t = std::time::Instant::now();
            let full = unfinished_by_full_scan(store).len();
            let full_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            let indexed = store.unfinished_invocations(&|_| true).unwrap().len();
            let indexed_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            let expired = store.expired_invocations(now_ms(), 10_000).unwrap().len();
            let sweep_ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!((full, indexed, expired), (10, 10, 0));
            eprintln!(
                "{label} round {round}: 50k finished + 10 unfinished: full scan {full_ms:.1} ms, \
                 index {indexed_ms:.2} ms, sweep (nothing expired) {sweep_ms:.2} ms"
            );
        }
    };
    // Reopen, as a restart does (memtables recovered from the journal).
    let store = reopen(dir.path());
    measure(&store, "after reopen");
    for keyspace in [
        &store.tables.unfinished,
        &store.tables.expiry,
        &store.tables.invocations,
    ] {
        keyspace.rotate_memtable_and_wait().unwrap();
        keyspace.major_compact().unwrap();
    }
    measure(&store, "after compaction");
}

#[test]
fn the_sweep_drops_stale_expiry_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (id, orphan) = (InvocationId::new(9), InvocationId::new(10));
    let mut b = WriteBatch::new();
    b.put_invocation(&id, &record(InvocationStatus::Completed, Some(100)));
    commit(&store, b);
    // Rewritten with another deadline: the first row is stale.
    let mut b = WriteBatch::new();
    b.put_invocation(&id, &record(InvocationStatus::Completed, Some(200)));
    b.put(Table::Expiry, keys::expiry(&orphan, 50), vec![]);
    commit(&store, b);
    let found = store.expired(150, 10, &|_| true).unwrap();
    assert!(found.invocations.is_empty());
    let mut stale = found.stale_index_rows.clone();
    stale.sort();
    assert_eq!(stale, vec![keys::expiry(&id, 100), keys::expiry(&orphan, 50)]);
    let found = store.expired(250, 10, &|p| p == id.partition()).unwrap();
    assert_eq!(found.invocations.len(), 1);
    assert_eq!(found.stale_index_rows, vec![keys::expiry(&id, 100)]);
}

#[test]
fn listing_unfinished_pages_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut batch = WriteBatch::new();
    let mut live = Vec::new();
    for i in 0..500u64 {
        let id = InvocationId::new(i);
        if i % 50 == 0 {
            batch.put_invocation(&id, &record(InvocationStatus::Running, None));
            live.push(id);
        } else {
            batch.put_invocation(&id, &record(InvocationStatus::Completed, Some(u64::MAX)));
        }
    }
    commit(&store, batch);
    live.sort_by_key(keys::invocation);
    let before = reads(&store);
    let first = store.list_unfinished_invocations(None, 4, |_, _| true).unwrap();
    let cursor = first.last().map(|(id, _)| *id);
    let rest = store
        .list_unfinished_invocations(cursor.as_ref(), 100, |_, _| true)
        .unwrap();
    assert_eq!(reads(&store).0 - before.0, live.len() as u64);
    let paged: Vec<InvocationId> = first.iter().chain(&rest).map(|(id, _)| *id).collect();
    assert_eq!(paged, live);
    // Same order and cursor as the full listing.
    let full: Vec<InvocationId> = store
        .list_invocations(None, 1000, |_, r| !r.status.is_finished())
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(full, live);
}

#[test]
fn opening_builds_missing_indexes_once() {
    let dir = tempfile::tempdir().unwrap();
    let (pending, done, forever, gone) = (
        InvocationId::new(1),
        InvocationId::new(2),
        InvocationId::new(3),
        InvocationId::new(4),
    );
    {
        let store = Store::open(dir.path()).unwrap();
        // A fresh directory gets the marker (and nothing else).
        assert_eq!(
            store.cluster_value("index_version").unwrap(),
            Some(INDEX_VERSION.to_be_bytes().to_vec())
        );
        // What an older version left: records without index rows, no marker, plus an index
        // row that no record backs.
        let mut raw = WriteBatch::new();
        raw.put(
            Table::Invocations,
            keys::invocation(&pending),
            encode(&record(InvocationStatus::Suspended, None)),
        );
        raw.put(
            Table::Invocations,
            keys::invocation(&done),
            encode(&record(InvocationStatus::Completed, Some(500))),
        );
        raw.put(
            Table::Invocations,
            keys::invocation(&forever),
            encode(&record(InvocationStatus::Killed, None)),
        );
        raw.put(Table::Unfinished, keys::unfinished(&gone), vec![]);
        raw.delete(Table::Cluster, INDEX_VERSION_KEY.to_vec());
        commit(&store, raw);
        assert!(store.unfinished_invocations(&|_| true).unwrap().is_empty());
        assert!(store.cluster_value("index_version").unwrap().is_none());
    }
    for _ in 0..2 {
        let store = reopen(dir.path());
        assert!(store.cluster_value("index_version").unwrap().is_some());
        assert_eq!(rows(&store, Table::Unfinished), vec![keys::unfinished(&pending)]);
        assert_eq!(rows(&store, Table::Expiry), vec![keys::expiry(&done, 500)]);
        let unfinished = store.unfinished_invocations(&|_| true).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].0, pending);
        let expired = store.expired_invocations(500, 10).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, done);
    }
}

#[test]
fn partition_moves_carry_the_indexes() {
    // Wire positions of the older tables are unchanged; the indexes are appended.
    assert_eq!(
        Table::PARTITIONED[..8],
        [
            Table::Invocations,
            Table::Journal,
            Table::State,
            Table::Inbox,
            Table::Idempotency,
            Table::Outbox,
            Table::Timers,
            Table::Promises,
        ]
    );
    assert!(Table::PARTITIONED.contains(&Table::Unfinished));
    assert!(Table::PARTITIONED.contains(&Table::Expiry));
    assert!(Table::PARTITIONED.iter().all(|t| t.is_partitioned()));

    // Copy one partition the way a hand-off does (export rows, import with a move batch).
    let (from_dir, to_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let from = Store::open(from_dir.path()).unwrap();
    let (live, done) = (InvocationId::new(77), InvocationId::new(77 + 1024));
    assert_eq!(live.partition(), done.partition());
    let p = live.partition();
    let mut batch = WriteBatch::new();
    batch.put_invocation(&live, &record(InvocationStatus::Pending, None));
    batch.put_invocation(&done, &record(InvocationStatus::Completed, Some(10)));
    commit(&from, batch);
    assert!(!from.partition_is_empty(Table::Unfinished, p).unwrap());
    assert!(from.partition_is_empty(Table::Unfinished, p + 1).unwrap());

    let to = Store::open_gated(to_dir.path(), Arc::new(PartitionGate::new(PartitionState::Remote))).unwrap();
    let mut import = WriteBatch::for_partition_move();
    for table in Table::PARTITIONED {
        for (k, v) in from.partition_rows(table, p).unwrap() {
            import.put(table, k, v);
        }
    }
    commit(&to, import);
    let unfinished = to.unfinished_invocations(&|q| q == p).unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].0, live);
    assert_eq!(to.expired_invocations(10, 10).unwrap()[0].0, done);

    // A store that does not own the partition refuses index writes like any other.
    let mut b = WriteBatch::new();
    b.put_invocation(&live, &record(InvocationStatus::Running, None));
    assert!(matches!(
        rt().block_on(to.log.append(b)),
        Err(StorageError::NotOwner(_))
    ));
}
