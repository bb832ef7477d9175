//! Deterministic simulation of the core: the real `core::apply` driven by a simulated runtime —
//! nodes with an in-memory log each, a fake invoker (`handlers`), a network that loses answers
//! (so messages are sent again) and crashes that drop everything not committed — under a
//! seeded schedule. At the end it checks the invariants: every accepted invocation ends exactly
//! once, every message takes effect exactly once (each add counted once, every caller answered
//! with its own add), exclusive handlers of one object never overlap, nothing is left behind.
//!
//! Reproducible: a failing run prints its seed; `KILN_SIM_SEED=<seed>` runs just that one.

mod handlers;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use super::records::{InvocationRecord, InvocationStatus, InvokeMessage, OutboxMessage};
use super::testing::Memory;
use super::transition::{Command, Completer, PartitionRead, ReadFailed, Transition};
use crate::ids::{InvocationId, ObjectId};
use crate::journal::{Entry, Output};
use handlers::Step;

/// The function under test: `core::apply`, or a deliberately broken variant of it.
pub type Apply = fn(&dyn PartitionRead, Command) -> Result<Transition, ReadFailed>;

const NODES: usize = 3;
const KEYS: u64 = 3;

/// One node: its committed log (as tables) and what a crash loses.
#[derive(Default)]
struct Node {
    log: Memory,
    /// Committed counter values per object (the `state` table of this simulation).
    counts: BTreeMap<ObjectId, u64>,
    up: bool,
    /// Restarts so far; a row staged in an earlier life is a redelivery.
    epoch: u32,
    /// Outbox rows and the life they were staged in (simulation bookkeeping, not node state).
    staged_in: BTreeMap<u64, u32>,
    /// Delivered rows whose deletion waits for this node's next commit (lost in a crash).
    acked: BTreeSet<u64>,
}

