//! Journal entries and the pure rules for accepting them. No I/O, no clock, no randomness.
//!
//! The same types are the wire format of ENTRY frames (see `docs/protocol.md`) and the
//! storage format of the `journal` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Headers handed to an invocation (ingress request headers, or a call's or send's own).
pub type Headers = BTreeMap<String, String>;

/// Limits of a call's or send's options, the same at the ingress.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 256;
pub const HEADERS_MAX_COUNT: usize = 64;
pub const HEADERS_MAX_BYTES: usize = 16 * 1024;

/// Why `headers` are refused, if they are over the limits.
pub fn check_headers(headers: &Headers) -> Result<(), String> {
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if headers.len() > HEADERS_MAX_COUNT || bytes > HEADERS_MAX_BYTES {
        return Err(format!(
            "{} headers of {bytes} bytes are over the limit of {HEADERS_MAX_COUNT} headers and {HEADERS_MAX_BYTES} bytes",
            headers.len()
        ));
    }
    Ok(())
}

/// Why an idempotency key is refused, if it is.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_BYTES {
        return Err(format!(
            "idempotency key must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} bytes"
        ));
    }
    Ok(())
}

/// What runs an invocation and how it may touch state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// Virtual object handler holding the key's lock; may write state.
    Exclusive,
    /// Virtual object handler that only reads state; runs concurrently.
    Shared,
    /// Handler of a stateless service.
    Stateless,
    /// The run handler of a workflow: exclusive, once per workflow key.
    Workflow,
}

impl HandlerKind {
    /// Holds its object's lock (runs through the inbox, may write state).
    pub fn is_exclusive(self) -> bool {
        matches!(self, Self::Exclusive | Self::Workflow)
    }
}

/// A terminal failure: of a handler, of a `run` block, or of the invocation as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: u16,
    pub message: String,
}

/// The result of an invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Failure(Failure),
}

/// The result that completes a completable entry: a value, a failure, or nothing (done).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionResult {
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl CompletionResult {
    pub fn failure(code: u16, message: impl Into<String>) -> Self {
        Self {
            value: None,
            failure: Some(Failure {
                code,
                message: message.into(),
            }),
        }
    }
}

impl From<&Output> for CompletionResult {
    fn from(o: &Output) -> Self {
        match o {
            Output::Value(v) => Self {
                value: Some(v.clone()),
                failure: None,
            },
            Output::Failure(f) => Self {
                value: None,
                failure: Some(f.clone()),
            },
        }
    }
}

/// Failure codes the runtime itself assigns (user codes pass through unchanged).
pub mod codes {
    /// `await` with a timeout expired (raised by the SDK).
    pub const TIMEOUT: u16 = 408;
    /// The invocation was cancelled; also: awakeable or promise already completed.
    pub const CANCELLED: u16 = 409;
    pub const ALREADY_COMPLETED: u16 = 409;
    /// The invocation was killed.
    pub const KILLED: u16 = 410;
    /// A call would wait on an object locked by an invocation up its own call chain.
    pub const CALL_CYCLE: u16 = 508;
    /// A shared handler tried to write state.
    pub const STATE_WRITE_IN_SHARED: u16 = 409;
    /// Retries exhausted.
    pub const RETRIES_EXHAUSTED: u16 = 500;
    /// Replayed code issued a different command than the journal holds.
    pub const JOURNAL_MISMATCH: u16 = 570;
    /// The SDK endpoint broke the protocol (bad frame, bad index, garbage).
    pub const PROTOCOL_VIOLATION: u16 = 571;
}

/// Longest delay of a delayed send (ten years): beyond it `now + delay` is refused, never
/// wrapped around or clamped into "at once".
pub const DELAY_MS_MAX: u64 = 10 * 365 * 24 * 3_600_000;

/// When a message sent at `now_ms` with `delay_ms` becomes due; `Err` if the delay is out of range.
pub fn due_at_ms(now_ms: u64, delay_ms: u64) -> Result<u64, Failure> {
    if delay_ms > DELAY_MS_MAX {
        return Err(Failure {
            code: 400,
            message: format!(
                "delay of {delay_ms} ms is beyond the longest supported delay ({DELAY_MS_MAX} ms, ten years)"
            ),
        });
    }
    now_ms.checked_add(delay_ms).ok_or_else(|| Failure {
        code: 400,
        message: format!("delay of {delay_ms} ms overflows the clock"),
    })
}

