//! Four eyes before a safety control is relaxed. Tightening never waits; relaxing
//! can require a second person.
//!
//! * **Policy.** Each relaxing action ([`ACTIONS`]) is either required to be
//!   approved or not. Requiring approval tightens: an operator may, and it applies
//!   at once. Waiving it relaxes: a supervisor with a ticket, and while any action
//!   is required the waiver itself waits for a second supervisor. How long a
//!   request stays open is the policy's `expiry` per action ([`DEFAULT_EXPIRY`]
//!   unless set when requiring it). `scope.relax` is reserved for scoped controls,
//!   which do not exist yet: the policy accepts it so that they need no migration.
//! * **Pending requests are bound to the exact command and state.** A supervisor's
//!   relaxation of a required action changes nothing: it records the command
//!   (control, action, target, parameters, reason, ticket, actor, login) and the
//!   position of the state it was made against, and the control answers
//!   [`PendingApproval`] — an error variant of each control, so that a caller who
//!   propagates errors cannot mistake "pending" for "applied".
//! * **A different principal approves.** Another database login AND another actor,
//!   holding supervisor authority. The approval applies the command inside the
//!   approving transaction, under the control's row lock, with the request's
//!   position as the precondition: a state that moved closes it as stale
//!   ([`ApprovalError::Stale`], naming the change in between). Self-approval is
//!   refused; an expired request cannot be approved.
//! * **A tightening never waits** and closes the relaxations pending against the
//!   same target as superseded, naming itself.
//! * **Break-glass** applies a relaxation at once, marked in the control's audit
//!   event, counted in `approvals_break_glass_total{action}`, logged at WARN, and
//!   listed by [`ApprovalStore::review`] until a second supervisor acknowledges it.
//! * **Everything is audited** in one append-only trail ([`ApprovalEvent`]).

use crate::authority::{Authority, ChangeRef, Refusal};
use crate::{Audit, AuditError, DbError, DbErrorKind, Position};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// The actions whose relaxation can require approval, as the policy names them.
pub const ACTIONS: [&str; 6] = [
    "kill-switch.disengage",
    "global-mode.relax",
    "mode.relax",
    "withdrawals.lift",
    "throttle.relax",
    "scope.relax",
];

/// The action of a pending waiver of the policy itself.
pub const WAIVE_ACTION: &str = "approvals.waive";

/// How long a request stays open unless the policy says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// A relaxation waiting for a second supervisor: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The request's id (also the idempotency key of the command it holds).
    pub id: Uuid,
    /// The action, e.g. `kill-switch.disengage`.
    pub action: String,
    /// What it would do, e.g. `global mode HARD_HALT -> CANCEL_ONLY`.
    pub what: String,
    /// After this it cannot be approved.
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: SystemTime,
}

impl std::fmt::Display for PendingApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pending approval: request {} ({}: {}) changed nothing yet; a second supervisor must approve it before {} (approve with: safetyctl approvals approve {})",
            self.id,
            self.action,
            self.what,
            humantime::format_rfc3339_seconds(self.expires_at),
            self.id
        )
    }
}

/// One request, as `approvals list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: Uuid,
    /// The action.
    pub action: String,
    /// The control: `kill_switch`, `symbol_mode`, `approval_policy`.
    pub control: String,
    /// The target within the control, e.g. `global_mode`, `mode:BTC-USD`.
    pub target: String,
    /// What it would do.
    pub what: String,
    /// Why.
    pub reason: String,
    /// The ticket.
    pub ticket: Option<String>,
    /// The position of the state it was made against.
    pub expected_position: Position,
    /// Who asked (the audit actor).
    pub requested_by: String,
    /// The database login that asked.
    pub requested_login: String,
    /// When.
    #[serde(with = "crate::time::rfc3339")]
    pub requested_at: SystemTime,
    /// After this it cannot be approved.
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: SystemTime,
    /// `pending`, `applied`, `rejected`, `stale`, `expired`, `superseded`,
    /// `break_glass` (applied at once, not yet acknowledged) or `acknowledged`.
    /// A pending request past its expiry shows as `expired`.
    pub status: String,
    /// Who decided (approved, rejected, acknowledged, superseded).
    pub decided_by: Option<String>,
    /// The login that decided.
    pub decided_login: Option<String>,
    /// What was decided, in words.
    pub decision: Option<String>,
    /// Where the approved command was applied.
    pub applied_position: Option<Position>,
}

