//! The PostgreSQL store (feature `postgres`, on by default): the source of truth in
//! production.
//!
//! * Table `kill_switch_state` (one row, `id = 1`, enforced by a CHECK), which
//!   operators read by hand: `SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;`
//! * Table `kill_switch_events`: the append-only audit trail (UPDATE, DELETE and
//!   TRUNCATE are refused by triggers), identified by `position`.
//! * Each change is one round trip to the function `kill_switch_apply`, which locks
//!   the state row, replays an already-applied request id, bumps the version, takes
//!   the next position (`failover_next_position`: above every position of an older
//!   timeline), appends the audit row and sends `NOTIFY kill_switch_changed` with
//!   the position.
//! * Settings from `TRADEPULSE_KILL_SWITCH_POSTGRES__*` (`from_env`, from
//!   [`PgStore`], which also gives `new`, `from_lookup`, `migrate` and `swap_dsn`).

use crate::{
    describe, validate, Action, Applied, Audit, Authority, Error, KillSwitchEvent, KillSwitchState,
    KillSwitchStore, Position,
};
use failover_core::postgres::{
    interpret_payload, unexpected_status, ApplyCall, ApplyColumns, ListenOptions, Migration,
    Notified, PgChangeFeed, PgPool, Verdict, WhatFor,
};
use tokio_postgres::types::Type;
use tokio_postgres::Row;

pub use failover_core::postgres::PgStore;

/// The env prefix of the store's settings: `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN` …
pub const ENV_PREFIX: &str = "TRADEPULSE_KILL_SWITCH";

/// The NOTIFY channel; the payload is the new state as JSON (see [`NotifiedState`]),
/// or the new position alone when the state would not fit a payload.
pub const CHANNEL: &str = "kill_switch_changed";

/// The embedded migrations of this crate (`killswitch/migrations/postgres/`).
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "kill_switch",
        include_str!("../../migrations/postgres/0001_kill_switch.sql"),
    ),
    Migration::new(
        2,
        "positions",
        include_str!("../../migrations/postgres/0002_positions.sql"),
    ),
    Migration::new(
        3,
        "authority",
        include_str!("../../migrations/postgres/0003_authority.sql"),
    ),
    Migration::new(
        4,
        "audit_log",
        include_str!("../../migrations/postgres/0004_audit_log.sql"),
    ),
    Migration::new(
        5,
        "approvals",
        include_str!("../../migrations/postgres/0005_approvals.sql"),
    ),
    Migration::new(
        6,
        "append_only",
        include_str!("../../migrations/postgres/0006_append_only.sql"),
    ),
    Migration::new(
        7,
        "scopes",
        include_str!("../../migrations/postgres/0007_scopes.sql"),
    ),
];

const LOAD: &str = "SELECT engaged, reason, updated_at, updated_by, ticket, version, position \
                    FROM kill_switch_state WHERE id = 1";
const APPLY: &str = "SELECT o_status AS status, o_engaged AS engaged, o_reason AS reason, \
                     o_updated_at AS updated_at, o_updated_by AS updated_by, o_ticket AS ticket, \
                     o_version AS version, o_position AS position, o_other_position AS other_position, \
                     o_other_actor AS other_actor, o_other_action AS other_what, o_other_at AS other_at, \
                     o_approval_id AS approval_id, o_expires_at AS expires_at, o_break_glass AS break_glass \
                     FROM kill_switch_apply($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Where `kill_switch_apply` answers a pending approval and a broken glass.
const APPLY_COLUMNS: ApplyColumns = ApplyColumns {
    pending_id: "approval_id",
    expires_at: "expires_at",
    break_glass: Some("break_glass"),
};
const HISTORY: &str =
    "SELECT version, position, request_id, action, engaged, reason, actor, ticket, at, login, authority, \
                       approval_id, break_glass \
                       FROM kill_switch_events ORDER BY position DESC LIMIT $1";

/// The kill switch in PostgreSQL.
#[derive(Debug)]
pub struct PostgresKillSwitchStore {
    pool: PgPool,
    changes: PgChangeFeed<KillSwitchState>,
}

fn state_from(row: &Row) -> KillSwitchState {
    KillSwitchState {
        engaged: row.get("engaged"),
        reason: row.get("reason"),
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
        ticket: row.get("ticket"),
        version: row.get::<_, i64>("version") as u64,
        position: Position::from_i64(row.get("position")),
    }
}

async fn load(pool: &PgPool) -> Result<KillSwitchState, failover_core::DbError> {
    let row = pool.query_opt("kill_switch.load", LOAD, &[]).await?;
    // The migration inserts the row; its absence means the schema is incomplete.
    row.map(|r| state_from(&r)).ok_or_else(|| {
        failover_core::DbError::new(
            failover_core::DbErrorKind::SchemaMissing,
            "kill_switch.load",
            None,
            "kill_switch_state has no row id = 1".into(),
        )
    })
}

