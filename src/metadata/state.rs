//! What the metadata group agrees on, and the one pure rule that changes it: a proposal names
//! the epoch it was computed from and is applied only if that is still the current one
//! (compare-and-set), so two changes computed from the same state at two nodes are serialised —
//! the first committed wins, the second is refused with the epoch it lost to and is recomputed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::placement::Membership;
use crate::storage::DeploymentRecord;

/// The replicated state: the cluster's membership (members, the partition → owner table and
/// the ring epoch — any rebalance in progress is the difference between the owners and the
/// members — as `placement::Membership`), once one has been proposed; and the deployments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    pub membership: Option<Membership>,
    #[serde(default)]
    pub deployments: Vec<DeploymentRecord>,
    /// Ids of deployments removed (each node drops its copy); cleared by registering it again.
    #[serde(default)]
    pub removed_deployments: Vec<String>,
}

/// A change proposed to the group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Replace the membership at `base_epoch` with `next`, whose epoch must be
    /// `base_epoch + 1`.
    SetMembership { base_epoch: u64, next: Membership },
    /// The first membership of a new group: the one its nodes already hold (from `--cluster`,
    /// or a data dir from before the group), with the deployments it has. Applied only while
    /// the group holds none.
    Bootstrap {
        membership: Membership,
        #[serde(default)]
        deployments: Vec<DeploymentRecord>,
    },
    /// Add a deployment, or make it the newest again (the same URI and discovery), or — only
    /// with `force` — replace the one with its id whose discovery differs (`schema::versions`).
    /// Conditioned on the deployments alone, checked here so concurrent registrations at two
    /// nodes cannot both pass.
    RegisterDeployment {
        record: DeploymentRecord,
        #[serde(default)]
        force: bool,
    },
    /// Remove a deployment (the caller checked that no invocation is pinned to it, or forced).
    RemoveDeployment { id: String },
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::SetMembership { base_epoch, next } => {
                write!(f, "SetMembership({base_epoch} → {})", next.epoch)
            }
            MetaCommand::Bootstrap { membership, .. } => write!(f, "Bootstrap({})", membership.epoch),
            MetaCommand::RegisterDeployment { record, .. } => write!(f, "RegisterDeployment({})", record.id),
            MetaCommand::RemoveDeployment { id } => write!(f, "RemoveDeployment({id})"),
        }
    }
}

/// What applying a command answered, on every replica alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied: the state is at this epoch now.
    Applied { epoch: u64 },
    /// Not applied: it was computed from a state that is no longer current.
    Stale { current_epoch: u64 },
    /// Not applied: `next` does not follow `base_epoch`.
    Invalid { reason: String },
    /// A registration applied: the deployment as the group holds it now (an unchanged one keeps
    /// its first registration time).
    Registered { record: DeploymentRecord },
    /// Not applied: it conflicts with the state (a changed deployment registered without force).
    Conflict { reason: String },
    /// A log entry without a command (a new leader's blank entry, a Raft membership change).
    Nothing,
}

impl MetaState {
    pub fn epoch(&self) -> u64 {
        self.membership.as_ref().map_or(0, |m| m.epoch)
    }