/// One row of the append-only trail `approval_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    /// Its identity, increasing.
    pub position: u64,
    /// The request (or, for a policy change, the command's request id).
    pub request_id: Uuid,
    /// `requested`, `approved`, `rejected`, `stale`, `expired`, `superseded`,
    /// `break_glass`, `acknowledged`, `required` or `waived`.
    pub event: String,
    /// The action.
    pub action: String,
    /// What the request does.
    pub what: String,
    /// Who.
    pub actor: String,
    /// The database login.
    pub login: String,
    /// Why, where given.
    pub reason: Option<String>,
    /// The ticket, where given.
    pub ticket: Option<String>,
    /// The details: the position, the change in between …
    pub detail: Option<String>,
    /// When.
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
}

/// One action of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// The action.
    pub action: String,
    /// True when relaxing it waits for a second supervisor.
    pub required: bool,
    /// How long its requests stay open, in seconds.
    pub expiry_secs: u64,
    /// Who last changed it (empty before the first change).
    pub updated_by: String,
    /// When.
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: SystemTime,
}

/// An approval that applied its command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    /// The request.
    pub id: Uuid,
    /// The action.
    pub action: String,
    /// What was applied.
    pub what: String,
    /// Who had asked.
    pub requested_by: String,
    /// The position of the applied change.
    pub position: Position,
}

/// A request closed by a decision (rejected, acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The request.
    pub id: Uuid,
    /// Its status now.
    pub status: String,
    /// The action.
    pub action: String,
    /// What it does.
    pub what: String,
    /// Who decided.
    pub decided_by: String,
}

/// Why an approval command was refused or failed. Each says what happened and
/// what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The command waits for a second supervisor (a waiver of the policy while
    /// approvals are required); nothing changed.
    #[error("{0}")]
    PendingApproval(PendingApproval),
    /// The approver is the requester (same login or same actor).
    #[error("refused, nothing changed: request {request} was made by {requested_by}; a different person (another login and another actor) with supervisor authority must approve it")]
    SelfApproval {
        /// The request.
        request: Uuid,
        /// Who made it.
        requested_by: String,
    },
    /// The acknowledger is the one who broke the glass.
    #[error("refused, nothing changed: break-glass request {request} was made by {requested_by}; a second supervisor (another login and another actor) must acknowledge it")]
    SelfAcknowledgement {
        /// The request.
        request: Uuid,
        /// Who broke the glass.
        requested_by: String,
    },
    /// The state moved since the request: it is closed as stale, nothing applied.
    #[error("refused, nothing applied: request {request} ({what}) was made against position {expected}, but the state moved: {change}; the request is closed as stale — read the state again and ask anew")]
    Stale {
        /// The request.
        request: Uuid,
        /// What it would have done.
        what: String,
        /// The position it was made against.
        expected: Position,
        /// The change in between.
        change: ChangeRef,
    },
    /// The request expired before it was approved; it is closed as expired.
    #[error("refused, nothing applied: request {request} expired at {}; ask anew", humantime::format_rfc3339_seconds(*.expires_at))]
    Expired {
        /// The request.
        request: Uuid,
        /// When it expired.
        expires_at: SystemTime,
    },
    /// The request is no longer pending (applied, rejected, stale, superseded …).
    #[error("refused, nothing changed: request {request} is {status}{}; list pending requests with: safetyctl approvals list", .decision.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NotPending {
        /// The request.
        request: Uuid,
        /// Its status.
        status: String,
        /// What was decided, in words.
        decision: Option<String>,
    },
    /// No request has this id.
    #[error("refused, nothing changed: there is no approval request {request}; list them with: safetyctl approvals list")]
    NotFound {
        /// The id asked for.
        request: Uuid,
    },
    /// The arguments cannot be used (unknown action, missing reason or ticket).
    #[error("refused, nothing changed: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// The audit context is invalid.
    #[error("refused, nothing changed: {0}")]
    InvalidAudit(#[from] AuditError),
    /// Refused by the authority rules (an operator approving, a login acting in
    /// another's name).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The database could not be reached within the retry budget.
    #[error("approvals unavailable: {source}{}", .source.outcome_note())]
    Unavailable {
        /// The database error.
        source: DbError,
    },
    /// Another session holds the row this command must lock; nothing was written.
    #[error("approvals locked, nothing was written: {source}")]
    Locked {
        /// The database error, with the blocking sessions.
        source: DbError,
    },
    /// The approval tables are missing.
    #[error("approval tables missing: run the migrations (safetyctl migrate) ({source})")]
    SchemaMissing {
        /// The database error.
        source: DbError,
    },
    /// Any other database error.
    #[error("approvals error: {source}")]
    Database {
        /// The database error.
        source: DbError,
    },
}

