//! Who may change a safety control, and on what condition — the rules every control
//! applies **inside the write**, against the state it locks, never from a value read
//! earlier:
//!
//! * **Authority.** A command carries the caller's [`Authority`]: an operator may
//!   tighten (engage, halt, `CancelAll`); a supervisor may also relax (disengage,
//!   de-escalate, lift). Whether a command tightens or relaxes is decided against the
//!   locked row: an operator's command that would relax, because the state moved in
//!   between, is refused ([`Refusal::Forbidden`]) and changes nothing. PostgreSQL
//!   additionally caps the authority at what the database login holds (roles
//!   `tradepulse_operator`, `tradepulse_supervisor`, `tradepulse_service`).
//! * **Relaxations are conditional.** A relaxation names the state the caller saw
//!   ([`Audit::expecting`](crate::Audit::expecting) its position). When that state
//!   moved, the relaxation is refused with [`Refusal::PreconditionFailed`], naming
//!   the change in between; a caller that must always name it (an HTTP request
//!   without `If-Match`) marks the audit [`Audit::requiring_precondition`](crate::Audit::requiring_precondition)
//!   and gets [`Refusal::PreconditionRequired`]. A tightening is applied whatever
//!   happened in between: stopping never waits.
//! * **A replay never lies.** A request id belongs to one actor and one command. The
//!   same actor sending the same command again gets the original result marked
//!   [`Applied::replayed`] — only while that change is still the latest of its
//!   target. Superseded by a later change: [`Refusal::Superseded`], naming it.
//!   Another actor or another command with the same id: [`Refusal::RequestReused`].
//!   Every detected replay counts in `replay_detect_total{outcome}`.

use crate::Position;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use uuid::Uuid;

/// The authority a command is applied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// May tighten: stop, restrict, cancel.
    Operator,
    /// May also relax: resume, de-escalate, lift.
    Supervisor,
}

impl Authority {
    /// `operator` or `supervisor`, as the database functions take it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Supervisor => "supervisor",
        }
    }

    /// True when this authority may relax a control.
    pub const fn may_relax(self) -> bool {
        matches!(self, Self::Supervisor)
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a relaxation is conditional on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "position")]
pub enum Precondition {
    /// No condition: the relaxation applies to whatever state it finds (trusted
    /// in-process callers, such as an engine's own policy). The default.
    None,
    /// The caller must name the state it relaxes; a relaxation without it is
    /// refused with [`Refusal::PreconditionRequired`] (an HTTP request without
    /// `If-Match`).
    Required,
    /// The relaxation applies only while its target is still at this position.
    At(Position),
}

impl Precondition {
    /// The position a relaxation is conditional on, as the SQL apply functions take
    /// it (`p_expected`).
    pub fn expected(self) -> Option<i64> {
        match self {
            Self::At(p) => Some(p.as_i64()),
            _ => None,
        }
    }

    /// True when a relaxation must name its state (`p_require_expected`).
    pub fn required(self) -> bool {
        matches!(self, Self::Required)
    }
}

/// A change another caller made, named in a refusal: who, what, when, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRef {
    /// Its position.
    pub position: Position,
    /// Who made it (the audit actor).
    pub actor: String,
    /// What it did, e.g. `engage` or `SetGlobalMode CANCEL_ONLY -> HARD_HALT`.
    pub what: String,
    /// When (database clock for PostgreSQL).
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
}

impl std::fmt::Display for ChangeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {} at {} (position {})",
            self.what,
            self.actor,
            humantime::format_rfc3339_micros(self.at),
            self.position
        )
    }
}

/// Why a command was refused by the authority rules. Nothing was changed. Every
/// control's error wraps it, so that HTTP answers and CLI exit codes are decided once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The command would relax the control and the caller (or its database login)
    /// may only tighten.
    #[error("refused, nothing changed: {message}")]
    Forbidden {
        /// What was refused and why, e.g. "the global mode is HARD_HALT; CANCEL_ONLY
        /// would relax it, which needs supervisor authority".
        message: String,
    },
    /// A relaxation that does not name the state it relaxes.
    #[error("refused, nothing changed: {what} relaxes safety and must name the state it relaxes: read it first (GET answers ETag \"{current}\") and send it (If-Match: \"{current}\")")]
    PreconditionRequired {
        /// What was attempted.
        what: String,
        /// The current position of the target, to name.
        current: Position,
    },
    /// A relaxation whose target moved since the caller saw it.
    #[error("refused, nothing changed: {what} was asked against position {expected}, but the state moved: {current}; read it again and decide")]
    PreconditionFailed {
        /// What was attempted.
        what: String,
        /// The position the caller named.
        expected: Position,
        /// The change in force now.
        current: ChangeRef,
    },
    /// A replayed request whose change is no longer in force.
    #[error("refused, nothing changed: request {request_id} was applied, but a later change superseded it: {by}; its result is no longer in force")]
    Superseded {
        /// The replayed request id.
        request_id: Uuid,
        /// The change in force now.
        by: ChangeRef,
    },
    /// A request id used by another actor or for another command.
    #[error("refused, nothing changed: request {request_id} was already used for {previous}; build a new Audit (a new request id) for a new command")]
    RequestReused {
        /// The reused id.
        request_id: Uuid,
        /// What it was used for: command and actor.
        previous: String,
    },
}