    /// Applies `command`: deterministic, the same on every replica, from the state alone.
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::SetMembership { base_epoch, next } => {
                let current = self.epoch();
                if *base_epoch != current {
                    return MetaResponse::Stale { current_epoch: current };
                }
                if next.epoch != base_epoch + 1 {
                    return MetaResponse::Invalid {
                        reason: format!("next epoch {} does not follow {base_epoch}", next.epoch),
                    };
                }
                self.membership = Some(next.clone());
                MetaResponse::Applied { epoch: next.epoch }
            }
            MetaCommand::Bootstrap {
                membership,
                deployments,
            } => {
                if self.membership.is_some() {
                    return MetaResponse::Stale {
                        current_epoch: self.epoch(),
                    };
                }
                self.membership = Some(membership.clone());
                for record in deployments {
                    self.upsert(record);
                }
                MetaResponse::Applied {
                    epoch: membership.epoch,
                }
            }
            MetaCommand::RegisterDeployment { record, force } => {
                match crate::schema::versions::register(&self.deployments, record, *force) {
                    Err(e) => return MetaResponse::Conflict { reason: e.to_string() },
                    Ok(crate::schema::versions::Registration::Unchanged) => {}
                    Ok(_) => self.upsert(record),
                }
                let held = self.deployments.iter().find(|d| d.id == record.id);
                MetaResponse::Registered {
                    record: held.cloned().unwrap_or_else(|| record.clone()),
                }
            }
            MetaCommand::RemoveDeployment { id } => {
                self.deployments.retain(|d| &d.id != id);
                if !self.removed_deployments.contains(id) {
                    self.removed_deployments.push(id.clone());
                }
                MetaResponse::Applied { epoch: self.epoch() }
            }
        }
    }

    fn upsert(&mut self, record: &DeploymentRecord) {
        self.removed_deployments.retain(|id| id != &record.id);
        match self.deployments.iter_mut().find(|d| d.id == record.id) {
            Some(d) => *d = record.clone(),
            None => self.deployments.push(record.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(epoch: u64) -> Membership {
        let mut m = Membership::initial(vec![("n1".into(), "127.0.0.1:1".into())]);
        m.epoch = epoch;
        m
    }

    fn set(base_epoch: u64, next_epoch: u64) -> MetaCommand {
        MetaCommand::SetMembership {
            base_epoch,
            next: membership(next_epoch),
        }
    }

    #[test]
    fn a_change_applies_only_to_the_state_it_was_computed_from() {
        // (state's epoch, command's base → next, answer, epoch after)
        let table: &[(u64, (u64, u64), MetaResponse, u64)] = &[
            (0, (0, 1), MetaResponse::Applied { epoch: 1 }, 1),
            (1, (1, 2), MetaResponse::Applied { epoch: 2 }, 2),
            (2, (1, 2), MetaResponse::Stale { current_epoch: 2 }, 2),
            (2, (3, 4), MetaResponse::Stale { current_epoch: 2 }, 2),
            (
                2,
                (2, 4),
                MetaResponse::Invalid {
                    reason: "next epoch 4 does not follow 2".into(),
                },
                2,
            ),
        ];
        for (epoch, (base, next), answer, after) in table {
            let mut state = MetaState {
                membership: (*epoch > 0).then(|| membership(*epoch)),
                ..MetaState::default()
            };
            assert_eq!(
                &state.apply(&set(*base, *next)),
                answer,
                "epoch {epoch}, {base} → {next}"
            );
            assert_eq!(state.epoch(), *after);
        }
    }

    #[test]
    fn a_group_is_bootstrapped_once() {
        let mut state = MetaState::default();
        let first = MetaCommand::Bootstrap {
            membership: membership(4),
            deployments: vec![deployment("dp_a", 1)],
        };
        assert_eq!(state.apply(&first), MetaResponse::Applied { epoch: 4 });
        // A second bootstrap (another node, or a retry after a lost answer) changes nothing.
        let again = MetaCommand::Bootstrap {
            membership: membership(1),
            deployments: vec![deployment("dp_b", 1)],
        };
        assert_eq!(state.apply(&again), MetaResponse::Stale { current_epoch: 4 });
        assert_eq!(state.epoch(), 4);
        assert_eq!(state.deployments, vec![deployment("dp_a", 1)]);
    }

    fn deployment(id: &str, at: u64) -> DeploymentRecord {
        DeploymentRecord {
            id: id.into(),
            uri: format!("http://{id}"),
            services: Vec::new(),
            registered_at_ms: at,
        }
    }

    fn serving(id: &str, at: u64, handlers: &[&str]) -> DeploymentRecord {
        let mut d = deployment(id, at);
        d.services = vec![crate::storage::ServiceRecord {
            name: "S".into(),
            kind: crate::storage::ServiceKind::Service,
            handlers: handlers
                .iter()
                .map(|h| crate::storage::HandlerRecord {
                    name: (*h).into(),
                    kind: "shared".into(),
                    retry_policy: None,
                })
                .collect(),
        }];
        d
    }

    #[test]
    fn registrations_and_removals_leave_the_membership() {
        // Commands in order, then the deployments as (id, registered_at_ms); every command of a
        // row answers as given (A applied, C conflict).
        enum Cmd {
            Register(&'static str, u64, &'static [&'static str], bool),
            Remove(&'static str),
        }
        use Cmd::{Register as R, Remove as D};
        type Row = (&'static [Cmd], &'static str, &'static [(&'static str, u64)]);
        let table: &[Row] = &[
            (&[R("dp_a", 1, &["h"], false)], "A", &[("dp_a", 1)]),
            (
                &[R("dp_a", 1, &["h"], false), R("dp_b", 2, &["h"], false)],
                "AA",
                &[("dp_a", 1), ("dp_b", 2)],
            ),
            // the same again while newest: unchanged (the first registration time stays)
            (
                &[R("dp_a", 1, &["h"], false), R("dp_a", 5, &["h"], false)],
                "AA",
                &[("dp_a", 1)],
            ),
            // rollback: a is the newest again
            (
                &[
                    R("dp_a", 1, &["h"], false),
                    R("dp_b", 2, &["h"], false),
                    R("dp_a", 3, &["h"], false),
                ],
                "AAA",
                &[("dp_a", 3), ("dp_b", 2)],
            ),
            // a changed discovery at the same URI: refused, unless forced
            (
                &[R("dp_a", 1, &["h"], false), R("dp_a", 2, &["h", "g"], false)],
                "AC",
                &[("dp_a", 1)],
            ),
            (
                &[R("dp_a", 1, &["h"], false), R("dp_a", 2, &["h", "g"], true)],
                "AA",
                &[("dp_a", 2)],
            ),
            (
                &[R("dp_a", 1, &["h"], false), R("dp_b", 2, &["h"], false), D("dp_b")],
                "AAA",
                &[("dp_a", 1)],
            ),
            (
                &[R("dp_a", 1, &["h"], false), D("dp_a"), R("dp_a", 4, &["h", "g"], false)],
                "AAA",
                &[("dp_a", 4)],
            ),
        ];
        for (i, (commands, answers, after)) in table.iter().enumerate() {
            let mut state = MetaState {
                membership: Some(membership(3)),
                ..MetaState::default()
            };
            for (command, want) in commands.iter().zip(answers.chars()) {
                let command = match command {
                    R(id, at, handlers, force) => MetaCommand::RegisterDeployment {
                        record: serving(id, *at, handlers),
                        force: *force,
                    },
                    D(id) => MetaCommand::RemoveDeployment { id: (*id).into() },
                };
                match (state.apply(&command), want) {
                    (MetaResponse::Applied { epoch: 3 } | MetaResponse::Registered { .. }, 'A')
                    | (MetaResponse::Conflict { .. }, 'C') => {}
                    (got, want) => panic!("row {i}: {command} answered {got:?}, want {want}"),
                }
            }
            let got: Vec<(&str, u64)> = state
                .deployments
                .iter()
                .map(|d| (d.id.as_str(), d.registered_at_ms))
                .collect();
            assert_eq!(&got, after, "row {i}");
            assert_eq!(state.epoch(), 3);
        }
    }

    #[test]
    fn two_changes_from_the_same_state_one_wins() {
        // Two nodes computed their change from epoch 1 at the same instant: whichever the log
        // orders first applies; the other is refused and names the epoch to recompute from.
        let mut state = MetaState {
            membership: Some(membership(1)),
            ..MetaState::default()
        };
        let (join_a, join_b) = (set(1, 2), set(1, 2));
        assert_eq!(state.apply(&join_a), MetaResponse::Applied { epoch: 2 });
        assert_eq!(state.apply(&join_b), MetaResponse::Stale { current_epoch: 2 });
    }
}
