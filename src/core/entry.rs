//! What accepting one SDK entry writes, decided from explicit inputs: its journal row, the
//! state rows it changes, the message it sends (a call, a send, a promise operation, an
//! awakeable's completion), its timer — and what follows once that is durable. No clock, no
//! schema reads, no randomness: the attempt passes the time, the registered services
//! (`Catalog`) and the random bits of any new invocation's id.

use std::collections::BTreeSet;

use super::records::{
    HandlerKind, InvocationRecord, InvokeMessage, OutboxMessage, PromiseMessage, PromiseOp, ServiceKind, TimerRecord,
};
use super::Write;
use crate::ids::{idempotent_id, parse_awakeable_id, workflow_run_id, InvocationId, ObjectId};
use crate::journal::{CompletionResult, Entry, Failure, StateEffect};

/// A handler that can be invoked, as the registered services say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service_kind: ServiceKind,
    pub handler_kind: HandlerKind,
    /// The newest deployment of the service: it takes new invocations.
    pub deployment_id: String,
}

/// Why a target cannot be invoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    Service,
    Handler,
}

/// The registered services, as the planner may see them (the schema in production).
pub trait Catalog {
    fn target(&self, service: &str, handler: &str) -> Result<Target, Missing>;
    fn service_kind(&self, service: &str) -> Option<ServiceKind>;
}

/// Everything the plan of one entry depends on besides the entry.
pub struct EntryInputs<'a> {
    pub id: InvocationId,
    pub record: &'a InvocationRecord,
    pub index: u32,
    pub now_ms: u64,
    pub catalog: &'a dyn Catalog,
    /// Random low half of the id of an invocation this entry creates (a call or send).
    pub fresh_id_bits: u64,
    /// For a clear-all: the state names the object held when the attempt started.
    pub known_state: Vec<String>,
}

/// What follows the entry's commit, besides delivering its message.
#[derive(Clone, Debug, PartialEq)]
pub enum After {
    /// Arm the sleep's timer (its row is in the batch).
    ArmTimer { due_ms: u64, timer: TimerRecord },
    /// The entry was completed in its own batch (a call to an unknown handler): tell the SDK.
    Completed(u32, CompletionResult),
}

/// The plan of one entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The entry as journaled: with the id of the invocation it creates, or its result.
    pub entry: Entry,
    /// Its writes, all of the invocation's partition; the journal row last.
    pub writes: Vec<Write>,
    pub after: Vec<After>,
}

fn bad_request(message: String) -> Failure {
    Failure { code: 400, message }
}

