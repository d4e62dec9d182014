//! Four eyes before a safety control is relaxed. Tightening never waits; relaxing
//! can require a second person.
//!
//! * **Policy.** Each relaxing action ([`ACTIONS`]) is either required to be
//!   approved or not. Requiring approval tightens: an operator may, and it applies
//!   at once. Waiving it relaxes: a supervisor with a ticket, and while any action
//!   is required the waiver itself waits for a second supervisor. How long a
//!   request stays open is the policy's `expiry` per action ([`DEFAULT_EXPIRY`]
//!   unless set when requiring it). `scope.relax` is the relaxation of a scoped
//!   control (control `scope`, one request per scope path).
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

/// The JSON crate an approval request's parameters are written with
/// ([`GateCommand::params`]), for stores that do not depend on it themselves.
pub use serde_json;

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
            message: format!(
                "unknown approval action {a:?}: one of {}",
                ACTIONS.join(", ")
            ),
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
    const REJECT: &str =
        "SELECT o_status AS status, o_id AS id, o_action AS action, o_what AS what, \
        o_decided_by AS decided_by, o_decision AS decision \
        FROM tradepulse_approval_reject($1, $2, $3, $4)";
    const ACKNOWLEDGE: &str =
        "SELECT o_status AS status, o_id AS id, o_action AS action, o_what AS what, \
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

        /// Runs one write statement and returns its row; a failure classified as a
        /// write's (the outcome may be unknown, retrying with the same id is safe).
        async fn write(
            &self,
            op: &'static str,
            sql: &str,
            params: &[crate::postgres::Param<'_>],
        ) -> Result<Row, ApprovalError> {
            self.pool
                .query_one(op, sql, params)
                .await
                .map_err(|e| ApprovalError::from(e.during_write()))
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
                .write(
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
                .await?;
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
                .write(
                    OP,
                    APPROVE,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await?;
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
                        actor: row
                            .get::<_, Option<String>>("other_actor")
                            .unwrap_or_default(),
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
                .write(
                    "approvals.reject",
                    REJECT,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&reason, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await?;
            decided("approvals.reject", id, &row)
        }

        async fn acknowledge(
            &self,
            id: Uuid,
            actor: &str,
            authority: Authority,
        ) -> Result<Decided, ApprovalError> {
            let row = self
                .write(
                    "approvals.acknowledge",
                    ACKNOWLEDGE,
                    &[
                        (&id, Type::UUID),
                        (&actor, Type::TEXT),
                        (&authority.as_str(), Type::TEXT),
                    ],
                )
                .await?;
            decided("approvals.acknowledge", id, &row)
        }
    }
}

pub use self::memory::{Claimed, Gate, GateCommand, MemoryApprovals, MemoryApprover};

mod memory {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex, MutexGuard, Weak};

    /// A control store in memory that applies approved requests: under its own lock
    /// it claims the request ([`MemoryApprovals::claim`]), applies the command with
    /// the request's position as the precondition, and closes the request
    /// ([`MemoryApprovals::close`]) — the same order as PostgreSQL (the control's
    /// lock first, then the request).
    pub trait MemoryApprover: Send + Sync + std::fmt::Debug {
        /// The control it applies for: `kill_switch`, `symbol_mode` or `scope`.
        fn control(&self) -> &'static str;
        /// Applies request `id`, approved by `actor`.
        fn apply_approved(
            &self,
            id: Uuid,
            actor: &str,
            approvals: &MemoryApprovals,
        ) -> Result<Approved, ApprovalError>;
    }

    /// A supervisor's relaxation, as a control's store submits it to the gate
    /// under its own lock (authority, ticket and precondition already checked).
    #[derive(Debug, Clone)]
    pub struct GateCommand<'a> {
        /// The action, e.g. `kill-switch.disengage`.
        pub action: &'static str,
        /// The control, e.g. `kill_switch`.
        pub control: &'static str,
        /// The target within the control, e.g. `mode:BTC-USD`.
        pub target: String,
        /// What it would do.
        pub what: String,
        /// The command's parameters, to apply it on approval.
        pub params: serde_json::Value,
        /// The audit of the command (actor, reason, ticket, request id, break-glass).
        pub audit: &'a Audit,
        /// The position of the target it is made against.
        pub expected: Position,
    }

    /// What the gate decided.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Gate {
        /// Not required: apply now.
        Apply,
        /// Required and the glass was broken: apply now, marked and reviewed.
        BreakGlass,
        /// Required: a pending request holds it; apply nothing.
        Pending(PendingApproval),
        /// This request id is a request closed earlier (its status); apply nothing.
        Closed(String),
    }

    /// A request claimed for approval: the command to apply.
    #[derive(Debug, Clone)]
    pub struct Claimed {
        /// The request.
        pub request: ApprovalRequest,
        /// The command's parameters.
        pub params: serde_json::Value,
    }

    #[derive(Debug)]
    struct Stored {
        request: ApprovalRequest,
        params: serde_json::Value,
        moved: Option<ChangeRef>,
    }

    #[derive(Debug)]
    struct Inner {
        policy: BTreeMap<String, PolicyEntry>,
        policy_position: u64,
        requests: Vec<Stored>,
        by_id: HashMap<Uuid, usize>,
        events: Vec<ApprovalEvent>,
    }

    /// The approvals in memory, held to the same rules as PostgreSQL (the control
    /// stores in memory call its gate). There are no database logins: the actor is
    /// the principal.
    #[derive(Debug)]
    pub struct MemoryApprovals {
        inner: Mutex<Inner>,
        approvers: Mutex<HashMap<&'static str, Weak<dyn MemoryApprover>>>,
    }

    impl Default for MemoryApprovals {
        fn default() -> Self {
            Self::new()
        }
    }

    const LOGIN: &str = "memory";

    fn now() -> SystemTime {
        crate::time::now_micros()
    }

    impl Inner {
        fn event(&mut self, r: &ApprovalRequest, event: &str, actor: &str, detail: String) {
            self.event_with(r.id, event, &r.action, &r.what, actor, None, None, detail);
        }

        #[allow(clippy::too_many_arguments)]
        fn event_with(
            &mut self,
            request_id: Uuid,
            event: &str,
            action: &str,
            what: &str,
            actor: &str,
            reason: Option<&str>,
            ticket: Option<&str>,
            detail: String,
        ) {
            let position = self.events.len() as u64 + 1;
            self.events.push(ApprovalEvent {
                position,
                request_id,
                event: event.into(),
                action: action.into(),
                what: what.into(),
                actor: actor.into(),
                login: LOGIN.into(),
                reason: reason.map(str::to_owned),
                ticket: ticket.map(str::to_owned),
                detail: Some(detail),
                at: now(),
            });
        }

        fn get(&mut self, id: Uuid) -> Option<&mut Stored> {
            self.by_id.get(&id).copied().map(|i| &mut self.requests[i])
        }

        fn decide(stored: &mut Stored, status: &str, actor: &str, decision: String) {
            stored.request.status = status.into();
            stored.request.decided_by = Some(actor.into());
            stored.request.decided_login = Some(LOGIN.into());
            stored.request.decision = Some(decision);
        }

        fn insert(&mut self, cmd: &GateCommand<'_>, status: &str) -> ApprovalRequest {
            let expiry = self
                .policy
                .get(cmd.action)
                .map_or(DEFAULT_EXPIRY, |p| Duration::from_secs(p.expiry_secs));
            let at = now();
            let request = ApprovalRequest {
                id: cmd.audit.request_id(),
                action: cmd.action.into(),
                control: cmd.control.into(),
                target: cmd.target.clone(),
                what: cmd.what.clone(),
                reason: cmd.audit.reason().into(),
                ticket: cmd.audit.ticket().map(str::to_owned),
                expected_position: cmd.expected,
                requested_by: cmd.audit.actor().into(),
                requested_login: LOGIN.into(),
                requested_at: at,
                expires_at: at + expiry,
                status: status.into(),
                decided_by: None,
                decided_login: None,
                decision: None,
                applied_position: None,
            };
            self.by_id.insert(request.id, self.requests.len());
            self.requests.push(Stored {
                request: request.clone(),
                params: cmd.params.clone(),
                moved: None,
            });
            request
        }

        fn gate(&mut self, cmd: &GateCommand<'_>, required: bool) -> Gate {
            let id = cmd.audit.request_id();
            if let Some(s) = self.get(id) {
                let r = &s.request;
                return if r.status == "pending"
                    && r.action == cmd.action
                    && r.target == cmd.target
                    && r.requested_by == cmd.audit.actor()
                {
                    Gate::Pending(PendingApproval {
                        id,
                        action: r.action.clone(),
                        what: r.what.clone(),
                        expires_at: r.expires_at,
                    })
                } else {
                    Gate::Closed(r.status.clone())
                };
            }
            if !required {
                return Gate::Apply;
            }
            if cmd.audit.break_glass() {
                let r = self.insert(cmd, "break_glass");
                let detail = format!(
                    "applied at once without a second person: position {}",
                    cmd.expected
                );
                self.event_with(
                    r.id,
                    "break_glass",
                    &r.action,
                    &r.what,
                    &r.requested_by,
                    Some(&r.reason),
                    r.ticket.as_deref(),
                    detail,
                );
                return Gate::BreakGlass;
            }
            let r = self.insert(cmd, "pending");
            let detail = format!("against position {}", cmd.expected);
            self.event_with(
                r.id,
                "requested",
                &r.action,
                &r.what,
                &r.requested_by,
                Some(&r.reason),
                r.ticket.as_deref(),
                detail,
            );
            Gate::Pending(PendingApproval {
                id: r.id,
                action: r.action,
                what: r.what,
                expires_at: r.expires_at,
            })
        }

        fn applied(
            &mut self,
            control: &str,
            target: &str,
            change: &ChangeRef,
            approving: Option<Uuid>,
        ) {
            let by = format!(
                "{} by {} (position {})",
                change.what, change.actor, change.position
            );
            let mut closed = Vec::new();
            for s in &mut self.requests {
                if s.request.control == control
                    && s.request.target == target
                    && s.request.status == "pending"
                    && Some(s.request.id) != approving
                {
                    Self::decide(
                        s,
                        "superseded",
                        &change.actor,
                        format!("superseded by {by}"),
                    );
                    s.moved = Some(change.clone());
                    closed.push(s.request.clone());
                }
            }
            for r in closed {
                self.event(
                    &r,
                    "superseded",
                    &change.actor,
                    format!("superseded by {by}"),
                );
            }
        }

        fn claim(&mut self, id: Uuid, actor: &str) -> Result<Claimed, ApprovalError> {
            let Some(s) = self.get(id) else {
                return Err(ApprovalError::NotFound { request: id });
            };
            let r = s.request.clone();
            if r.status != "pending" {
                return Err(match (&s.moved, r.status.as_str()) {
                    (Some(change), "superseded" | "stale") => ApprovalError::Stale {
                        request: id,
                        what: r.what,
                        expected: r.expected_position,
                        change: change.clone(),
                    },
                    _ => ApprovalError::NotPending {
                        request: id,
                        status: r.status,
                        decision: r.decision,
                    },
                });
            }
            if r.requested_by == actor {
                return Err(ApprovalError::SelfApproval {
                    request: id,
                    requested_by: r.requested_by,
                });
            }
            if r.expires_at <= now() {
                let decision = format!(
                    "expired at {}, before it was approved",
                    humantime::format_rfc3339_seconds(r.expires_at)
                );
                Self::decide(s, "expired", actor, decision);
                self.event(
                    &r,
                    "expired",
                    actor,
                    format!("observed when {actor} tried to approve it"),
                );
                return Err(ApprovalError::Expired {
                    request: id,
                    expires_at: r.expires_at,
                });
            }
            Ok(Claimed {
                request: r,
                params: s.params.clone(),
            })
        }

        fn close(
            &mut self,
            id: Uuid,
            actor: &str,
            outcome: Result<Position, ChangeRef>,
        ) -> Result<Approved, ApprovalError> {
            let Some(s) = self.get(id) else {
                return Err(ApprovalError::NotFound { request: id });
            };
            match outcome {
                Ok(position) => {
                    Self::decide(
                        s,
                        "applied",
                        actor,
                        format!("approved and applied at position {position}"),
                    );
                    s.request.applied_position = Some(position);
                    let r = s.request.clone();
                    self.event(
                        &r,
                        "approved",
                        actor,
                        format!(
                            "requested by {}; applied at position {position}",
                            r.requested_by
                        ),
                    );
                    Ok(Approved {
                        id,
                        action: r.action,
                        what: r.what,
                        requested_by: r.requested_by,
                        position,
                    })
                }
                Err(change) => {
                    Self::decide(
                        s,
                        "stale",
                        actor,
                        format!("the state moved since the request: {change}"),
                    );
                    s.moved = Some(change.clone());
                    let r = s.request.clone();
                    self.event(
                        &r,
                        "stale",
                        actor,
                        format!("not applied: the state moved: {change}"),
                    );
                    Err(ApprovalError::Stale {
                        request: id,
                        what: r.what,
                        expected: r.expected_position,
                        change,
                    })
                }
            }
        }

        fn set_policy(
            &mut self,
            actions: &[String],
            required: bool,
            expiry: Option<Duration>,
            actor: &str,
        ) -> Position {
            self.policy_position += 1;
            for a in actions {
                if let Some(p) = self.policy.get_mut(a) {
                    p.required = required;
                    if let (true, Some(e)) = (required, expiry) {
                        p.expiry_secs = e.as_secs().max(1);
                    }
                    p.updated_by = actor.into();
                    p.updated_at = now();
                }
            }
            Position(self.policy_position)
        }
    }

    impl MemoryApprovals {
        /// Nothing required, no request.
        pub fn new() -> Self {
            let policy = ACTIONS
                .iter()
                .map(|a| {
                    (
                        (*a).to_owned(),
                        PolicyEntry {
                            action: (*a).to_owned(),
                            required: false,
                            expiry_secs: DEFAULT_EXPIRY.as_secs(),
                            updated_by: String::new(),
                            updated_at: now(),
                        },
                    )
                })
                .collect();
            Self {
                inner: Mutex::new(Inner {
                    policy,
                    policy_position: 0,
                    requests: Vec::new(),
                    by_id: HashMap::new(),
                    events: Vec::new(),
                }),
                approvers: Mutex::new(HashMap::new()),
            }
        }

        fn lock(&self) -> MutexGuard<'_, Inner> {
            self.inner.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Registers the store that applies the requests of its control (held
        /// weakly: the store owns its approvals, not the other way round).
        pub fn register(&self, approver: Arc<dyn MemoryApprover>) {
            let control = approver.control();
            self.approvers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(control, Arc::downgrade(&approver));
        }

        /// The gate a control's store calls under its own lock when a supervisor
        /// relaxes (authority, ticket and precondition already checked).
        pub fn gate(&self, cmd: &GateCommand<'_>) -> Gate {
            let mut inner = self.lock();
            let required = inner.policy.get(cmd.action).is_some_and(|p| p.required);
            inner.gate(cmd, required)
        }

        /// What a control's store calls, under its own lock, after every change it
        /// applied to `target`: the requests pending against it close as
        /// superseded, naming `change`.
        pub fn applied(
            &self,
            control: &str,
            target: &str,
            change: &ChangeRef,
            approving: Option<Uuid>,
        ) {
            self.lock().applied(control, target, change, approving);
        }

        /// Claims request `id` for approval by `actor` (a control's
        /// [`MemoryApprover`] calls it under its own lock): refused when it is not
        /// pending, is the actor's own, or expired (closed as expired).
        pub fn claim(&self, id: Uuid, actor: &str) -> Result<Claimed, ApprovalError> {
            self.lock().claim(id, actor)
        }

        /// Closes a claimed request: applied at a position, or stale, naming the
        /// change in between.
        pub fn close(
            &self,
            id: Uuid,
            actor: &str,
            outcome: Result<Position, ChangeRef>,
        ) -> Result<Approved, ApprovalError> {
            self.lock().close(id, actor, outcome)
        }

        fn set_policy(
            &self,
            required: bool,
            actions: &[String],
            expiry: Option<Duration>,
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
            check_actions(actions)?;
            let what = format!(
                "{} {}",
                if required { "require" } else { "waive" },
                actions.join(" ")
            );
            let mut inner = self.lock();
            if inner.events.iter().any(|e| {
                e.request_id == audit.request_id() && (e.event == "required" || e.event == "waived")
            }) {
                return Ok(Position(inner.policy_position));
            }
            let mut broke_glass = false;
            if required {
                audit.validate(crate::Safety::Tighten, "require approvals")?;
            } else {
                audit.validate(crate::Safety::Relax, "waive approvals")?;
                if !audit.authority().may_relax() {
                    return Err(Refusal::Forbidden {
                        message: format!(
                            "waiving approvals ({}) relaxes safety and needs supervisor authority; {} acts as {}",
                            actions.join(" "),
                            audit.actor(),
                            audit.authority()
                        ),
                    }
                    .into());
                }
                let any_required = inner.policy.values().any(|p| p.required);
                let cmd = GateCommand {
                    action: WAIVE_ACTION,
                    control: "approval_policy",
                    target: "policy".into(),
                    what: what.clone(),
                    params: serde_json::json!({ "actions": actions }),
                    audit,
                    expected: Position(inner.policy_position),
                };
                match inner.gate(&cmd, any_required) {
                    Gate::Apply => {}
                    Gate::BreakGlass => broke_glass = true,
                    Gate::Pending(p) => return Err(ApprovalError::PendingApproval(p)),
                    Gate::Closed(status) => {
                        return Err(ApprovalError::NotPending {
                            request: audit.request_id(),
                            status,
                            decision: Some("build a new command (a new request id)".into()),
                        })
                    }
                }
            }
            let position = inner.set_policy(actions, required, expiry, audit.actor());
            inner.event_with(
                audit.request_id(),
                if required { "required" } else { "waived" },
                if required {
                    "approvals.require"
                } else {
                    WAIVE_ACTION
                },
                &what,
                audit.actor(),
                Some(audit.reason()),
                audit.ticket(),
                format!("policy position {position}"),
            );
            let change = ChangeRef {
                position,
                actor: audit.actor().into(),
                what: what.clone(),
                at: now(),
            };
            inner.applied("approval_policy", "policy", &change, None);
            drop(inner);
            if broke_glass {
                break_glass_applied(WAIVE_ACTION, &what, audit.actor(), audit.request_id());
            }
            Ok(position)
        }

        fn approve_policy(&self, id: Uuid, actor: &str) -> Result<Approved, ApprovalError> {
            let mut inner = self.lock();
            let claimed = inner.claim(id, actor)?;
            let r = &claimed.request;
            if r.expected_position != Position(inner.policy_position) {
                let last = inner
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.event == "required" || e.event == "waived")
                    .map(|e| ChangeRef {
                        position: Position(inner.policy_position),
                        actor: e.actor.clone(),
                        what: e.what.clone(),
                        at: e.at,
                    });
                let change = last.unwrap_or(ChangeRef {
                    position: Position(inner.policy_position),
                    actor: String::new(),
                    what: "a policy change".into(),
                    at: SystemTime::UNIX_EPOCH,
                });
                return inner.close(id, actor, Err(change));
            }
            let actions: Vec<String> = claimed.params["actions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let position = inner.set_policy(&actions, false, None, &r.requested_by);
            let (what, reason, ticket, requester) = (
                r.what.clone(),
                r.reason.clone(),
                r.ticket.clone(),
                r.requested_by.clone(),
            );
            inner.event_with(
                id,
                "waived",
                WAIVE_ACTION,
                &what,
                &requester,
                Some(&reason),
                ticket.as_deref(),
                format!("policy position {position}, approved request {id}"),
            );
            inner.close(id, actor, Ok(position))
        }
    }

    #[async_trait::async_trait]
    impl ApprovalStore for MemoryApprovals {
        async fn policy(&self) -> Result<Vec<PolicyEntry>, ApprovalError> {
            Ok(self.lock().policy.values().cloned().collect())
        }

        async fn require(
            &self,
            actions: &[String],
            expiry: Option<Duration>,
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
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
            self.set_policy(true, actions, expiry, audit)
        }

        async fn waive(
            &self,
            actions: &[String],
            audit: &Audit,
        ) -> Result<Position, ApprovalError> {
            self.set_policy(false, actions, None, audit)
        }

        async fn list(&self, all: bool) -> Result<Vec<ApprovalRequest>, ApprovalError> {
            let at = now();
            Ok(self
                .lock()
                .requests
                .iter()
                .rev()
                .map(|s| {
                    let mut r = s.request.clone();
                    if r.status == "pending" && r.expires_at <= at {
                        r.status = "expired".into();
                    }
                    r
                })
                .filter(|r| all || r.status == "pending")
                .collect())
        }

        async fn review(&self) -> Result<Vec<ApprovalRequest>, ApprovalError> {
            Ok(self
                .lock()
                .requests
                .iter()
                .rev()
                .filter(|s| s.request.status == "break_glass")
                .map(|s| s.request.clone())
                .collect())
        }

        async fn events(
            &self,
            request: Option<Uuid>,
            limit: usize,
        ) -> Result<Vec<ApprovalEvent>, ApprovalError> {
            Ok(self
                .lock()
                .events
                .iter()
                .rev()
                .filter(|e| request.is_none_or(|id| e.request_id == id))
                .take(limit)
                .cloned()
                .collect())
        }

        async fn approve(
            &self,
            id: Uuid,
            actor: &str,
            authority: Authority,
        ) -> Result<Approved, ApprovalError> {
            if !authority.may_relax() {
                return Err(Refusal::Forbidden {
                    message: format!(
                        "approving request {id} relaxes safety and needs supervisor authority; {actor} acts as {authority}"
                    ),
                }
                .into());
            }
            let control = {
                let mut inner = self.lock();
                match inner.get(id) {
                    Some(s) => s.request.control.clone(),
                    None => return Err(ApprovalError::NotFound { request: id }),
                }
            };
            if control == "approval_policy" {
                return self.approve_policy(id, actor);
            }
            let approver = self
                .approvers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(control.as_str())
                .and_then(Weak::upgrade);
            match approver {
                Some(a) => a.apply_approved(id, actor, self),
                None => Err(ApprovalError::Invalid {
                    message: format!(
                        "no {control} store is registered with these approvals: register it (MemoryApprovals::register) before approving its requests"
                    ),
                }),
            }
        }

        async fn reject(
            &self,
            id: Uuid,
            actor: &str,
            reason: &str,
            _authority: Authority,
        ) -> Result<Decided, ApprovalError> {
            if reason.trim().is_empty() {
                return Err(ApprovalError::Invalid {
                    message: format!("rejecting request {id} needs a reason"),
                });
            }
            let mut inner = self.lock();
            let Some(s) = inner.get(id) else {
                return Err(ApprovalError::NotFound { request: id });
            };
            if s.request.status != "pending" {
                return Err(ApprovalError::NotPending {
                    request: id,
                    status: s.request.status.clone(),
                    decision: s.request.decision.clone(),
                });
            }
            let expired = s.request.expires_at <= now();
            let status = if expired { "expired" } else { "rejected" };
            Inner::decide(s, status, actor, format!("{status}: {reason}"));
            let r = s.request.clone();
            inner.event(&r, status, actor, reason.to_owned());
            if expired {
                return Err(ApprovalError::Expired {
                    request: id,
                    expires_at: r.expires_at,
                });
            }
            Ok(Decided {
                id,
                status: r.status,
                action: r.action,
                what: r.what,
                decided_by: actor.into(),
            })
        }

        async fn acknowledge(
            &self,
            id: Uuid,
            actor: &str,
            authority: Authority,
        ) -> Result<Decided, ApprovalError> {
            if !authority.may_relax() {
                return Err(Refusal::Forbidden {
                    message: format!(
                        "acknowledging break-glass request {id} needs supervisor authority; {actor} acts as {authority}"
                    ),
                }
                .into());
            }
            let mut inner = self.lock();
            let Some(s) = inner.get(id) else {
                return Err(ApprovalError::NotFound { request: id });
            };
            if s.request.status != "break_glass" {
                return Err(ApprovalError::NotPending {
                    request: id,
                    status: s.request.status.clone(),
                    decision: s.request.decision.clone(),
                });
            }
            if s.request.requested_by == actor {
                return Err(ApprovalError::SelfAcknowledgement {
                    request: id,
                    requested_by: s.request.requested_by.clone(),
                });
            }
            Inner::decide(s, "acknowledged", actor, "break-glass acknowledged".into());
            let r = s.request.clone();
            inner.event(
                &r,
                "acknowledged",
                actor,
                format!("break-glass by {} acknowledged", r.requested_by),
            );
            Ok(Decided {
                id,
                status: r.status,
                action: r.action,
                what: r.what,
                decided_by: actor.into(),
            })
        }
    }
}
