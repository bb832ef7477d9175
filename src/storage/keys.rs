//! Byte layout of every storage key. Big-endian numbers, partition id first, so one
//! partition's rows in a table are one contiguous key range (to move or snapshot it).
//!
//! These layouts are on-disk format: never change an existing one; add new tables instead.

use crate::ids::{partition_of, InvocationId, ObjectId};

fn push_str(out: &mut Vec<u8>, s: &str) {
    // u16 length prefix keeps (service, key) pairs unambiguous and prefix-scannable.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take_str<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    if bytes.len() < 2 {
        return None;
    }
    let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    let s = bytes.get(2..2 + len)?;
    *bytes = &bytes[2 + len..];
    std::str::from_utf8(s).ok()
}

/// `invocations`: `[partition u16][id 16]`.
pub fn invocation(id: &InvocationId) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&id.partition().to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

/// `journal`: `[partition u16][id 16][index u32]`.
pub fn journal_entry(id: &InvocationId, index: u32) -> Vec<u8> {
    let mut k = invocation(id);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Prefix of all journal entries of one invocation.
pub fn journal_prefix(id: &InvocationId) -> Vec<u8> {
    invocation(id)
}

/// `[partition u16][service str16][key str16]`: prefix of an object's rows in `state` and `inbox`.
pub fn object_prefix(object: &ObjectId) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + object.service.len() + object.key.len());
    k.extend_from_slice(&partition_of(object.partition_key()).to_be_bytes());
    push_str(&mut k, &object.service);
    push_str(&mut k, &object.key);
    k
}

/// `state`: object prefix, then the state entry's name bytes.
pub fn state_entry(object: &ObjectId, name: &str) -> Vec<u8> {
    let mut k = object_prefix(object);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `inbox`: object prefix, then the entry's sequence number (u64).
pub fn inbox_entry(object: &ObjectId, seq: u64) -> Vec<u8> {
    let mut k = object_prefix(object);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a `state` or `inbox` key into its object and the rest.
pub fn split_object_key(key: &[u8]) -> Option<(ObjectId, &[u8])> {
    let mut rest = key.get(2..)?;
    let service = take_str(&mut rest)?.to_owned();
    let object_key = take_str(&mut rest)?.to_owned();
    Some((
        ObjectId {
            service,
            key: object_key,
        },
        rest,
    ))
}

/// `idempotency`: `[partition u16][service str16][key str16][handler str16][idempotency key]`.
pub fn idempotency(partition_key: u64, target: &Target<'_>, idempotency_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + idempotency_key.len());
    k.extend_from_slice(&partition_of(partition_key).to_be_bytes());
    push_str(&mut k, target.service);
    push_str(&mut k, target.key);
    push_str(&mut k, target.handler);
    k.extend_from_slice(idempotency_key.as_bytes());
    k
}

/// The (service, key, handler) an idempotency key is scoped to.
pub struct Target<'a> {
    pub service: &'a str,
    pub key: &'a str,
    pub handler: &'a str,
}

/// `outbox`: `[partition u16][sequence u64]`.
pub fn outbox(partition: u16, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The row key of `timer`, due at `due_ms`.
pub fn timer_row(due_ms: u64, timer: &crate::core::records::TimerRecord) -> Vec<u8> {
    use crate::core::records::TimerRecord;
    match timer {
        TimerRecord::Wake { invocation, index } => self::timer(invocation, due_ms, *index),
        TimerRecord::Activate { invocation } => self::timer(invocation, due_ms, u32::MAX),
    }
}

/// `timers`: `[partition u16][due ms u64][invocation id 16][index u32]`, so each partition's
/// timers are ordered by due time.
pub fn timer(id: &InvocationId, due_ms: u64, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(30);
    k.extend_from_slice(&id.partition().to_be_bytes());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(&id.0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Due time of a `timers` key.
pub fn timer_due(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(2..10)?.try_into().ok()?))
}

/// `unfinished` (index): `[partition u16][invocation id 16]`, empty value. One row per
/// invocation whose record is not finished (scheduled ones included), so recovery reads live
/// work only. The same bytes as the invocation's `invocations` key.
pub fn unfinished(id: &InvocationId) -> Vec<u8> {
    invocation(id)
}

/// Invocation id of an `unfinished` key.
pub fn unfinished_id(key: &[u8]) -> Option<InvocationId> {
    Some(InvocationId(key.get(2..18)?.try_into().ok()?))
}

/// `expiry` (index): `[partition u16][expires at ms u64][invocation id 16]`, empty value. One row
/// per finished invocation with a retention deadline, so each partition's rows are ordered by
/// deadline and the sweep reads only what has expired.
pub fn expiry(id: &InvocationId, expires_at_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.extend_from_slice(&id.partition().to_be_bytes());
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

/// End (exclusive) of the `expiry` rows of `partition` that expire at or before `now_ms`.
pub fn expiry_until(partition: u16, now_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
    k
}

/// Deadline and invocation id of an `expiry` key.
pub fn split_expiry(key: &[u8]) -> Option<(u64, InvocationId)> {
    if key.len() != 26 {
        return None;
    }
    let at = u64::from_be_bytes(key[2..10].try_into().ok()?);
    Some((at, InvocationId(key[10..26].try_into().ok()?)))
}

/// `promises`: object prefix, then the promise name.
pub fn promise(object: &ObjectId, name: &str) -> Vec<u8> {
    state_entry(object, name)
}

/// `deployments`: the deployment id (cluster metadata, not partitioned).
pub fn deployment(id: &str) -> Vec<u8> {
    id.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_split_back() {
        let object = ObjectId::new("Counter", "k/1");
        let key = inbox_entry(&object, 7);
        let (parsed, rest) = split_object_key(&key).unwrap();
        assert_eq!(parsed, object);
        assert_eq!(rest, 7u64.to_be_bytes());
    }

    #[test]
    fn index_keys_start_with_the_partition() {
        let id = InvocationId::new(0x0102_0304_0506_0708);
        let p = id.partition().to_be_bytes();
        assert!(unfinished(&id).starts_with(&p));
        assert!(expiry(&id, 5).starts_with(&p));
        assert_eq!(unfinished(&id).len(), 18);
        assert_eq!(unfinished_id(&unfinished(&id)), Some(id));
        assert_eq!(expiry(&id, 5).len(), 26);
        assert_eq!(split_expiry(&expiry(&id, 5)), Some((5, id)));
        // Layout is on-disk format: [partition][expires_at_ms BE][id].
        let key = expiry(&id, 0x1122_3344_5566_7788);
        assert_eq!(&key[2..10], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&key[10..], &id.0);
    }

    #[test]
    fn expiry_ranges_select_only_what_has_expired() {
        let id = InvocationId::new(3);
        let p = id.partition();
        let start = p.to_be_bytes().to_vec();
        let in_range = |k: &Vec<u8>, now: u64| *k >= start && *k < expiry_until(p, now);
        assert!(in_range(&expiry(&id, 100), 100));
        assert!(in_range(&expiry(&id, 0), 100));
        assert!(!in_range(&expiry(&id, 101), 100));
        // Another partition's rows are outside.
        let other = InvocationId::new(4);
        assert!(!in_range(&expiry(&other, 0), u64::MAX - 1));
    }

    #[test]
    fn object_prefix_does_not_cover_longer_keys() {
        let a = object_prefix(&ObjectId::new("C", "k"));
        let b = state_entry(&ObjectId::new("C", "kk"), "x");
        assert!(!b.starts_with(&a));
    }
}
