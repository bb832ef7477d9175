//! The metadata group (issue 9, stage 1's engine): three replicas, each on its own fjall store
//! and its own node-to-node HTTP server on loopback, as three nodes would run it. Shown here:
//! a leader is elected; a proposal is applied on every replica; two proposals computed from the
//! same state — two membership changes at the same instant — are serialised, one applied and the
//! other refused with the epoch to recompute from; a follower refuses and names the leader; when
//! the leader stops, the other two elect a new one and go on; the stopped replica restarts from
//! its store and catches up.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use kiln::metadata::{replica_id, MetaCommand, MetaError, MetaGroup, MetaResponse, MetaState, NodeId};
use kiln::placement::Membership;
use kiln::storage::Store;

struct Replica {
    id: NodeId,
    name: String,
    addr: String,
    dir: PathBuf,
    group: MetaGroup,
    server: actix_web::dev::ServerHandle,
}

async fn start(name: &str, dir: PathBuf, listener: TcpListener) -> Replica {
    let addr = listener.local_addr().unwrap().to_string();
    let store = Store::open(&dir).expect("store");
    let id = replica_id(name);
    let group = MetaGroup::start(id, store).await.expect("replica");
    let raft = web::Data::new(group.raft.clone());
    let server = HttpServer::new(move || App::new().app_data(raft.clone()).configure(kiln::cluster::raft::config))
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    Replica {
        id,
        name: name.into(),
        addr,
        dir,
        group,
        server: handle,
    }
}

async fn stop(replica: Replica) -> (String, PathBuf, String) {
    replica.server.stop(false).await;
    replica.group.shutdown().await;
    (replica.name, replica.dir, replica.addr)
}

fn membership(epoch: u64, members: &[&str]) -> Membership {
    let mut m = Membership::initial(members.iter().map(|id| (id.to_string(), format!("{id}:1"))).collect());
    m.epoch = epoch;
    m
}

fn set(base_epoch: u64, next_epoch: u64, members: &[&str]) -> MetaCommand {
    MetaCommand::SetMembership {
        base_epoch,
        next: membership(next_epoch, members),
    }
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_of(replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if r.group.raft.current_leader().await == Some(r.id) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader after 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes at whichever replica leads, as a client would: an election may still be settling
/// right after a leader stopped (a replica that led a moment ago answers `NotLeader`).
async fn propose_at_leader(replicas: &[Replica], command: MetaCommand) -> MetaResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = leader_of(replicas).await;
        match replicas[leader].group.propose(command.clone()).await {
            Ok(answer) => return answer,
            Err(MetaError::NotLeader { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("propose at the leader: {e}"),
        }
    }
}

fn epoch_of(state: &MetaState) -> u64 {
    state.epoch()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_serialise_conflicting_changes_and_survive_their_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let listeners: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let mut replicas = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        replicas.push(start(&format!("n{}", i + 1), dirs[i].path().to_path_buf(), listener).await);
    }
    let voters: BTreeMap<NodeId, String> = replicas.iter().map(|r| (r.id, r.addr.clone())).collect();
    replicas[0].group.initialize(voters).await.expect("initialize");

    // A leader, and a first membership applied everywhere.
    let answer = propose_at_leader(&replicas, set(0, 1, &["n1"])).await;
    assert_eq!(answer, MetaResponse::Applied { epoch: 1 });
    for r in &replicas {
        let rx = r.group.subscribe();
        wait_for("epoch 1 on every replica", Duration::from_secs(10), || {
            (epoch_of(&rx.borrow()) == 1).then_some(())
        })
        .await;
    }

    // Two changes computed from epoch 1 at the same instant (a join at two nodes): one wins.
    // (One that reached a replica just as it stopped leading is sent again, as a client would.)
    let leader = leader_of(&replicas).await;
    let (first, second) = (set(1, 2, &["n1", "n2"]), set(1, 2, &["n1", "n3"]));
    let (a, b) = tokio::join!(
        replicas[leader].group.propose(first.clone()),
        replicas[leader].group.propose(second.clone()),
    );
    let mut answers = Vec::new();
    for (result, command) in [(a, first), (b, second)] {
        answers.push(match result {
            Ok(answer) => answer,
            Err(MetaError::NotLeader { .. }) => propose_at_leader(&replicas, command).await,
            Err(e) => panic!("propose: {e}"),
        });
    }
    let applied = answers
        .iter()
        .filter(|r| matches!(r, MetaResponse::Applied { epoch: 2 }))
        .count();
    let stale = answers
        .iter()
        .filter(|r| matches!(r, MetaResponse::Stale { current_epoch: 2 }))
        .count();
    assert_eq!((applied, stale), (1, 1), "answers: {answers:?}");
    let winner = replicas[leader].group.state().membership.expect("membership");
    for r in &replicas {
        let rx = r.group.subscribe();
        let seen = wait_for("epoch 2 on every replica", Duration::from_secs(10), || {
            let s = rx.borrow();
            (epoch_of(&s) == 2).then(|| s.membership.clone())
        })
        .await;
        assert_eq!(
            seen.as_ref(),
            Some(&winner),
            "replica {} agrees with the leader",
            r.name
        );
    }

    // A follower does not apply proposals itself: it names the leader.
    let leader = leader_of(&replicas).await;
    let follower = (leader + 1) % 3;
    match replicas[follower].group.propose(set(2, 3, &["n1"])).await {
        Err(MetaError::NotLeader { leader: Some(addr) }) => assert_eq!(addr, replicas[leader].addr),
        other => panic!("a follower answered {other:?}"),
    }

    // The leader stops: the other two elect a new one within the election timeout and go on.
    let stopped_at = Instant::now();
    let old = replicas.remove(leader);
    let (name, dir, addr) = stop(old).await;
    leader_of(&replicas).await;
    println!("metadata: new leader after {} ms", stopped_at.elapsed().as_millis());
    let answer = propose_at_leader(&replicas, set(2, 3, &["n1", "n2", "n3"])).await;
    assert_eq!(answer, MetaResponse::Applied { epoch: 3 });

    // The stopped replica restarts from its own store, on its old address, and catches up.
    let listener = TcpListener::bind(&addr).expect("old address free again");
    let back = start(&name, dir, listener).await;
    assert!(back.group.state().epoch() >= 2, "it resumes from what it had applied");
    let rx = back.group.subscribe();
    wait_for("the restarted replica at epoch 3", Duration::from_secs(15), || {
        (epoch_of(&rx.borrow()) == 3).then_some(())
    })
    .await;
    replicas.push(back);
    for r in replicas {
        stop(r).await;
    }
}