impl Refusal {
    /// The machine-readable code: `forbidden`, `precondition_required`,
    /// `precondition_failed`, `superseded` or `request_reused`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Forbidden { .. } => "forbidden",
            Self::PreconditionRequired { .. } => "precondition_required",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::Superseded { .. } => "superseded",
            Self::RequestReused { .. } => "request_reused",
        }
    }

    /// A refusal from a database error that the authority rules raised (SQLSTATE
    /// 42501 insufficient_privilege: the login may not do this, or may act only in
    /// its own name).
    pub fn from_db(e: &crate::DbError) -> Option<Self> {
        (e.sqlstate() == Some("42501")).then(|| Self::Forbidden {
            message: e
                .message()
                .strip_prefix("ERROR (42501): ")
                .unwrap_or(e.message())
                .to_owned(),
        })
    }
}

/// The result of a command: its value, and whether it is the original result of the
/// same request sent again (a retry after a lost answer), which changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied<T> {
    /// The result.
    #[serde(flatten)]
    pub value: T,
    /// True when this request had already been applied and is still in force.
    pub replayed: bool,
}

impl<T> Applied<T> {
    /// A command applied now.
    pub fn new(value: T) -> Self {
        Self {
            value,
            replayed: false,
        }
    }

    /// The original result of a request sent again.
    pub fn replayed(value: T) -> Self {
        count_replay("replayed");
        Self {
            value,
            replayed: true,
        }
    }

    /// The result.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The same answer with its value mapped (replayed stays as it was).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Applied<U> {
        Applied {
            value: f(self.value),
            replayed: self.replayed,
        }
    }
}

impl<T> std::ops::Deref for Applied<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Counts a detected replay in `replay_detect_total{outcome}` (`replayed`,
/// `superseded`, `request_reused`).
pub fn count_replay(outcome: &'static str) {
    metrics::counter!("replay_detect_total", "outcome" => outcome).increment(1);
}

/// Counts the replay outcomes among refusals; returns the refusal.
pub fn counted(refusal: Refusal) -> Refusal {
    match &refusal {
        Refusal::Superseded { .. } => count_replay("superseded"),
        Refusal::RequestReused { .. } => count_replay("request_reused"),
        _ => {}
    }
    refusal
}

/// How a request id that was seen before relates to the request sent now — the
/// one replay rule every store applies, in memory and in SQL alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Same actor and command, and its change is still the latest of its target.
    Replayed,
    /// Same actor and command, but a later change of its target superseded it.
    Superseded,
    /// Another actor or another command.
    Reused,
}

/// Decides a replay: `same_request` when actor and command match,
/// `in_force` when the earlier change is still the latest of its target.
pub fn replay_verdict(same_request: bool, in_force: bool) -> ReplayVerdict {
    match (same_request, in_force) {
        (false, _) => ReplayVerdict::Reused,
        (true, true) => ReplayVerdict::Replayed,
        (true, false) => ReplayVerdict::Superseded,
    }
}

/// The change an apply function's row names (columns `other_position`,
/// `other_actor`, `other_what`, `other_at`), if it names one.
#[cfg(feature = "postgres")]
pub fn other_change(row: &tokio_postgres::Row) -> Option<ChangeRef> {
    row.get::<_, Option<i64>>("other_position")
        .map(|p| ChangeRef {
            position: Position::from_i64(p),
            actor: row.get("other_actor"),
            what: row.get("other_what"),
            at: row.get("other_at"),
        })
}

