//! The answer of a control's SQL apply function (`kill_switch_apply`,
//! `symbol_mode_apply`, `scope_apply`), decoded once for every control.
//!
//! Every apply function answers one row with a `status` word. The statuses every
//! control shares mean the same everywhere:
//!
//! | status | meaning |
//! | --- | --- |
//! | `applied` | written now (with the break-glass column true: the glass was broken) |
//! | `applied_break_glass` | written now by breaking the glass |
//! | `replayed` | the same request again, still in force: its original result |
//! | `pending` | a four-eyes approval request now holds the relaxation |
//! | `request_closed` | the approval request of this id is closed (rejected, expired…) |
//! | `precondition_required`, `precondition_failed`, `superseded`, `request_reused` | refused by the authority rules |
//!
//! [`ApplyCall::decode`] turns those into a [`Verdict`] or a [`Gated`] error, and
//! hands any other status back as [`Verdict::Control`] for the control to map (an
//! unknown symbol, a forbidden step…); a status nobody knows is
//! [`unexpected_status`].

use crate::authority::{counted, other_change, refusal_from_status};
use crate::{
    Audit, ChangeRef, DbError, DbErrorKind, PendingApproval, Position, Precondition, Refusal,
};
use std::time::SystemTime;
use tokio_postgres::Row;
use uuid::Uuid;

/// The columns an apply function names differently: where a pending answer carries
/// its approval request, and where a write says it broke the glass.
#[derive(Debug, Clone, Copy)]
pub struct ApplyColumns {
    /// The pending approval request's id, e.g. `approval_id`.
    pub pending_id: &'static str,
    /// When the pending request expires, e.g. `expires_at`.
    pub expires_at: &'static str,
    /// A boolean column true when an `applied` write broke the glass; `None` when
    /// the function answers `applied_break_glass` instead.
    pub break_glass: Option<&'static str>,
}

/// What the decoder asks a control to name, each only when it needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhatFor {
    /// The relaxation a pending approval request holds (shown to the approver).
    Approval,
    /// The relaxation just applied by breaking the glass (logged at WARN).
    BreakGlass,
    /// The change a refusal names (`precondition_required`, `precondition_failed`).
    Refusal,
}

/// The shared outcome of an apply function's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written (`replayed: false`; a broken glass was already logged and counted),
    /// or the same request's original result (`replayed: true`).
    Applied {
        /// True when the answer is the original result of a request seen before.
        replayed: bool,
    },
    /// A status of the control's own, for it to map.
    Control(String),
}

/// An answer that changed nothing: held for approval, or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gated {
    /// A four-eyes approval request now holds the relaxation.
    #[error("{0}")]
    Pending(PendingApproval),
    /// Refused by the authority rules.
    #[error(transparent)]
    Refused(Refusal),
}

/// The error for a status neither the kit nor the control knows: the database's
/// functions are of another version than this library.
pub fn unexpected_status(op: &'static str, status: &str) -> DbError {
    DbError::new(
        DbErrorKind::Permanent,
        op,
        None,
        format!(
            "unexpected status {status:?}: the functions in the database and this library \
             disagree; run the migrations of this version"
        ),
    )
}

/// The shared fields of an apply function's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status word.
    pub status: String,
    /// The approval request's id and expiry, read when the status is `pending`.
    pub pending: Option<(Uuid, SystemTime)>,
    /// Whether the write broke the glass (the [`ApplyColumns::break_glass`] column).
    pub break_glass: bool,
    /// The change the row names (`other_position`, `other_actor`, `other_what`,
    /// `other_at`).
    pub other: Option<ChangeRef>,
    /// `other_what` alone: for `request_closed`, the closed request's state.
    pub other_what: Option<String>,
}