/// The state a `kill_switch_changed` notification carries.
#[derive(Debug, serde::Deserialize)]
pub struct NotifiedState {
    position: u64,
    version: u64,
    engaged: bool,
    reason: String,
    updated_by: String,
    ticket: Option<String>,
    updated_at_us: i64,
}

impl From<NotifiedState> for KillSwitchState {
    fn from(n: NotifiedState) -> Self {
        let micros = std::time::Duration::from_micros(n.updated_at_us.max(0) as u64);
        KillSwitchState {
            engaged: n.engaged,
            reason: n.reason,
            updated_at: std::time::UNIX_EPOCH + micros,
            updated_by: n.updated_by,
            ticket: n.ticket,
            version: n.version,
            position: Position(n.position),
        }
    }
}

/// A payload with the whole state is published as is; a bare position (or anything
/// unexpected) means "read the store" when it is newer.
fn interpret(payload: &str, held: Position) -> Notified<KillSwitchState> {
    let decode = |p: &str| {
        serde_json::from_str::<NotifiedState>(p)
            .ok()
            .map(Into::into)
    };
    interpret_payload(payload, held, decode, |_| None)
}

failover_core::pg_feed_store!(PostgresKillSwitchStore {
    env_prefix: ENV_PREFIX,
    component: crate::HEALTH_COMPONENT,
    migrations: "killswitch" => MIGRATIONS,
    error: Error,
    item: KillSwitchState,
    channel: CHANNEL,
    events_table: "kill_switch_events",
    reload: load,
    interpret: interpret,
});

impl PostgresKillSwitchStore {
    /// Sets how the change listener probes and reconnects.
    #[must_use]
    pub fn with_listen_options(mut self, options: ListenOptions) -> Self {
        self.changes.set_listen_options(options);
        self
    }

    async fn apply(
        &self,
        audit: &Audit,
        action: Action,
    ) -> Result<Applied<KillSwitchState>, Error> {
        validate(audit, action)?;
        let request_id = audit.request_id();
        let op = match action {
            Action::Engage => "kill_switch.engage",
            Action::Disengage => "kill_switch.disengage",
        };
        let precondition = audit.precondition();
        // Safe to send again on a retry: the request id makes it idempotent.
        let row = self
            .pool
            .query_one(
                op,
                APPLY,
                &[
                    (&request_id, Type::UUID),
                    (&action.as_str(), Type::TEXT),
                    (&audit.reason(), Type::TEXT),
                    (&audit.actor(), Type::TEXT),
                    (&audit.ticket(), Type::TEXT),
                    (&audit.authority().as_str(), Type::TEXT),
                    (&precondition.expected(), Type::INT8),
                    (&precondition.required(), Type::BOOL),
                    (&audit.break_glass(), Type::BOOL),
                ],
            )
            .await
            .map_err(|e| Error::from(e.during_write()))?;
        let state = state_from(&row);
        let what = |what_for| -> Result<String, Error> {
            Ok(match what_for {
                WhatFor::Approval => {
                    format!("disengage the kill switch (engaged: {})", state.reason)
                }
                WhatFor::BreakGlass => "disengage the kill switch".into(),
                WhatFor::Refusal => describe(action).into(),
            })
        };
        let call = ApplyCall::new("kill-switch.disengage", audit, state.position, &what);
        match call.decode(&row, &APPLY_COLUMNS)? {
            Verdict::Applied { replayed: true } => return Ok(Applied::replayed(state)),
            Verdict::Applied { replayed: false } => {}
            Verdict::Control(status) => return Err(unexpected_status(op, &status).into()),
        }
        self.changes.feed().publish(state.clone());
        Ok(Applied::new(state))
    }
}

/// The name operators give the store (after its table).
pub type PostgresKillSwitchStateStore = PostgresKillSwitchStore;

#[async_trait::async_trait]
impl KillSwitchStore for PostgresKillSwitchStore {
    async fn load(&self) -> Result<KillSwitchState, Error> {
        let state = load(&self.pool).await?;
        self.changes.feed().publish(state.clone());
        Ok(state)
    }

    async fn engage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.apply(audit, Action::Engage).await
    }

    async fn disengage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.apply(audit, Action::Disengage).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<KillSwitchEvent>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool
            .query("kill_switch.history", HISTORY, &[(&limit, Type::INT8)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| KillSwitchEvent {
                version: r.get::<_, i64>("version") as u64,
                position: Position::from_i64(r.get("position")),
                request_id: r.get("request_id"),
                action: Action::parse(r.get("action")).unwrap_or(Action::Engage),
                engaged: r.get("engaged"),
                reason: r.get("reason"),
                actor: r.get("actor"),
                ticket: r.get("ticket"),
                at: r.get("at"),
                login: r.get("login"),
                authority: r.get::<_, Option<&str>>("authority").map(|a| match a {
                    "operator" => Authority::Operator,
                    _ => Authority::Supervisor,
                }),
                approval_id: r.get("approval_id"),
                break_glass: r.get("break_glass"),
            })
            .collect())
    }
}