/// One journal entry. `kind` is the MessagePack tag; see the table in `docs/protocol.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Input {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    GetState {
        name: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u8>>,
    },
    GetStateKeys {
        keys: Vec<String>,
    },
    SetState {
        name: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    ClearState {
        name: String,
    },
    ClearAllState,
    Run {
        name: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
    },
    Output {
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
    },
    Call {
        service: String,
        handler: String,
        #[serde(default)]
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The callee, assigned by the runtime when the entry is journaled (the dedup key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invocation_id: Option<crate::ids::InvocationId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: Headers,
    },
    Send {
        service: String,
        handler: String,
        #[serde(default)]
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invocation_id: Option<crate::ids::InvocationId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: Headers,
    },
    /// Wait for the output of another invocation (a handle's `attach`).
    AttachInvocation {
        #[serde(with = "crate::ids::id_text")]
        invocation_id: crate::ids::InvocationId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    /// Ask another invocation to cancel (a handle's `cancel`).
    CancelInvocation {
        #[serde(with = "crate::ids::id_text")]
        invocation_id: crate::ids::InvocationId,
    },
    Sleep {
        wake_up_at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    Awakeable {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    CompleteAwakeable {
        id: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
    },
    GetPromise {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    PeekPromise {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    CompletePromise {
        name: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CompletionResult>,
    },
    Select {
        winner: u32,
    },
    Cancelled,
}

/// An ENTRY frame's body: the index, then the entry's own fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedEntry {
    pub index: u32,
    #[serde(flatten)]
    pub entry: Entry,
}

impl Entry {
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Input { .. } => "input",
            Entry::GetState { .. } => "get_state",
            Entry::GetStateKeys { .. } => "get_state_keys",
            Entry::SetState { .. } => "set_state",
            Entry::ClearState { .. } => "clear_state",
            Entry::ClearAllState => "clear_all_state",
            Entry::Run { .. } => "run",
            Entry::Output { .. } => "output",
            Entry::Call { .. } => "call",
            Entry::Send { .. } => "send",
            Entry::AttachInvocation { .. } => "attach_invocation",
            Entry::CancelInvocation { .. } => "cancel_invocation",
            Entry::Sleep { .. } => "sleep",
            Entry::Awakeable { .. } => "awakeable",
            Entry::CompleteAwakeable { .. } => "complete_awakeable",
            Entry::GetPromise { .. } => "get_promise",
            Entry::PeekPromise { .. } => "peek_promise",
            Entry::CompletePromise { .. } => "complete_promise",
            Entry::Select { .. } => "select",
            Entry::Cancelled => "cancelled",
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Entry::GetState { name, .. }
            | Entry::SetState { name, .. }
            | Entry::ClearState { name }
            | Entry::Run { name, .. }
            | Entry::GetPromise { name, .. }
            | Entry::PeekPromise { name, .. }
            | Entry::CompletePromise { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The completion slot of a completable entry (`None` for other kinds).
    pub fn result_slot(&mut self) -> Option<&mut Option<CompletionResult>> {
        match self {
            Entry::Call { result, .. }
            | Entry::AttachInvocation { result, .. }
            | Entry::Sleep { result, .. }
            | Entry::Awakeable { result }
            | Entry::GetPromise { result, .. }
            | Entry::PeekPromise { result, .. }
            | Entry::CompletePromise { result, .. } => Some(result),
            _ => None,
        }
    }

    /// The completion slot, read-only (`None` for kinds that are never completed).
    fn completion(&self) -> Option<&Option<CompletionResult>> {
        match self {
            Entry::Call { result, .. }
            | Entry::AttachInvocation { result, .. }
            | Entry::Sleep { result, .. }
            | Entry::Awakeable { result }
            | Entry::GetPromise { result, .. }
            | Entry::PeekPromise { result, .. }
            | Entry::CompletePromise { result, .. } => Some(result),
            _ => None,
        }
    }

    /// The result, if this entry is completable and completed.
    pub fn result(&self) -> Option<&CompletionResult> {
        self.completion().and_then(Option::as_ref)
    }

    /// A completable entry that has no result yet.
    pub fn awaits_completion(&self) -> bool {
        self.completion().is_some_and(Option::is_none)
    }

    /// Entries the SDK waits on: the runtime acknowledges them right away.
    pub fn needs_ack(&self) -> bool {
        !matches!(
            self,
            Entry::GetState { .. }
                | Entry::GetStateKeys { .. }
                | Entry::SetState { .. }
                | Entry::ClearState { .. }
                | Entry::ClearAllState
                | Entry::Select { .. }
                | Entry::Cancelled
        )
    }

    fn writes_state(&self) -> bool {
        matches!(
            self,
            Entry::SetState { .. } | Entry::ClearState { .. } | Entry::ClearAllState
        )
    }
}

/// What accepting an SDK entry does to the object's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEffect {
    None,
    Set(String, Vec<u8>),
    Clear(String),
    ClearAll,
}

/// Why an entry from the SDK is refused; each ends the invocation with this failure.
pub fn check_sdk_entry(kind: HandlerKind, expected_index: u32, frame: &IndexedEntry) -> Result<StateEffect, Failure> {
    if frame.index != expected_index {
        return Err(Failure {
            code: codes::PROTOCOL_VIOLATION,
            message: format!(
                "protocol violation: SDK sent entry {} ({}) where index {expected_index} was expected",
                frame.index,
                frame.entry.kind()
            ),
        });
    }
    let entry = &frame.entry;
    if matches!(entry, Entry::Input { .. }) {
        return Err(Failure {
            code: codes::PROTOCOL_VIOLATION,
            message: format!("protocol violation: SDK sent an input entry at index {}", frame.index),
        });
    }
    if entry.result().is_some() {
        return Err(Failure {
            code: codes::PROTOCOL_VIOLATION,
            message: format!(
                "protocol violation: SDK sent {} at index {} with a result; results come from the runtime",
                entry.kind(),
                frame.index
            ),
        });
    }
    if let Entry::Run { value, failure, .. }
    | Entry::Output { value, failure }
    | Entry::CompleteAwakeable { value, failure, .. }
    | Entry::CompletePromise { value, failure, .. } = entry
    {
        if value.is_some() == failure.is_some() {
            return Err(Failure {
                code: codes::PROTOCOL_VIOLATION,
                message: format!(
                    "protocol violation: {} entry at index {} must carry exactly one of value or failure",
                    entry.kind(),
                    frame.index
                ),
            });
        }
    }
    if let Entry::Call {
        idempotency_key,
        headers,
        ..
    }
    | Entry::Send {
        idempotency_key,
        headers,
        ..
    } = entry
    {
        let refused = idempotency_key
            .as_deref()
            .map_or(Ok(()), check_idempotency_key)
            .and_then(|()| check_headers(headers));
        if let Err(why) = refused {
            return Err(Failure {
                code: 400,
                message: format!("{} at index {}: {why}", entry.kind(), frame.index),
            });
        }
    }
    if entry.writes_state() && !kind.is_exclusive() {
        let what = match kind {
            HandlerKind::Shared => "a shared handler",
            _ => "a stateless service handler",
        };
        return Err(Failure {
            code: codes::STATE_WRITE_IN_SHARED,
            message: format!(
                "{what} cannot write state ({} at index {}): state writes are only allowed in exclusive handlers",
                entry.kind(),
                frame.index
            ),
        });
    }
    Ok(match entry {
        Entry::SetState { name, value } => StateEffect::Set(name.clone(), value.clone()),
        Entry::ClearState { name } => StateEffect::Clear(name.clone()),
        Entry::ClearAllState => StateEffect::ClearAll,
        _ => StateEffect::None,
    })
}

/// The invocation's output, if this entry ends it.
pub fn output_of(entry: &Entry) -> Option<Output> {
    match entry {
        Entry::Output { value: Some(v), .. } => Some(Output::Value(v.clone())),
        Entry::Output { failure: Some(f), .. } => Some(Output::Failure(f.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_beyond_range_are_refused_not_wrapped() {
        let now = 1_700_000_000_000;
        for (delay, due) in [
            (0, Some(now)),
            (10_000, Some(now + 10_000)),
            (DELAY_MS_MAX, Some(now + DELAY_MS_MAX)),
            (DELAY_MS_MAX + 1, None),
            (u64::MAX, None),
        ] {
            assert_eq!(due_at_ms(now, delay).ok(), due, "delay {delay}");
        }
        assert!(due_at_ms(u64::MAX - 5, 10).is_err());
    }

    fn at(index: u32, entry: Entry) -> IndexedEntry {
        IndexedEntry { index, entry }
    }

    #[test]
    fn rules_table() {
        let set = Entry::SetState {
            name: "n".into(),
            value: vec![1],
        };
        let run_ok = Entry::Run {
            name: "r".into(),
            value: Some(vec![]),
            failure: None,
        };
        let run_both = Entry::Run {
            name: "r".into(),
            value: Some(vec![]),
            failure: Some(Failure {
                code: 1,
                message: String::new(),
            }),
        };
        let cases: Vec<(HandlerKind, u32, IndexedEntry, Result<(), u16>)> = vec![
            (HandlerKind::Exclusive, 1, at(1, set.clone()), Ok(())),
            (HandlerKind::Workflow, 1, at(1, set.clone()), Ok(())),
            (
                HandlerKind::Shared,
                1,
                at(1, set.clone()),
                Err(codes::STATE_WRITE_IN_SHARED),
            ),
            (
                HandlerKind::Stateless,
                1,
                at(1, Entry::ClearAllState),
                Err(codes::STATE_WRITE_IN_SHARED),
            ),
            (HandlerKind::Exclusive, 2, at(1, set), Err(codes::PROTOCOL_VIOLATION)),
            (HandlerKind::Shared, 1, at(1, run_ok), Ok(())),
            (HandlerKind::Shared, 1, at(1, run_both), Err(codes::PROTOCOL_VIOLATION)),
            (
                HandlerKind::Shared,
                1,
                at(1, Entry::Input { value: vec![] }),
                Err(codes::PROTOCOL_VIOLATION),
            ),
        ];
        for (kind, expected, frame, want) in cases {
            let got = check_sdk_entry(kind, expected, &frame).map(|_| ()).map_err(|f| f.code);
            assert_eq!(got, want, "{kind:?} {frame:?}");
        }
    }

    #[test]
    fn entry_frames_round_trip_as_named_maps() {
        let frame = at(
            3,
            Entry::Run {
                name: "step-1".into(),
                value: Some(b"\"x\"".to_vec()),
                failure: None,
            },
        );
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        let back: IndexedEntry = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, frame);
        let get = at(
            1,
            Entry::GetState {
                name: "count".into(),
                value: None,
            },
        );
        let back: IndexedEntry = rmp_serde::from_slice(&rmp_serde::to_vec_named(&get).unwrap()).unwrap();
        assert_eq!(back, get);
    }

    #[test]
    fn options_over_the_limits_are_refused() {
        let call = |idempotency_key: Option<String>, headers: Headers| Entry::Call {
            service: "S".into(),
            handler: "h".into(),
            key: String::new(),
            value: vec![],
            invocation_id: None,
            result: None,
            idempotency_key,
            headers,
        };
        let many: Headers = (0..=HEADERS_MAX_COUNT).map(|i| (format!("h{i}"), "v".into())).collect();
        let big = Headers::from([("h".to_string(), "v".repeat(HEADERS_MAX_BYTES))]);
        let cases = [
            (call(Some("k".into()), Headers::new()), Ok(())),
            (call(Some(String::new()), Headers::new()), Err(400)),
            (
                call(Some("k".repeat(IDEMPOTENCY_KEY_MAX_BYTES + 1)), Headers::new()),
                Err(400),
            ),
            (call(None, many), Err(400)),
            (call(None, big), Err(400)),
        ];
        for (entry, want) in cases {
            let got = check_sdk_entry(HandlerKind::Stateless, 1, &at(1, entry.clone()))
                .map(|_| ())
                .map_err(|f| f.code);
            assert_eq!(got, want, "{entry:?}");
        }
    }

    #[test]
    fn attach_and_cancel_name_their_target_as_text() {
        let id: crate::ids::InvocationId = "inv_0123456789abcdef0123456789abcdef".parse().unwrap();
        for entry in [
            Entry::AttachInvocation {
                invocation_id: id,
                result: None,
            },
            Entry::CancelInvocation { invocation_id: id },
        ] {
            let bytes = rmp_serde::to_vec_named(&at(4, entry)).unwrap();
            let map: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(map["invocation_id"], "inv_0123456789abcdef0123456789abcdef");
            let back: IndexedEntry = rmp_serde::from_slice(&bytes).unwrap();
            assert!(back.entry.needs_ack());
        }
    }
}