impl Answer {
    /// Reads the shared fields of `row` (columns `status`, `other_*` and those of
    /// `columns`).
    ///
    /// # Errors
    /// A `pending` answer without its request id or expiry.
    pub fn read(row: &Row, columns: &ApplyColumns) -> Result<Self, DbError> {
        let status: String = row.get("status");
        let pending = if status == "pending" {
            let id = row.try_get::<_, Uuid>(columns.pending_id);
            let expires_at = row.try_get::<_, SystemTime>(columns.expires_at);
            match (id, expires_at) {
                (Ok(id), Ok(expires_at)) => Some((id, expires_at)),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(DbError::new(
                        DbErrorKind::Permanent,
                        "apply.pending",
                        None,
                        format!(
                            "a pending answer lacks its approval request ({} / {}: {e}); \
                             run the migrations of this version",
                            columns.pending_id, columns.expires_at
                        ),
                    ))
                }
            }
        } else {
            None
        };
        let break_glass = columns
            .break_glass
            .is_some_and(|c| row.get::<_, Option<bool>>(c) == Some(true));
        Ok(Self {
            pending,
            break_glass,
            other: other_change(row),
            other_what: row.get("other_what"),
            status,
        })
    }
}

/// One call of an apply function, as the decoder needs it.
pub struct ApplyCall<'a, E> {
    /// The approval action, e.g. `kill-switch.disengage` (also the break-glass
    /// metric's label).
    pub action: &'static str,
    /// The audit actor.
    pub actor: &'a str,
    /// The request id sent.
    pub request_id: Uuid,
    /// The precondition sent.
    pub precondition: Precondition,
    /// The target's position as the row answers it.
    pub current: Position,
    /// Names the change for each use, built only when needed.
    pub what: &'a (dyn Fn(WhatFor) -> Result<String, E> + Sync),
}

impl<'a, E> ApplyCall<'a, E> {
    /// The call `audit` made (its actor, request id and precondition) for approval
    /// `action`, answered at position `current`.
    pub fn new(
        action: &'static str,
        audit: &'a Audit,
        current: Position,
        what: &'a (dyn Fn(WhatFor) -> Result<String, E> + Sync),
    ) -> Self {
        Self {
            action,
            actor: audit.actor(),
            request_id: audit.request_id(),
            precondition: audit.precondition(),
            current,
            what,
        }
    }
}

impl<E> std::fmt::Debug for ApplyCall<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyCall")
            .field("action", &self.action)
            .field("actor", &self.actor)
            .field("request_id", &self.request_id)
            .field("precondition", &self.precondition)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<E: From<Gated> + From<DbError>> ApplyCall<'_, E> {
    /// Decodes `row` (see [`Answer::read`] and [`decide`](Self::decide)).
    ///
    /// # Errors
    /// [`Gated`] (pending, refused) in the control's error, or a row without what
    /// its status promises.
    pub fn decode(&self, row: &Row, columns: &ApplyColumns) -> Result<Verdict, E> {
        self.decide(Answer::read(row, columns)?)
    }
}