impl ApprovalError {
    /// The machine-readable code: `pending_approval`, `self_approval`,
    /// `stale_request`, `expired`, `not_pending`, `not_found`, `invalid`,
    /// `forbidden` …, `unavailable`, `locked`, `schema_missing`, `database`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PendingApproval(_) => "pending_approval",
            Self::SelfApproval { .. } | Self::SelfAcknowledgement { .. } => "self_approval",
            Self::Stale { .. } => "stale_request",
            Self::Expired { .. } => "expired",
            Self::NotPending { .. } => "not_pending",
            Self::NotFound { .. } => "not_found",
            Self::Invalid { .. } | Self::InvalidAudit(_) => "invalid",
            Self::Refused(r) => r.code(),
            Self::Unavailable { .. } => "unavailable",
            Self::Locked { .. } => "locked",
            Self::SchemaMissing { .. } => "schema_missing",
            Self::Database { .. } => "database",
        }
    }

    /// The HTTP status that answers it: 202 pending, 403 self-approval and
    /// forbidden, 404 not found, 409 stale, expired or not pending, 422 invalid,
    /// 503 unavailable or locked, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::PendingApproval(_) => 202,
            Self::SelfApproval { .. } | Self::SelfAcknowledgement { .. } => 403,
            Self::Refused(Refusal::Forbidden { .. }) => 403,
            Self::Refused(_) => 409,
            Self::Stale { .. } | Self::Expired { .. } | Self::NotPending { .. } => 409,
            Self::NotFound { .. } => 404,
            Self::Invalid { .. } | Self::InvalidAudit(_) => 422,
            Self::Unavailable { .. } | Self::Locked { .. } => 503,
            Self::SchemaMissing { .. } | Self::Database { .. } => 500,
        }
    }
}

impl From<DbError> for ApprovalError {
    fn from(source: DbError) -> Self {
        if let Some(refusal) = Refusal::from_db(&source) {
            return Self::Refused(refusal);
        }
        if source.sqlstate() == Some("22023") {
            return Self::Invalid {
                message: source
                    .message()
                    .strip_prefix("ERROR (22023): ")
                    .unwrap_or(source.message())
                    .to_owned(),
            };
        }
        match source.kind() {
            DbErrorKind::Unavailable => Self::Unavailable { source },
            DbErrorKind::SchemaMissing => Self::SchemaMissing { source },
            DbErrorKind::Locked => Self::Locked { source },
            _ => Self::Database { source },
        }
    }
}