/// The answer to a request id seen before, in memory (the SQL apply functions
/// return the same as statuses): the original result while its change is in force,
/// else the refusal naming the change that superseded it, or the earlier use.
/// `same_request` when actor and command match; `in_force` when the earlier change is
/// still the latest of its target; `earlier` describes the earlier use
/// (`"engage by ops:alice"`), `latest` the change in force.
pub fn replay<T>(
    request_id: Uuid,
    same_request: bool,
    in_force: bool,
    original: impl FnOnce() -> T,
    earlier: impl FnOnce() -> String,
    latest: impl FnOnce() -> ChangeRef,
) -> Result<Applied<T>, Refusal> {
    match replay_verdict(same_request, in_force) {
        ReplayVerdict::Replayed => Ok(Applied::replayed(original())),
        ReplayVerdict::Superseded => Err(counted(Refusal::Superseded {
            request_id,
            by: latest(),
        })),
        ReplayVerdict::Reused => Err(counted(Refusal::RequestReused {
            request_id,
            previous: earlier(),
        })),
    }
}

/// The precondition check of a relaxation: `Ok` to go on, or the refusal.
/// `current` is the target's position now, `latest` the change that put it there
/// (read only when a refusal must name it).
pub fn check_relaxation(
    precondition: Precondition,
    what: &str,
    current: Position,
    latest: impl FnOnce() -> Option<ChangeRef>,
) -> Result<(), Refusal> {
    match precondition {
        Precondition::None => Ok(()),
        Precondition::Required => Err(Refusal::PreconditionRequired {
            what: what.to_owned(),
            current,
        }),
        Precondition::At(expected) if expected == current => Ok(()),
        Precondition::At(expected) => Err(Refusal::PreconditionFailed {
            what: what.to_owned(),
            expected,
            current: latest().unwrap_or_else(|| ChangeRef {
                position: current,
                actor: String::new(),
                what: "the initial state".into(),
                at: SystemTime::UNIX_EPOCH,
            }),
        }),
    }
}

/// The refusal a SQL apply function's status stands for — the same statuses for
/// every control: `precondition_required`, `precondition_failed`, `superseded`,
/// `request_reused` (counted as replays where they are). `None` for `applied`,
/// `replayed` and any status the control handles itself. `other` is the change the
/// function named: the one in force, or for `request_reused` the earlier use.
pub fn refusal_from_status(
    status: &str,
    what: &str,
    request_id: Uuid,
    precondition: Precondition,
    current: Position,
    other: Option<ChangeRef>,
) -> Option<Refusal> {
    let named = |other: Option<ChangeRef>| {
        other.unwrap_or_else(|| ChangeRef {
            position: current,
            actor: String::new(),
            what: "the initial state".into(),
            at: SystemTime::UNIX_EPOCH,
        })
    };
    Some(match status {
        "precondition_required" => Refusal::PreconditionRequired {
            what: what.to_owned(),
            current,
        },
        "precondition_failed" => Refusal::PreconditionFailed {
            what: what.to_owned(),
            expected: match precondition {
                Precondition::At(p) => p,
                _ => current,
            },
            current: named(other),
        },
        "superseded" => counted(Refusal::Superseded {
            request_id,
            by: named(other),
        }),
        "request_reused" => {
            let previous = other.map_or_else(String::new, |o| format!("{} by {}", o.what, o.actor));
            counted(Refusal::RequestReused {
                request_id,
                previous,
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_rule() {
        assert_eq!(replay_verdict(true, true), ReplayVerdict::Replayed);
        assert_eq!(replay_verdict(true, false), ReplayVerdict::Superseded);
        assert_eq!(replay_verdict(false, true), ReplayVerdict::Reused);
        assert_eq!(replay_verdict(false, false), ReplayVerdict::Reused);
    }

    #[test]
    fn relaxation_preconditions() {
        let at = Position(7);
        let latest = || {
            Some(ChangeRef {
                position: Position(8),
                actor: "ops:bob".into(),
                what: "engage".into(),
                at: SystemTime::UNIX_EPOCH,
            })
        };
        assert!(check_relaxation(Precondition::None, "x", at, latest).is_ok());
        assert!(check_relaxation(Precondition::At(at), "x", at, latest).is_ok());
        assert!(matches!(
            check_relaxation(Precondition::Required, "x", at, latest),
            Err(Refusal::PreconditionRequired { current, .. }) if current == at
        ));
        let e =
            check_relaxation(Precondition::At(Position(6)), "disengage", at, latest).unwrap_err();
        assert_eq!(e.code(), "precondition_failed");
        assert!(e.to_string().contains("engage by ops:bob"), "{e}");
    }
}