/// Plans `entry`, accepted at `inputs.index` with state effect `effect`. `written` collects
/// every state name this attempt set, so that a clear-all also deletes names the state the
/// attempt started from did not have.
pub fn plan(
    inputs: &EntryInputs<'_>,
    mut entry: Entry,
    effect: &StateEffect,
    written: &mut BTreeSet<String>,
) -> Result<Planned, Failure> {
    let record = inputs.record;
    let me = ObjectId::new(&record.service, &record.key);
    let mut writes = Vec::new();
    let mut after = Vec::new();
    if record.kind.is_exclusive() {
        match effect {
            StateEffect::None => {}
            StateEffect::Set(name, value) => {
                written.insert(name.clone());
                writes.push(Write::State(me.clone(), name.clone(), Some(value.clone())));
            }
            StateEffect::Clear(name) => writes.push(Write::State(me.clone(), name.clone(), None)),
            StateEffect::ClearAll => {
                let names: BTreeSet<&String> = inputs.known_state.iter().chain(written.iter()).collect();
                for name in names {
                    writes.push(Write::State(me.clone(), name.clone(), None));
                }
                written.clear();
            }
        }
    }
    let reply_to = (inputs.id, inputs.index);
    let promise_op = match &entry {
        Entry::GetPromise { name, .. } => Some((name.clone(), PromiseOp::Get)),
        Entry::PeekPromise { name, .. } => Some((name.clone(), PromiseOp::Peek)),
        Entry::CompletePromise {
            name, value, failure, ..
        } => Some((
            name.clone(),
            PromiseOp::Complete(CompletionResult {
                value: value.clone(),
                failure: failure.clone(),
            }),
        )),
        _ => None,
    };
    if let Some((name, op)) = promise_op {
        if inputs.catalog.service_kind(&record.service) != Some(ServiceKind::Workflow) {
            return Err(bad_request(format!(
                "{} is not a workflow: durable promises exist only in workflows",
                record.service
            )));
        }
        let message = PromiseMessage {
            object: me.clone(),
            name,
            op,
            reply_to,
        };
        writes.push(Write::Outbox(OutboxMessage::Promise(message)));
    }
    match &mut entry {
        Entry::Call {
            service,
            handler,
            key,
            value,
            invocation_id,
            result,
            idempotency_key,
            headers,
        } => match invoke_message(
            inputs,
            Callee {
                service,
                handler,
                key,
                input: value,
                idempotency_key: idempotency_key.as_deref(),
                headers,
            },
            Some(reply_to),
            None,
        ) {
            Ok(message) => {
                *invocation_id = Some(message.id);
                writes.push(Write::Outbox(OutboxMessage::Invoke(message)));
            }
            Err(failure) => {
                let completion = CompletionResult {
                    value: None,
                    failure: Some(failure),
                };
                *result = Some(completion.clone());
                after.push(After::Completed(inputs.index, completion));
            }
        },
        Entry::Send {
            service,
            handler,
            key,
            value,
            delay_ms,
            invocation_id,
            idempotency_key,
            headers,
        } => {
            let not_before = match delay_ms.filter(|d| *d > 0) {
                Some(d) => Some(crate::journal::due_at_ms(inputs.now_ms, d)?),
                None => None,
            };
            let callee = Callee {
                service,
                handler,
                key,
                input: value,
                idempotency_key: idempotency_key.as_deref(),
                headers,
            };
            let message = invoke_message(inputs, callee, None, not_before)?;
            *invocation_id = Some(message.id);
            writes.push(Write::Outbox(OutboxMessage::Invoke(message)));
        }
        Entry::Sleep { wake_up_at_ms, .. } => {
            let timer = TimerRecord::Wake {
                invocation: inputs.id,
                index: inputs.index,
            };
            writes.push(Write::Timer(*wake_up_at_ms, timer.clone()));
            after.push(After::ArmTimer {
                due_ms: *wake_up_at_ms,
                timer,
            });
        }
        Entry::AttachInvocation { invocation_id, .. } => {
            let message = OutboxMessage::Attach {
                target: *invocation_id,
                reply_to,
            };
            writes.push(Write::Outbox(message));
        }
        Entry::CancelInvocation { invocation_id } => {
            writes.push(Write::Outbox(OutboxMessage::Cancel { target: *invocation_id }));
        }
        Entry::CompleteAwakeable { id, value, failure } => {
            let (target, index) = parse_awakeable_id(id).map_err(|e| bad_request(e.to_string()))?;
            let result = CompletionResult {
                value: value.clone(),
                failure: failure.clone(),
            };
            writes.push(Write::Outbox(OutboxMessage::Complete { target, index, result }));
        }
        _ => {}
    }
    writes.push(Write::Entry(inputs.id, inputs.index, entry.clone()));
    Ok(Planned { entry, writes, after })
}

/// What a `call` or `send` entry names.
struct Callee<'e> {
    service: &'e str,
    handler: &'e str,
    key: &'e str,
    input: &'e [u8],
    idempotency_key: Option<&'e str>,
    headers: &'e crate::journal::Headers,
}