/// Records a relaxation applied by breaking the glass: counts it in
/// `approvals_break_glass_total{action}` and logs it at WARN. Every store calls it
/// when its write answered that the glass was broken.
pub fn break_glass_applied(action: &'static str, what: &str, actor: &str, request: Uuid) {
    metrics::counter!("approvals_break_glass_total", "action" => action).increment(1);
    tracing::warn!(
        action,
        what,
        actor,
        request = %request,
        "BREAK-GLASS: a relaxation that requires a second person's approval was applied at once; a second supervisor must acknowledge it (safetyctl approvals review, then approvals acknowledge {request})"
    );
}

/// Checks an action name against [`ACTIONS`].
pub fn check_actions(actions: &[String]) -> Result<(), ApprovalError> {
    if actions.is_empty() {
        return Err(ApprovalError::Invalid {
            message: format!("name at least one action: {}", ACTIONS.join(", ")),
        });
    }
    match actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
        Some(a) => Err(ApprovalError::Invalid {
            message: format!("unknown approval action {a:?}: one of {}", ACTIONS.join(", ")),
        }),
        None => Ok(()),
    }
}

/// Where the approval policy, requests and trail live. Authority is decided in
/// the write: approving and acknowledging need supervisor authority and a
/// principal other than the requester; rejecting and requiring need operator
/// authority; waiving needs a supervisor with a ticket (and a second one while
/// any action is required).
#[async_trait::async_trait]
pub trait ApprovalStore: std::fmt::Debug + Send + Sync + 'static {
    /// The policy, one entry per action.
    async fn policy(&self) -> Result<Vec<PolicyEntry>, ApprovalError>;
    /// Requires approval of `actions` (a tightening: applies at once), optionally
    /// setting how long their requests stay open. Returns the policy's position.
    async fn require(
        &self,
        actions: &[String],
        expiry: Option<Duration>,
        audit: &Audit,
    ) -> Result<Position, ApprovalError>;
    /// Waives approval of `actions` (a relaxation). While any action is required
    /// it answers [`ApprovalError::PendingApproval`] unless the audit breaks the
    /// glass.
    async fn waive(&self, actions: &[String], audit: &Audit) -> Result<Position, ApprovalError>;
    /// Requests, newest first: the pending ones, or all with `all`.
    async fn list(&self, all: bool) -> Result<Vec<ApprovalRequest>, ApprovalError>;
    /// Break-glass relaxations not yet acknowledged, newest first.
    async fn review(&self) -> Result<Vec<ApprovalRequest>, ApprovalError>;
    /// The trail, newest first (of one request when given).
    async fn events(
        &self,
        request: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<ApprovalEvent>, ApprovalError>;
    /// Approves a pending request as `actor`, applying its command.
    async fn approve(
        &self,
        id: Uuid,
        actor: &str,
        authority: Authority,
    ) -> Result<Approved, ApprovalError>;
    /// Rejects a pending request.
    async fn reject(
        &self,
        id: Uuid,
        actor: &str,
        reason: &str,
        authority: Authority,
    ) -> Result<Decided, ApprovalError>;
    /// Acknowledges a break-glass relaxation (a second supervisor).
    async fn acknowledge(
        &self,
        id: Uuid,
        actor: &str,
        authority: Authority,
    ) -> Result<Decided, ApprovalError>;
}