impl<E: From<Gated>> ApplyCall<'_, E> {
    /// The shared statuses' meaning; logs and counts a broken glass.
    ///
    /// # Errors
    /// [`Gated`] (pending, refused) in the control's error, or the error of
    /// [`what`](Self::what).
    pub fn decide(&self, answer: Answer) -> Result<Verdict, E> {
        let what = self.what;
        let gated = |g: Gated| Err(E::from(g));
        match answer.status.as_str() {
            "pending" => match answer.pending {
                Some((id, expires_at)) => gated(Gated::Pending(PendingApproval {
                    id,
                    action: self.action.into(),
                    what: what(WhatFor::Approval)?,
                    expires_at,
                })),
                None => Ok(Verdict::Control(answer.status)),
            },
            "request_closed" => gated(Gated::Refused(counted(Refusal::RequestReused {
                request_id: self.request_id,
                previous: format!(
                    "an approval request that is now {}",
                    answer.other_what.unwrap_or_default()
                ),
            }))),
            "replayed" => Ok(Verdict::Applied { replayed: true }),
            "applied" | "applied_break_glass" => {
                if answer.break_glass || answer.status == "applied_break_glass" {
                    crate::approvals::break_glass_applied(
                        self.action,
                        &what(WhatFor::BreakGlass)?,
                        self.actor,
                        self.request_id,
                    );
                }
                Ok(Verdict::Applied { replayed: false })
            }
            "precondition_required" | "precondition_failed" | "superseded" | "request_reused" => {
                let what = what(WhatFor::Refusal)?;
                match refusal_from_status(
                    &answer.status,
                    &what,
                    self.request_id,
                    self.precondition,
                    self.current,
                    answer.other,
                ) {
                    Some(refusal) => gated(Gated::Refused(refusal)),
                    None => Ok(Verdict::Control(answer.status)),
                }
            }
            _ => Ok(Verdict::Control(answer.status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: SystemTime = SystemTime::UNIX_EPOCH;

    fn answer(status: &str) -> Answer {
        Answer {
            status: status.into(),
            pending: None,
            break_glass: false,
            other: None,
            other_what: None,
        }
    }

    fn bob() -> ChangeRef {
        ChangeRef {
            position: Position(9),
            actor: "ops:bob".into(),
            what: "engage".into(),
            at: AT,
        }
    }

    fn name(what: WhatFor) -> Result<String, Gated> {
        Ok(format!("{what:?}"))
    }

    fn decide(answer: Answer) -> Result<Verdict, Gated> {
        ApplyCall {
            action: "kill-switch.disengage",
            actor: "ops:alice",
            request_id: Uuid::nil(),
            precondition: Precondition::At(Position(7)),
            current: Position(9),
            what: &name,
        }
        .decide(answer)
    }

    #[test]
    fn writes_and_replays_are_applied() {
        let applied = Ok(Verdict::Applied { replayed: false });
        assert_eq!(decide(answer("applied")), applied);
        assert_eq!(decide(answer("applied_break_glass")), applied);
        let broke = Answer {
            break_glass: true,
            ..answer("applied")
        };
        assert_eq!(decide(broke), applied);
        assert_eq!(
            decide(answer("replayed")),
            Ok(Verdict::Applied { replayed: true })
        );
    }

    #[test]
    fn pending_names_the_request_and_the_relaxation() {
        let id = Uuid::from_u128(5);
        let pending = Answer {
            pending: Some((id, AT)),
            ..answer("pending")
        };
        assert_eq!(
            decide(pending),
            Err(Gated::Pending(PendingApproval {
                id,
                action: "kill-switch.disengage".into(),
                what: "Approval".into(),
                expires_at: AT,
            }))
        );
    }

    #[test]
    fn a_closed_request_is_a_reused_id() {
        let closed = Answer {
            other_what: Some("rejected".into()),
            ..answer("request_closed")
        };
        assert_eq!(
            decide(closed),
            Err(Gated::Refused(Refusal::RequestReused {
                request_id: Uuid::nil(),
                previous: "an approval request that is now rejected".into(),
            }))
        );
    }

    #[test]
    fn authority_statuses_are_refusals_naming_the_change_in_force() {
        let table = [
            (
                "precondition_failed",
                Refusal::PreconditionFailed {
                    what: "Refusal".into(),
                    expected: Position(7),
                    current: bob(),
                },
            ),
            (
                "precondition_required",
                Refusal::PreconditionRequired {
                    what: "Refusal".into(),
                    current: Position(9),
                },
            ),
            (
                "superseded",
                Refusal::Superseded {
                    request_id: Uuid::nil(),
                    by: bob(),
                },
            ),
            (
                "request_reused",
                Refusal::RequestReused {
                    request_id: Uuid::nil(),
                    previous: "engage by ops:bob".into(),
                },
            ),
        ];
        for (status, refusal) in table {
            let named = Answer {
                other: Some(bob()),
                ..answer(status)
            };
            assert_eq!(decide(named), Err(Gated::Refused(refusal)), "{status}");
        }
    }

    #[test]
    fn other_statuses_go_back_to_the_control() {
        for status in [
            "unchanged",
            "unknown_symbol",
            "step_too_large",
            "ticket_required",
        ] {
            assert_eq!(decide(answer(status)), Ok(Verdict::Control(status.into())));
        }
        // A pending answer without its request is no approval to show.
        assert_eq!(
            decide(answer("pending")),
            Ok(Verdict::Control("pending".into()))
        );
    }

    #[test]
    fn the_unexpected_status_says_what_to_do() {
        let e = unexpected_status("scope.apply", "exploded");
        assert!(e.to_string().contains("\"exploded\""), "{e}");
        assert!(e.to_string().contains("run the migrations"), "{e}");
    }
}