/// The message that creates the callee of a `call` or `send`; the target must be registered.
fn invoke_message(
    inputs: &EntryInputs<'_>,
    callee: Callee<'_>,
    caller: Option<(InvocationId, u32)>,
    not_before_ms: Option<u64>,
) -> Result<InvokeMessage, Failure> {
    let Callee {
        service,
        handler,
        key,
        input,
        idempotency_key,
        headers,
    } = callee;
    let record = inputs.record;
    let target = inputs.catalog.target(service, handler).map_err(|missing| Failure {
        code: 404,
        message: match missing {
            Missing::Service => format!(
                "service {service:?} not found (called from {}/{})",
                record.service, record.handler
            ),
            Missing::Handler => format!("handler {handler:?} not found in service {service:?}"),
        },
    })?;
    let key = if target.service_kind == ServiceKind::Service {
        String::new()
    } else {
        key.to_owned()
    };
    let object = ObjectId::new(service, &key);
    let stateless = target.handler_kind == HandlerKind::Stateless;
    let id = match (target.handler_kind, idempotency_key) {
        (HandlerKind::Workflow, _) => workflow_run_id(&object),
        (_, Some(k)) => idempotent_id(service, handler, &key, k, stateless),
        (HandlerKind::Stateless, None) => {
            InvocationId::from_parts(inputs.fresh_id_bits, inputs.fresh_id_bits.rotate_left(32))
        }
        _ => InvocationId::from_parts(object.partition_key(), inputs.fresh_id_bits),
    };
    // Only a call waits on its callee, so only calls extend the chain of held locks; a send
    // starts a fresh one (a delayed self-send is no cycle).
    let mut call_chain = Vec::new();
    if caller.is_some() {
        call_chain = record.call_chain.clone();
        if record.kind.is_exclusive() {
            call_chain.push(ObjectId::new(&record.service, &record.key));
        }
    }
    Ok(InvokeMessage {
        id,
        service: service.to_owned(),
        handler: handler.to_owned(),
        key,
        kind: target.handler_kind,
        deployment_id: target.deployment_id,
        input: input.to_vec(),
        caller,
        call_chain,
        not_before_ms,
        idempotency_key: idempotency_key.map(str::to_owned),
        headers: headers.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::invoke;
    use std::collections::HashMap;

    /// A service's kind and its handlers with their kinds.
    type ServiceRow = (ServiceKind, Vec<(&'static str, HandlerKind)>);

    /// Services as a table, by name.
    struct Services(HashMap<&'static str, ServiceRow>);

    impl Catalog for Services {
        fn target(&self, service: &str, handler: &str) -> Result<Target, Missing> {
            let (kind, handlers) = self.0.get(service).ok_or(Missing::Service)?;
            let (_, handler_kind) = handlers.iter().find(|(h, _)| *h == handler).ok_or(Missing::Handler)?;
            Ok(Target {
                service_kind: *kind,
                handler_kind: *handler_kind,
                deployment_id: format!("dp_{service}"),
            })
        }

        fn service_kind(&self, service: &str) -> Option<ServiceKind> {
            self.0.get(service).map(|(kind, _)| *kind)
        }
    }

    fn services() -> Services {
        Services(HashMap::from([
            (
                "Counter",
                (ServiceKind::VirtualObject, vec![("add", HandlerKind::Exclusive)]),
            ),
            (
                "Greeter",
                (ServiceKind::Service, vec![("greet", HandlerKind::Stateless)]),
            ),
            ("Signup", (ServiceKind::Workflow, vec![("run", HandlerKind::Workflow)])),
        ]))
    }

    /// Plans `entry` as entry 3 of a `kind` invocation of `service` at time 1,000.
    fn plan_as(service: &str, kind: HandlerKind, entry: Entry, effect: StateEffect) -> Result<Planned, Failure> {
        let (id, mut record, _) = invoke(kind, "k").into_invocation_at(5);
        let id = InvocationId::from_parts(id.partition_key(), 1); // the fixture's is random
        record.service = service.into();
        let catalog = services();
        let inputs = EntryInputs {
            id,
            record: &record,
            index: 3,
            now_ms: 1_000,
            catalog: &catalog,
            fresh_id_bits: 0xABCD,
            known_state: vec!["old".into()],
        };
        plan(&inputs, entry, &effect, &mut BTreeSet::from(["mine".to_string()]))
    }

    fn call(service: &str, handler: &str) -> Entry {
        Entry::Call {
            idempotency_key: None,
            headers: Default::default(),
            service: service.into(),
            handler: handler.into(),
            key: "k2".into(),
            value: b"x".to_vec(),
            invocation_id: None,
            result: None,
        }
    }

    fn send(delay_ms: Option<u64>) -> Entry {
        Entry::Send {
            idempotency_key: None,
            headers: Default::default(),
            service: "Counter".into(),
            handler: "add".into(),
            key: "k2".into(),
            value: b"x".to_vec(),
            delay_ms,
            invocation_id: None,
        }
    }

    fn call_to_nowhere_as_send() -> Entry {
        let Entry::Send {
            handler, key, value, ..
        } = send(None)
        else {
            unreachable!()
        };
        Entry::Send {
            idempotency_key: None,
            headers: Default::default(),
            service: "Nope".into(),
            handler,
            key,
            value,
            delay_ms: None,
            invocation_id: None,
        }
    }

    /// A short name for each write, to compare plans as a table.
    fn shapes(p: &Planned) -> Vec<String> {
        p.writes
            .iter()
            .map(|w| match w {
                Write::State(_, name, Some(_)) => format!("set {name}"),
                Write::State(_, name, None) => format!("clear {name}"),
                Write::Entry(_, index, _) => format!("entry {index}"),
                Write::Timer(due, _) => format!("timer {due}"),
                Write::Outbox(OutboxMessage::Invoke(m)) => {
                    format!("invoke {}/{} at {:?}", m.service, m.key, m.not_before_ms)
                }
                Write::Outbox(OutboxMessage::Promise(m)) => format!("promise {}", m.name),
                Write::Outbox(OutboxMessage::Complete { index, .. }) => format!("complete {index}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn writes_table() {
        let set = StateEffect::Set("n".into(), b"1".to_vec());
        let awakeable = crate::ids::awakeable_id(&InvocationId::from_parts(7, 7), 2);
        // (service, kind, entry, state effect) → writes, journal row last
        let cases: Vec<(&str, HandlerKind, Entry, StateEffect, Vec<&str>)> = vec![
            (
                "Counter",
                HandlerKind::Exclusive,
                Entry::SetState {
                    name: "n".into(),
                    value: b"1".to_vec(),
                },
                set.clone(),
                vec!["set n", "entry 3"],
            ),
            // Shared handlers write no state (the SDK-entry check refuses them before this).
            (
                "Counter",
                HandlerKind::Shared,
                Entry::SetState {
                    name: "n".into(),
                    value: b"1".to_vec(),
                },
                set,
                vec!["entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                Entry::ClearAllState,
                StateEffect::ClearAll,
                vec!["clear mine", "clear old", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                call("Counter", "add"),
                StateEffect::None,
                vec!["invoke Counter/k2 at None", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                call("Greeter", "greet"),
                StateEffect::None,
                vec!["invoke Greeter/ at None", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                call("Nope", "x"),
                StateEffect::None,
                vec!["entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                send(Some(500)),
                StateEffect::None,
                vec!["invoke Counter/k2 at Some(1500)", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                send(Some(0)),
                StateEffect::None,
                vec!["invoke Counter/k2 at None", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                Entry::Sleep {
                    wake_up_at_ms: 9_000,
                    result: None,
                },
                StateEffect::None,
                vec!["timer 9000", "entry 3"],
            ),
            (
                "Signup",
                HandlerKind::Workflow,
                Entry::GetPromise {
                    name: "p".into(),
                    result: None,
                },
                StateEffect::None,
                vec!["promise p", "entry 3"],
            ),
            (
                "Counter",
                HandlerKind::Exclusive,
                Entry::CompleteAwakeable {
                    id: awakeable,
                    value: Some(b"v".to_vec()),
                    failure: None,
                },
                StateEffect::None,
                vec!["complete 2", "entry 3"],
            ),
        ];
        for (service, kind, entry, effect, expected) in cases {
            let what = format!("{service} {kind:?} {entry:?}");
            let planned = plan_as(service, kind, entry, effect).unwrap_or_else(|f| panic!("{what}: {f:?}"));
            assert_eq!(shapes(&planned), expected, "{what}");
        }
    }

    #[test]
    fn refusals_table() {
        // (service, entry) → refused with code
        let cases = vec![
            (
                "Counter",
                Entry::GetPromise {
                    name: "p".into(),
                    result: None,
                },
                400,
            ),
            ("Counter", send(Some(crate::journal::DELAY_MS_MAX + 1)), 400),
            (
                "Counter",
                Entry::CompleteAwakeable {
                    id: "awk_nonsense".into(),
                    value: None,
                    failure: None,
                },
                400,
            ),
            ("Counter", call_to_nowhere_as_send(), 404),
        ];
        for (service, entry, code) in cases {
            let what = format!("{service} {entry:?}");
            match plan_as(service, HandlerKind::Exclusive, entry, StateEffect::None) {
                Err(f) => assert_eq!(f.code, code, "{what}"),
                Ok(p) => panic!("{what}: planned {:?}", shapes(&p)),
            }
        }
    }

    #[test]
    fn a_call_names_its_callee_and_its_lock_chain() {
        let planned = plan_as(
            "Counter",
            HandlerKind::Exclusive,
            call("Counter", "add"),
            StateEffect::None,
        )
        .unwrap();
        let Entry::Call {
            invocation_id: Some(callee),
            ..
        } = &planned.entry
        else {
            panic!("callee id journaled: {:?}", planned.entry)
        };
        let Write::Outbox(OutboxMessage::Invoke(message)) = &planned.writes[0] else {
            panic!("{:?}", planned.writes)
        };
        // The id comes from the inputs: the callee's partition key and the given random bits.
        assert_eq!(
            *callee,
            InvocationId::from_parts(ObjectId::new("Counter", "k2").partition_key(), 0xABCD)
        );
        assert_eq!(message.id, *callee);
        assert_eq!(message.caller.map(|(_, i)| i), Some(3));
        assert_eq!(message.call_chain, vec![ObjectId::new("Counter", "k")]);
        assert_eq!(message.deployment_id, "dp_Counter");
        // A call to a workflow gets the run's deterministic id.
        let planned = plan_as(
            "Counter",
            HandlerKind::Exclusive,
            call("Signup", "run"),
            StateEffect::None,
        )
        .unwrap();
        let Entry::Call {
            invocation_id: Some(run),
            ..
        } = &planned.entry
        else {
            panic!()
        };
        assert_eq!(*run, workflow_run_id(&ObjectId::new("Signup", "k2")));
    }

    #[test]
    fn a_call_to_an_unknown_handler_completes_at_once() {
        let planned = plan_as(
            "Counter",
            HandlerKind::Exclusive,
            call("Counter", "nope"),
            StateEffect::None,
        )
        .unwrap();
        let Entry::Call {
            result: Some(result),
            invocation_id: None,
            ..
        } = &planned.entry
        else {
            panic!("{:?}", planned.entry)
        };
        assert_eq!(result.failure.as_ref().map(|f| f.code), Some(404));
        assert_eq!(planned.after, vec![After::Completed(3, result.clone())]);
    }

    #[test]
    fn the_same_inputs_give_the_same_plan() {
        let a = plan_as("Counter", HandlerKind::Exclusive, send(Some(5)), StateEffect::None).unwrap();
        let b = plan_as("Counter", HandlerKind::Exclusive, send(Some(5)), StateEffect::None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn options_of_calls_and_sends_table() {
        let headers = crate::journal::Headers::from([("x-tenant".to_string(), "t1".to_string())]);
        let with = |entry: Entry, idem: Option<&str>| match entry {
            Entry::Call { .. } | Entry::Send { .. } => {
                let mut entry = entry;
                if let Entry::Call {
                    idempotency_key,
                    headers: h,
                    ..
                }
                | Entry::Send {
                    idempotency_key,
                    headers: h,
                    ..
                } = &mut entry
                {
                    *idempotency_key = idem.map(str::to_owned);
                    *h = headers.clone();
                }
                entry
            }
            other => other,
        };
        // (entry, idempotency key) → the callee's id: derived from target and key, or fresh
        let cases = [
            (
                call("Counter", "add"),
                Some("order-1"),
                Some(idempotent_id("Counter", "add", "k2", "order-1", false)),
            ),
            (
                send(None),
                Some("order-1"),
                Some(idempotent_id("Counter", "add", "k2", "order-1", false)),
            ),
            (
                call("Greeter", "greet"),
                Some("g"),
                Some(idempotent_id("Greeter", "greet", "", "g", true)),
            ),
            (call("Counter", "add"), None, None),
        ];
        for (entry, idem, want_id) in cases {
            let planned = plan_as("Counter", HandlerKind::Exclusive, with(entry, idem), StateEffect::None).unwrap();
            let Some(Write::Outbox(OutboxMessage::Invoke(m))) = planned.writes.first() else {
                panic!("invoke first: {planned:?}")
            };
            assert_eq!(m.idempotency_key.as_deref(), idem);
            assert_eq!(m.headers, headers);
            match want_id {
                Some(id) => assert_eq!(m.id, id, "{idem:?}"),
                None => assert_eq!(m.id.0[8..], 0xABCDu64.to_be_bytes()),
            }
            // The same id the journaled entry names (and the SDK is told).
            let (Entry::Call { invocation_id, .. } | Entry::Send { invocation_id, .. }) = &planned.entry else {
                panic!("a call or send")
            };
            assert_eq!(*invocation_id, Some(m.id));
        }
    }

    #[test]
    fn attach_and_cancel_send_their_messages() {
        let target = InvocationId::from_parts(9, 9);
        let attach = Entry::AttachInvocation {
            invocation_id: target,
            result: None,
        };
        let planned = plan_as("Greeter", HandlerKind::Stateless, attach, StateEffect::None).unwrap();
        match planned.writes.first() {
            Some(Write::Outbox(OutboxMessage::Attach { target: t, reply_to })) => {
                assert_eq!(*t, target);
                assert_eq!(reply_to.1, 3, "answers entry 3");
            }
            other => panic!("unexpected {other:?}"),
        }
        let cancel = Entry::CancelInvocation { invocation_id: target };
        let planned = plan_as("Greeter", HandlerKind::Stateless, cancel, StateEffect::None).unwrap();
        assert!(matches!(
            planned.writes.first(),
            Some(Write::Outbox(OutboxMessage::Cancel { target: t })) if *t == target
        ));
        assert!(planned.after.is_empty());
    }
}
