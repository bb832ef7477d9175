//! Identifiers: objects, invocations and the partition key that places them.
//!
//! An [`InvocationId`] embeds the partition key of its target, so any node can find the
//! partition (and, later, the owner node) of an invocation from its id alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Fixed number of partitions the key space is split into. Never changes for a data dir.
pub const PARTITIONS_COUNT: u64 = 1024;

/// A stable 64-bit FNV-1a hash of explicit bytes (never `DefaultHasher`: it is not stable).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition a partition key falls in.
pub fn partition_of(partition_key: u64) -> u16 {
    (partition_key % PARTITIONS_COUNT) as u16
}

/// A virtual object instance: (service, key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    pub service: String,
    pub key: String,
}

impl ObjectId {
    pub fn new(service: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            key: key.into(),
        }
    }

    pub fn partition_key(&self) -> u64 {
        stable_hash(&[self.service.as_bytes(), self.key.as_bytes()])
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.key)
    }
}

/// 128 bits: 8 bytes partition key, 8 random bytes. Text form: `inv_` + 32 lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InvocationId(pub [u8; 16]);

impl InvocationId {
    /// A fresh id in the partition of `partition_key` (random low half).
    pub fn new(partition_key: u64) -> Self {
        Self::from_parts(partition_key, fastrand::u64(..))
    }

    /// The id with these halves (the deterministic core is given its random bits).
    pub fn from_parts(partition_key: u64, low: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&partition_key.to_be_bytes());
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        Self(bytes)
    }

    pub fn partition_key(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    pub fn partition(&self) -> u16 {
        partition_of(self.partition_key())
    }

    /// Seed for the handler's deterministic `ctx.random()`: the same on every attempt.
    pub fn random_seed(&self) -> u64 {
        stable_hash(&[&self.0])
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inv_")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed invocation id {0:?}: expected 'inv_' followed by 32 lowercase hex digits")]
pub struct MalformedId(pub String);

impl FromStr for InvocationId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MalformedId(s.chars().take(80).collect());
        let hex = s.strip_prefix("inv_").ok_or_else(bad)?;
        if hex.len() != 32 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_and_keeps_partition() {
        let object = ObjectId::new("Counter", "k1");
        let id = InvocationId::new(object.partition_key());
        let parsed: InvocationId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.partition(), partition_of(object.partition_key()));
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in ["", "inv_", "xyz", "inv_0123", "inv_0123456789abcdef0123456789ABCDEF"] {
            assert!(bad.parse::<InvocationId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stable_hash_separates_parts() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        // Pinned value: placement must never change between versions.
        assert_eq!(stable_hash(&[b"Counter", b"k1"]), stable_hash(&[b"Counter", b"k1"]));
    }
}

/// The id of the awakeable journaled at `index` of invocation `id` (derived, never stored).
pub fn awakeable_id(id: &InvocationId, index: u32) -> String {
    format!("awk_{}{index:08x}", &id.to_string()[4..])
}

/// Id of the run of workflow (service, key): deterministic, so a second run finds the first.
pub fn workflow_run_id(object: &ObjectId) -> InvocationId {
    let mut id = InvocationId::new(object.partition_key());
    id.0[8..]
        .copy_from_slice(&stable_hash(&[b"workflow", object.service.as_bytes(), object.key.as_bytes()]).to_be_bytes());
    id
}

/// The partition key of an invocation with an idempotency key: its object's, or — for a
/// stateless service, which has no key — one derived from service, handler and idempotency key.
pub fn idempotent_partition_key(
    service: &str,
    handler: &str,
    key: &str,
    idempotency_key: &str,
    stateless: bool,
) -> u64 {
    if stateless {
        stable_hash(&[service.as_bytes(), handler.as_bytes(), idempotency_key.as_bytes()])
    } else {
        ObjectId::new(service, key).partition_key()
    }
}

/// Id of the invocation of (service, handler, key) under `idempotency_key`: deterministic, so
/// every request with the same target and key — from the ingress or from a handler's call or
/// send — names the same invocation, and the first one's owner finds it again.
pub fn idempotent_id(service: &str, handler: &str, key: &str, idempotency_key: &str, stateless: bool) -> InvocationId {
    let partition_key = idempotent_partition_key(service, handler, key, idempotency_key, stateless);
    let low = stable_hash(&[
        b"idempotency",
        service.as_bytes(),
        handler.as_bytes(),
        key.as_bytes(),
        idempotency_key.as_bytes(),
    ]);
    InvocationId::from_parts(partition_key, low)
}

/// Invocation ids as text (`inv_…`) in serde: the form SDKs send in new entry kinds
/// (`attach_invocation`, `cancel_invocation`). Older fields keep the 16-byte form.
pub mod id_text {
    use super::InvocationId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &InvocationId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<InvocationId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits an awakeable id into its invocation and journal index.
pub fn parse_awakeable_id(s: &str) -> Result<(InvocationId, u32), MalformedAwakeableId> {
    let bad = || MalformedAwakeableId(s.chars().take(80).collect());
    let hex = s.strip_prefix("awk_").filter(|h| h.len() == 40).ok_or_else(bad)?;
    let id: InvocationId = format!("inv_{}", &hex[..32]).parse().map_err(|_| bad())?;
    let index = u32::from_str_radix(&hex[32..], 16).map_err(|_| bad())?;
    Ok((id, index))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed awakeable id {0:?}: expected 'awk_' followed by 40 lowercase hex digits")]
pub struct MalformedAwakeableId(pub String);

#[cfg(test)]
mod awakeable_tests {
    use super::*;

    #[test]
    fn awakeable_ids_round_trip() {
        let id = InvocationId::new(42);
        let awk = awakeable_id(&id, 10);
        assert!(awk.ends_with("0000000a"), "{awk}");
        assert_eq!(parse_awakeable_id(&awk), Ok((id, 10)));
        assert!(parse_awakeable_id("awk_123").is_err());
        assert!(parse_awakeable_id(&awk.replace("awk_", "inv_")).is_err());
    }
}