#[cfg(feature = "postgres")]
pub use self::postgres::PostgresApprovals;

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::postgres::PgPool;
    use tokio_postgres::types::Type;
    use tokio_postgres::Row;

    const POLICY: &str = "SELECT action, required, extract(epoch FROM expiry)::FLOAT8 AS expiry, \
        updated_by, updated_at FROM approval_policy ORDER BY action";
    const POLICY_SET: &str = "SELECT o_status AS status, o_id AS id, o_expires_at AS expires_at, \
        o_position AS position, o_break_glass AS break_glass \
        FROM tradepulse_approval_policy_set($1, $2, $3, $4 * interval '1 second', $5, $6, $7, $8, $9)";
    const REQUEST_COLUMNS: &str = "id, action, control, target, what, reason, ticket, \
        expected_position, requested_by, requested_login, requested_at, expires_at, \
        CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END AS status, \
        decided_by, decided_login, decision, applied_position";
    const APPROVE: &str = "SELECT o_status AS status, o_id AS id, o_action AS action, o_what AS what, \
        o_requested_by AS requested_by, o_position AS position, o_other_position AS other_position, \
        o_other_actor AS other_actor, o_other_what AS other_what, o_other_at AS other_at, \
        o_expires_at AS expires_at FROM tradepulse_approve($1, $2, $3)";
    const REJECT: &str = "SELECT o_status AS status, o_id AS id, o_action AS action, o_what AS what, \
        o_decided_by AS decided_by, o_decision AS decision \
        FROM tradepulse_approval_reject($1, $2, $3, $4)";
    const ACKNOWLEDGE: &str = "SELECT o_status AS status, o_id AS id, o_action AS action, o_what AS what, \
        o_decided_by AS decided_by, o_decision AS decision \
        FROM tradepulse_approval_acknowledge($1, $2, $3)";
    const EVENTS: &str = "SELECT position, request_id, event, action, what, actor, login, reason, \
        ticket, detail, at FROM approval_events WHERE ($1::UUID IS NULL OR request_id = $1) \
        ORDER BY position DESC LIMIT $2";

    /// The approvals in PostgreSQL (failover-core's approvals migration, applied
    /// with every control's migrations). Shares a control's pool.
    #[derive(Debug, Clone)]
    pub struct PostgresApprovals {
        pool: PgPool,
    }

    fn request_from(r: &Row) -> ApprovalRequest {
        ApprovalRequest {
            id: r.get("id"),
            action: r.get("action"),
            control: r.get("control"),
            target: r.get("target"),
            what: r.get("what"),
            reason: r.get("reason"),
            ticket: r.get("ticket"),
            expected_position: Position::from_i64(r.get("expected_position")),
            requested_by: r.get("requested_by"),
            requested_login: r.get("requested_login"),
            requested_at: r.get("requested_at"),
            expires_at: r.get("expires_at"),
            status: r.get("status"),
            decided_by: r.get("decided_by"),
            decided_login: r.get("decided_login"),
            decision: r.get("decision"),
            applied_position: r
                .get::<_, Option<i64>>("applied_position")
                .map(Position::from_i64),
        }
    }

    fn decided(op: &'static str, id: Uuid, row: &Row) -> Result<Decided, ApprovalError> {
        let status: String = row.get("status");
        match status.as_str() {
            "rejected" | "acknowledged" => Ok(Decided {
                id,
                status,
                action: row.get("action"),
                what: row.get("what"),
                decided_by: row.get("decided_by"),
            }),
            "not_found" => Err(ApprovalError::NotFound { request: id }),
            "self_acknowledgement" => Err(ApprovalError::SelfAcknowledgement {
                request: id,
                requested_by: row.get("decided_by"),
            }),
            "expired" => Err(ApprovalError::Expired {
                request: id,
                expires_at: SystemTime::now(),
            }),
            s => match s
                .strip_prefix("not_pending:")
                .or_else(|| s.strip_prefix("not_break_glass:"))
            {
                Some(now) => Err(ApprovalError::NotPending {
                    request: id,
                    status: now.to_owned(),
                    decision: row.get("decision"),
                }),
                None => Err(unexpected(op, s)),
            },
        }
    }

    fn unexpected(op: &'static str, status: &str) -> ApprovalError {
        ApprovalError::Database {
            source: DbError::new(
                DbErrorKind::Permanent,
                op,
                None,
                format!("unexpected status {status:?}: the approval functions and this library disagree; run the migrations of this version"),
            ),
        }
    }

    impl PostgresApprovals {
        /// The approvals of the database `pool` talks to.
        pub fn new(pool: PgPool) -> Self {
            Self { pool }
        }

        async fn set_policy(
            &self,
            required: bool,
            actions: &[String],
            expiry: Option<Duration>,
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
            check_actions(actions)?;
            let safety = if required {
                crate::Safety::Tighten
            } else {
                crate::Safety::Relax
            };
            audit.validate(safety, "waive approvals")?;
            if let Some(e) = expiry {
                if e < Duration::from_secs(1) || e > Duration::from_secs(24 * 3600) {
                    return Err(ApprovalError::Invalid {
                        message: format!(
                            "an expiry of {} is out of bounds: between 1s and 24h",
                            humantime::format_duration(e)
                        ),
                    });
                }
            }
            let expiry = expiry.map(|d| d.as_secs_f64());
            let request_id = audit.request_id();
            let row = self
                .pool
                .query_one(
                    "approvals.policy_set",
                    POLICY_SET,
                    &[
                        (&request_id, Type::UUID),
                        (&actions, Type::TEXT_ARRAY),
                        (&required, Type::BOOL),
                        (&expiry, Type::FLOAT8),
                        (&audit.reason(), Type::TEXT),
                        (&audit.ticket(), Type::TEXT),
                        (&audit.actor(), Type::TEXT),
                        (&audit.authority().as_str(), Type::TEXT),
                        (&audit.break_glass(), Type::BOOL),
                    ],
                )
                .await
                .map_err(|e| ApprovalError::from(e.during_write()))?;
            let status: String = row.get("status");
            let position = Position::from_i64(row.get("position"));
            match status.as_str() {
                "applied" | "replayed" => {
                    if row.get::<_, Option<bool>>("break_glass") == Some(true) {
                        break_glass_applied(
                            WAIVE_ACTION,
                            &format!("waive {}", actions.join(" ")),
                            audit.actor(),
                            request_id,
                        );
                    }
                    Ok(position)
                }
                "pending" => Err(ApprovalError::PendingApproval(PendingApproval {
                    id: row.get("id"),
                    action: WAIVE_ACTION.into(),
                    what: format!("waive {}", actions.join(" ")),
                    expires_at: row.get("expires_at"),
                })),
                s => match s.strip_prefix("closed:") {
                    Some(now) => Err(ApprovalError::NotPending {
                        request: request_id,
                        status: now.to_owned(),
                        decision: Some("build a new command (a new request id)".into()),
                    }),
                    None => Err(unexpected("approvals.policy_set", s)),
                },
            }
        }
    }

    #[async_trait::async_trait]
    impl ApprovalStore for PostgresApprovals {
        async fn policy(&self) -> Result<Vec<PolicyEntry>, ApprovalError> {
            let rows = self.pool.query("approvals.policy", POLICY, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| PolicyEntry {
                    action: r.get("action"),
                    required: r.get("required"),
                    expiry_secs: r.get::<_, f64>("expiry").max(0.0) as u64,
                    updated_by: r.get("updated_by"),
                    updated_at: r.get("updated_at"),
                })
                .collect())
        }

        async fn require(
            &self,
            actions: &[String],
            expiry: Option<Duration>,
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
            self.set_policy(true, actions, expiry, audit).await
        }

        async fn waive(
            &self,
            actions: &[String],
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
            self.set_policy(false, actions, None, audit).await
        }

        async fn list(&self, all: bool) -> Result<Vec<ApprovalRequest>, ApprovalError> {
            let sql = format!(
                "SELECT {REQUEST_COLUMNS} FROM approval_requests {} ORDER BY requested_at DESC LIMIT 1000",
                if all { "" } else { "WHERE status = 'pending' AND expires_at > now()" }
            );
            let rows = self.pool.query("approvals.list", &sql, &[]).await?;
            Ok(rows.iter().map(request_from).collect())
        }

        async fn review(&self) -> Result<Vec<ApprovalRequest>, ApprovalError> {
            let sql = format!(
                "SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE status = 'break_glass' \
                 ORDER BY requested_at DESC LIMIT 1000"
            );
            let rows = self.pool.query("approvals.review", &sql, &[]).await?;
            Ok(rows.iter().map(request_from).collect())
        }

        async fn events(
            &self,
            request: Option<Uuid>,
            limit: usize,
        ) -> Result<Vec<ApprovalEvent>, ApprovalError> {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .pool
                .query(
                    "approvals.events",
                    EVENTS,
                    &[(&request, Type::UUID), (&limit, Type::INT8)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| ApprovalEvent {
                    position: r.get::<_, i64>("position").max(0) as u64,
                    request_id: r.get("request_id"),
                    event: r.get("event"),
                    action: r.get("action"),
                    what: r.get("what"),
                    actor: r.get("actor"),
                    login: r.get("login"),
                    reason: r.get("reason"),
                    ticket: r.get("ticket"),
                    detail: r.get("detail"),
                    at: r.get("at"),
                })
                .collect())
        }

        async fn approve(
            &self,
            id: Uuid,
            actor: &str,
            authority: Authority,
        ) -> Result<Approved, ApprovalError> {
            const OP: &str = "approvals.approve";
            let row = self
                .pool
                .query_one(
                    OP,
                    APPROVE,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| ApprovalError::from(e.during_write()))?;
            let status: String = row.get("status");
            let what: Option<String> = row.get("what");
            let requested_by: Option<String> = row.get("requested_by");
            let position = row
                .get::<_, Option<i64>>("position")
                .map(Position::from_i64)
                .unwrap_or(Position::ZERO);
            match status.as_str() {
                "applied" => Ok(Approved {
                    id,
                    action: row.get("action"),
                    what: what.unwrap_or_default(),
                    requested_by: requested_by.unwrap_or_default(),
                    position,
                }),
                "stale_request" => Err(ApprovalError::Stale {
                    request: id,
                    what: what.unwrap_or_default(),
                    expected: position,
                    change: ChangeRef {
                        position: row
                            .get::<_, Option<i64>>("other_position")
                            .map(Position::from_i64)
                            .unwrap_or(Position::ZERO),
                        actor: row.get::<_, Option<String>>("other_actor").unwrap_or_default(),
                        what: row
                            .get::<_, Option<String>>("other_what")
                            .unwrap_or_else(|| "a change".into()),
                        at: row
                            .get::<_, Option<SystemTime>>("other_at")
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    },
                }),
                "expired" => Err(ApprovalError::Expired {
                    request: id,
                    expires_at: row
                        .get::<_, Option<SystemTime>>("expires_at")
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                }),
                "self_approval" => Err(ApprovalError::SelfApproval {
                    request: id,
                    requested_by: requested_by.unwrap_or_default(),
                }),
                "not_found" => Err(ApprovalError::NotFound { request: id }),
                s => match s.strip_prefix("not_pending:") {
                    Some(now) => Err(ApprovalError::NotPending {
                        request: id,
                        status: now.to_owned(),
                        decision: row.get("other_what"),
                    }),
                    None => Err(unexpected(OP, s)),
                },
            }
        }

        async fn reject(
            &self,
            id: Uuid,
            actor: &str,
            reason: &str,
            authority: Authority,
        ) -> Result<Decided, ApprovalError> {
            let row = self
                .pool
                .query_one(
                    "approvals.reject",
                    REJECT,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&reason, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| ApprovalError::from(e.during_write()))?;
            decided("approvals.reject", id, &row)
        }

        async fn acknowledge(
            &self,
            id: Uuid,
            actor: &str,
            authority: Authority,
        ) -> Result<Decided, ApprovalError> {
            let row = self
                .pool
                .query_one(
                    "approvals.acknowledge",
                    ACKNOWLEDGE,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| ApprovalError::from(e.during_write()))?;
            decided("approvals.acknowledge", id, &row)
        }
    }
}
