//! Versioned, immutable deployments: the pure rules for registering and removing one.
//!
//! A deployment is its URI (its id is derived from it) and what that URI answered at discovery.
//! New code goes to a new URI, and the newest deployment of a service takes that service's new
//! invocations, while each invocation stays pinned to the deployment it started on. So the same
//! URI answering a *different* discovery is refused (409) unless forced: replacing a deployment
//! in place would hand its pinned invocations code they were not journaled with. Registering an
//! older URI again is a rollback: it becomes the newest once more.

use std::fmt::Write;

use crate::storage::{DeploymentRecord, ServiceRecord};

/// What registering a discovered deployment does to the registered ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// A URI not registered before: added (201).
    Create,
    /// The same URI, the same discovery, already the newest for all its services: no write.
    Unchanged,
    /// The same URI and discovery, but another deployment took some of its services since:
    /// it becomes the newest again (a rollback).
    Promote,
    /// The same URI with a different discovery, forced: replaced in place (breaking).
    Replace,
}

/// Why a registration or a removal is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "deployment {id} ({uri}) is registered with different services: {changes}. Deployments are \
         immutable, because invocations pinned to it would replay against other code: serve the new \
         code at a new URI and register that, or pass \"force\": true to replace it in place (breaks \
         invocations in flight on it)"
    )]
    Changed { id: String, uri: String, changes: String },
    #[error("deployment {0} not found")]
    NotFound(String),
    #[error(
        "deployment {id} still has {pinned} invocation(s) pinned to it (not finished): wait for them \
         to drain (GET /deployments shows \"pinnedInvocations\"), or pass ?force=true (they will fail)"
    )]
    Pinned { id: String, pinned: u64 },
}

/// The rule for registering `candidate` (discovered just now) next to `registered`.
pub fn register(
    registered: &[DeploymentRecord],
    candidate: &DeploymentRecord,
    force: bool,
) -> Result<Registration, VersionError> {
    let Some(existing) = registered.iter().find(|d| d.id == candidate.id) else {
        return Ok(Registration::Create);
    };
    if existing.services != candidate.services {
        return if force {
            Ok(Registration::Replace)
        } else {
            Err(VersionError::Changed {
                id: existing.id.clone(),
                uri: existing.uri.clone(),
                changes: changes(&existing.services, &candidate.services),
            })
        };
    }
    let superseded = existing.services.iter().any(|s| {
        registered
            .iter()
            .any(|d| d.id != existing.id && d.registered_at_ms >= existing.registered_at_ms && serves(d, &s.name))
    });
    Ok(if superseded {
        Registration::Promote
    } else {
        Registration::Unchanged
    })
}

/// The rule for removing deployment `id`, which `pinned` unfinished invocations are pinned to.
pub fn remove(registered: &[DeploymentRecord], id: &str, pinned: u64, force: bool) -> Result<(), VersionError> {
    if !registered.iter().any(|d| d.id == id) {
        return Err(VersionError::NotFound(id.to_owned()));
    }
    if pinned > 0 && !force {
        return Err(VersionError::Pinned {
            id: id.to_owned(),
            pinned,
        });
    }
    Ok(())
}

fn serves(deployment: &DeploymentRecord, service: &str) -> bool {
    deployment.services.iter().any(|s| s.name == service)
}

/// What differs between two discoveries of one URI, briefly: `+S` added, `-S` removed,
/// `S changed` (kind, handlers or their settings).
fn changes(before: &[ServiceRecord], after: &[ServiceRecord]) -> String {
    let mut out = String::new();
    let mut note = |text: String| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{text}");
    };
    for s in after {
        match before.iter().find(|b| b.name == s.name) {
            None => note(format!("+{}", s.name)),
            Some(b) if b != s => note(format!("{} changed", s.name)),
            Some(_) => {}
        }
    }
    for b in before.iter().filter(|b| !after.iter().any(|s| s.name == b.name)) {
        note(format!("-{}", b.name));
    }
    if out.is_empty() {
        out.push_str("the order of services changed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{HandlerRecord, ServiceKind};

    fn service(name: &str, handlers: &[&str]) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            kind: ServiceKind::Workflow,
            handlers: handlers
                .iter()
                .map(|h| HandlerRecord {
                    name: (*h).into(),
                    kind: "shared".into(),
                    retry_policy: None,
                })
                .collect(),
        }
    }

    fn deployment(id: &str, at: u64, services: Vec<ServiceRecord>) -> DeploymentRecord {
        DeploymentRecord {
            id: id.into(),
            uri: format!("http://{id}"),
            services,
            registered_at_ms: at,
        }
    }

    #[test]
    fn registrations() {
        let v1 = || vec![service("Order", &["run"])];
        let v2 = || vec![service("Order", &["run", "status"])];
        let both = || vec![deployment("a", 1, v1()), deployment("b", 2, v2())];
        // (registered, candidate, force, answer)
        type Row = (
            Vec<DeploymentRecord>,
            DeploymentRecord,
            bool,
            Result<Registration, &'static str>,
        );
        let table: Vec<Row> = vec![
            (vec![], deployment("a", 5, v1()), false, Ok(Registration::Create)),
            (
                vec![deployment("a", 1, v1())],
                deployment("a", 5, v1()),
                false,
                Ok(Registration::Unchanged),
            ),
            // the newest again after b took Order: a rollback
            (both(), deployment("a", 5, v1()), false, Ok(Registration::Promote)),
            (both(), deployment("b", 5, v2()), false, Ok(Registration::Unchanged)),
            (
                vec![deployment("a", 1, v1())],
                deployment("a", 5, v2()),
                false,
                Err("Order changed"),
            ),
            (
                vec![deployment("a", 1, v1())],
                deployment("a", 5, v2()),
                true,
                Ok(Registration::Replace),
            ),
            (
                vec![deployment("a", 1, v1())],
                deployment("a", 5, vec![service("Order", &["run"]), service("Audit", &["log"])]),
                false,
                Err("+Audit"),
            ),
            (
                vec![deployment(
                    "a",
                    1,
                    vec![service("Order", &["run"]), service("Audit", &["log"])],
                )],
                deployment("a", 5, v1()),
                false,
                Err("-Audit"),
            ),
        ];
        for (i, (registered, candidate, force, want)) in table.into_iter().enumerate() {
            match (register(&registered, &candidate, force), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "row {i}"),
                (Err(VersionError::Changed { changes, .. }), Err(want)) => assert_eq!(changes, want, "row {i}"),
                (got, want) => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn removals() {
        let registered = vec![deployment("a", 1, vec![service("Order", &["run"])])];
        // (id, pinned, force, answer)
        let table: &[(&str, u64, bool, Result<(), VersionError>)] = &[
            ("a", 0, false, Ok(())),
            (
                "a",
                3,
                false,
                Err(VersionError::Pinned {
                    id: "a".into(),
                    pinned: 3,
                }),
            ),
            ("a", 3, true, Ok(())),
            ("zz", 0, true, Err(VersionError::NotFound("zz".into()))),
        ];
        for (id, pinned, force, want) in table {
            assert_eq!(&remove(&registered, id, *pinned, *force), want, "{id} {pinned} {force}");
        }
    }
}