pub struct Sim {
    rng: fastrand::Rng,
    apply: Apply,
    nodes: Vec<Node>,
    now_ms: u64,
    /// Client requests still to make: (service, key), in a seeded order.
    plan: Vec<(&'static str, String)>,
    /// Accepted client invocations: id → (service, key).
    accepted: BTreeMap<InvocationId, (String, String)>,
    /// Objects whose exclusive invocation is between its two steps (read done, write not yet).
    running: BTreeMap<ObjectId, InvocationId>,
    /// How often each invocation's end was committed (must be once).
    ends: BTreeMap<InvocationId, u32>,
    trace: Vec<String>,
    pub violations: Vec<String>,
}

fn node_of(partition: u16) -> usize {
    partition as usize % NODES
}

impl Sim {
    pub fn new(seed: u64, apply: Apply) -> Self {
        let nodes = (0..NODES)
            .map(|_| Node {
                up: true,
                ..Node::default()
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        // Per key: one resolver of its promise and up to two waiters; calls and sends at random.
        let mut plan = Vec::new();
        for k in 0..KEYS {
            let key = format!("k{k}");
            plan.push((handlers::RESOLVER, key.clone()));
            for _ in 0..rng.usize(0..3) {
                plan.push((handlers::WAITER, key.clone()));
            }
        }
        for _ in 0..rng.usize(6..18) {
            let service = if rng.bool() { handlers::CALLER } else { handlers::SENDER };
            plan.push((service, format!("k{}", rng.u64(0..KEYS))));
        }
        rng.shuffle(&mut plan);
        Self {
            rng,
            plan,
            apply,
            nodes,
            now_ms: 1_000,
            accepted: BTreeMap::new(),
            running: BTreeMap::new(),
            ends: BTreeMap::new(),
            trace: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// A fresh id in the partition of `partition_key` (deterministic: from the seed).
    fn new_id(&mut self, partition_key: u64) -> InvocationId {
        let mut id = InvocationId([0; 16]);
        id.0[..8].copy_from_slice(&partition_key.to_be_bytes());
        id.0[8..].copy_from_slice(&self.rng.u64(..).to_be_bytes());
        id
    }

    fn note(&mut self, event: String) {
        self.trace.push(format!("t={} {event}", self.now_ms));
    }

    /// The last events, for a failure report.
    pub fn trace_tail(&self, n: usize) -> String {
        self.trace[self.trace.len().saturating_sub(n)..].join("\n")
    }

    /// Runs `steps` random steps (client requests, handler steps, deliveries, lost answers,
    /// crashes), then lets everything finish without faults, then checks the invariants.
    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.now_ms += self.rng.u64(1..20);
            match self.rng.u32(0..100) {
                0..=11 => self.submit(),
                12..=14 => self.crash(),
                15..=19 => self.restart(),
                20..=59 => {
                    self.deliver_one(true);
                }
                _ => {
                    self.run_one();
                }
            }
        }
        for node in 0..NODES {
            if !self.nodes[node].up {
                self.restart_node(node);
            }
        }
        while !self.plan.is_empty() {
            self.submit();
        }
        // Quiescence without faults; a bound, so a lost wake-up shows as work left behind.
        let mut idle = 0;
        for _ in 0..20_000 {
            self.now_ms += 1;
            let progressed = self.deliver_one(false) | self.run_one();
            idle = if progressed { 0 } else { idle + 1 };
            if idle > 200 && !self.any_outbox() {
                break;
            }
        }
        self.check();
    }

    /// A client request, accepted once written (an ingress `/send`, or a call).
    fn submit(&mut self) {
        let Some((service, key)) = self.plan.last().cloned() else {
            return;
        };
        let partition_key = self.rng.u64(..);
        let id = self.new_id(partition_key);
        let node = node_of(id.partition());
        if !self.nodes[node].up {
            return; // refused: the client tries again later
        }
        self.plan.pop();
        let message = InvokeMessage {
            headers: Default::default(),
            id,
            service: service.into(),
            handler: "run".into(),
            key: String::new(),
            kind: super::records::HandlerKind::Stateless,
            deployment_id: "dp_sim".into(),
            input: key.as_bytes().to_vec(),
            caller: None,
            call_chain: Vec::new(),
            not_before_ms: None,
            idempotency_key: None,
        };
        self.nodes[node].log.insert(message.into_invocation_at(self.now_ms));
        self.accepted.insert(id, (service.into(), key.clone()));
        self.note(format!("accepted {service}({key}) {id}"));
    }

    fn crash(&mut self) {
        let node = self.rng.usize(..NODES);
        if self.nodes[node].up {
            self.nodes[node].up = false;
            self.nodes[node].acked.clear();
            // Everything in memory is gone: steps in progress restart from the journal.
            let lost: Vec<ObjectId> = self
                .running
                .iter()
                .filter(|(_, id)| node_of(id.partition()) == node)
                .map(|(o, _)| o.clone())
                .collect();
            for object in lost {
                self.running.remove(&object);
            }
            self.note(format!("crash n{node}"));
        }
    }

    fn restart(&mut self) {
        let node = self.rng.usize(..NODES);
        if !self.nodes[node].up {
            self.restart_node(node);
        }
    }

    fn restart_node(&mut self, node: usize) {
        self.nodes[node].up = true;
        self.nodes[node].epoch += 1;
        self.note(format!("restart n{node}"));
    }

    fn any_outbox(&self) -> bool {
        self.nodes.iter().any(|n| n.log.outbox.len() > n.acked.len())
    }

    /// Delivers one outbox row of a live node to its target's node. With `faults`, the
    /// answer may be lost (the row stays and is sent again, as a redelivery).
    fn deliver_one(&mut self, faults: bool) -> bool {
        let rows: Vec<(usize, u64)> = (0..NODES)
            .filter(|n| self.nodes[*n].up)
            .flat_map(|n| {
                let node = &self.nodes[n];
                node.log
                    .outbox
                    .keys()
                    .filter(|s| !node.acked.contains(s))
                    .map(move |s| (n, *s))
            })
            .collect();
        if rows.is_empty() {
            return false;
        }
        let (from, seq) = rows[self.rng.usize(..rows.len())];
        let message = self.nodes[from].log.outbox[&seq].clone();
        let to = node_of(message.target_partition());
        if !self.nodes[to].up {
            return false;
        }
        let redelivery = to != from || self.nodes[from].staged_in.get(&seq) != Some(&self.nodes[from].epoch);
        let command = match message.clone() {
            OutboxMessage::Invoke(message) => Command::Invoke { message, redelivery },
            OutboxMessage::Complete { target, index, result } => Command::Complete {
                target,
                index,
                result,
                by: Completer::Message,
            },
            OutboxMessage::Promise(message) => Command::Promise(message),
            OutboxMessage::Attach { .. } | OutboxMessage::Cancel { .. } => {
                unreachable!("the simulated handlers neither attach nor cancel, nor use idempotency keys")
            }
        };
        let transition = (self.apply)(&self.nodes[to].log, command).expect("memory reads");
        self.note(format!(
            "deliver n{from}#{seq} → n{to} {} {:?}",
            brief(&message),
            transition.refused
        ));
        if let Some(message) = transition.create.clone() {
            self.create(to, message);
        }
        self.commit(to, &transition, None);
        // The sender deletes its row with its next commit once the answer arrives — unless
        // the answer from another node is lost (then it sends the row again).
        if to == from || !(faults && self.rng.u32(0..100) < 30) {
            self.nodes[from].acked.insert(seq);
        } else {
            self.note(format!("answer lost for n{from}#{seq}"));
        }
        true
    }

    /// Creates an invocation on `node`: an exclusive one joins its object's inbox.
    fn create(&mut self, node: usize, message: InvokeMessage) {
        let (id, mut record, journal) = message.into_invocation_at(self.now_ms);
        if record.kind.is_exclusive() {
            let object = ObjectId::new(&record.service, &record.key);
            let log = &self.nodes[node].log;
            let next = log.inbox.keys().filter(|(o, _)| *o == object).map(|(_, s)| s + 1).max();
            record.inbox_seq = Some(next.unwrap_or(0));
        }
        self.nodes[node].log.insert((id, record, journal));
    }

    /// Commits a transition's writes on `node` (its messages become outbox rows of this life).
    fn commit(&mut self, node: usize, transition: &Transition, count: Option<(ObjectId, u64)>) {
        for write in &transition.writes {
            if let super::Write::Record(id, record) = write {
                if record.status.is_finished() {
                    let before = self.nodes[node].log.invocations.get(id).map(|r| r.status.is_finished());
                    if before == Some(true) {
                        self.violations.push(format!("{id} ended twice"));
                    }
                    *self.ends.entry(*id).or_default() += 1;
                }
            }
        }
        let epoch = self.nodes[node].epoch;
        let n = &mut self.nodes[node];
        for seq in std::mem::take(&mut n.acked) {
            n.log.outbox.remove(&seq);
        }
        for seq in n.log.apply(transition) {
            n.staged_in.insert(seq, epoch);
        }
        if let Some((object, value)) = count {
            n.counts.insert(object, value);
        }
    }

    /// Runs one step of one runnable invocation of a live node.
    fn run_one(&mut self) -> bool {
        let mut runnable = Vec::new();
        for (n, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.up) {
            let heads: BTreeSet<InvocationId> = first_per_object(&node.log.inbox);
            for (id, record) in &node.log.invocations {
                let waiting = record.status.is_finished() || (record.kind.is_exclusive() && !heads.contains(id));
                if !waiting {
                    runnable.push((n, *id));
                }
            }
        }
        if runnable.is_empty() {
            return false;
        }
        let (n, id) = runnable[self.rng.usize(..runnable.len())];
        let record = self.nodes[n].log.invocations[&id].clone();
        let journal: Vec<Entry> = (0..)
            .map_while(|i| self.nodes[n].log.journal.get(&(id, i)).cloned())
            .collect();
        let object = ObjectId::new(&record.service, &record.key);
        let count = self.nodes[n].counts.get(&object).copied().unwrap_or(0);
        let callee = self.new_id(ObjectId::new(handlers::COUNTER, input_of(&journal)).partition_key());
        match handlers::next(id, &record, &journal, count, callee) {
            Step::Wait => false,
            Step::Journal(entry, message) => {
                if record.kind.is_exclusive() {
                    if let Some(other) = self.running.insert(object.clone(), id).filter(|o| *o != id) {
                        self.violations.push(format!("{other} and {id} of {object} overlap"));
                    }
                }
                let mut writes = vec![super::Write::Entry(id, journal.len() as u32, entry)];
                writes.extend(message.map(|m| super::Write::Outbox(*m)));
                let t = Transition {
                    writes,
                    ..Transition::default()
                };
                self.note(format!("step {id} entry {}", journal.len()));
                self.commit(n, &t, None);
                true
            }
            Step::Finish(output, count) => self.finish(n, id, record, output, count),
        }
    }

    fn finish(
        &mut self,
        n: usize,
        id: InvocationId,
        record: InvocationRecord,
        output: Output,
        count: Option<u64>,
    ) -> bool {
        let object = ObjectId::new(&record.service, &record.key);
        let command = Command::Finish {
            id,
            record: Box::new(record),
            status: InvocationStatus::Completed,
            output,
            now_ms: self.now_ms,
            retention_ms: 86_400_000,
        };
        let t = (self.apply)(&self.nodes[n].log, command).expect("memory reads");
        self.note(format!("finish {id}"));
        self.running.remove(&object);
        self.commit(n, &t, count.map(|c| (object, c)));
        true
    }

    fn check(&mut self) {
        let mut adds: BTreeMap<String, u64> = BTreeMap::new();
        let mut answers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (id, (service, key)) in self.accepted.clone() {
            let node = &self.nodes[node_of(id.partition())];
            let Some(record) = node.log.invocations.get(&id) else {
                self.violations.push(format!("accepted {id} is gone"));
                continue;
            };
            if self.ends.get(&id) != Some(&1) {
                self.violations
                    .push(format!("{service}({key}) {id} ended {:?} times", self.ends.get(&id)));
            }
            match (service.as_str(), &record.output) {
                (handlers::CALLER, Some(Output::Value(v))) if v.len() == 8 => {
                    *adds.entry(key.clone()).or_default() += 1;
                    answers
                        .entry(key)
                        .or_default()
                        .push(u64::from_be_bytes(v[..8].try_into().expect("8")));
                }
                (handlers::SENDER, Some(Output::Value(_))) => *adds.entry(key).or_default() += 1,
                (handlers::WAITER, Some(Output::Value(v))) if v == b"resolved" => {}
                (handlers::RESOLVER, Some(Output::Value(v))) if v.is_empty() => {}
                (_, output) => self
                    .violations
                    .push(format!("{service}({key}) {id} ended with {output:?}")),
            }
        }
        for key in 0..KEYS {
            let key = format!("k{key}");
            let object = ObjectId::new(handlers::COUNTER, &key);
            let count: u64 = self.nodes.iter().filter_map(|n| n.counts.get(&object)).copied().sum();
            let want = adds.get(&key).copied().unwrap_or(0);
            if count != want {
                self.violations
                    .push(format!("Counter({key}) = {count}, but {want} adds were made"));
            }
            // Every caller got the value of its own add: distinct, none beyond the count.
            let mut got = answers.remove(&key).unwrap_or_default();
            got.sort_unstable();
            let before = got.len();
            got.dedup();
            if got.len() != before || got.last().is_some_and(|last| *last > count) {
                self.violations
                    .push(format!("Counter({key}) answers {got:?} for count {count}"));
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if let Some(seq) = node.log.outbox.keys().find(|s| !node.acked.contains(s)) {
                self.violations.push(format!("n{n} still has outbox row #{seq}"));
            }
            for (id, record) in &node.log.invocations {
                if !record.status.is_finished() {
                    self.violations.push(format!("{id} ({}) never ended", record.service));
                }
            }
        }
    }
}

fn first_per_object(inbox: &BTreeMap<(ObjectId, u64), InvocationId>) -> BTreeSet<InvocationId> {
    let mut seen = BTreeSet::new();
    let mut heads = BTreeSet::new();
    for ((object, _), id) in inbox {
        if seen.insert(object.clone()) {
            heads.insert(*id);
        }
    }
    heads
}

fn input_of(journal: &[Entry]) -> &str {
    match journal.first() {
        Some(Entry::Input { value }) => std::str::from_utf8(value).unwrap_or(""),
        _ => "",
    }
}

fn brief(message: &OutboxMessage) -> String {
    match message {
        OutboxMessage::Invoke(m) => format!("invoke {}({}) {}", m.service, m.key, m.id),
        OutboxMessage::Complete { target, index, .. } => format!("complete {target}#{index}"),
        OutboxMessage::Promise(m) => format!("promise {:?} {}", m.op, m.object),
        OutboxMessage::Attach { target, reply_to } => format!("attach {target} → {}#{}", reply_to.0, reply_to.1),
        OutboxMessage::Cancel { target } => format!("cancel {target}"),
    }
}
