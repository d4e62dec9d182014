//! The PostgreSQL store (feature `postgres`, on by default): the source of truth in
//! production.
//!
//! * Table `symbol_mode_state` (one row, `id = 1`): global mode, withdrawals halt and
//!   the version. Table `symbol_modes`: each symbol's own mode, who set it, and the
//!   version of that command. Table `symbol_mode_events`: the append-only audit trail
//!   (UPDATE, DELETE and TRUNCATE are refused by triggers), column `command` holding
//!   `SetSymbolMode`, `SetGlobalMode`, `CancelAll`, `WithdrawalsHalt`,
//!   `RegisterSymbol`, `SetThrottle` or `NewStrategiesHalt` verbatim.
//! * Each command is one round trip to the function `symbol_mode_apply`, which locks
//!   the state row (serialising every command, so the transition check and the write
//!   cannot race), replays an already-applied request id, checks the transition
//!   against the sets of allowed source modes this library passes (the rules live in
//!   one place: [`SymbolMode::transition_to`]), bumps the version, writes the state
//!   and the audit row, and sends `NOTIFY symbol_mode_changed` (and
//!   `symbol_mode_cancel_all` for a `CancelAll`), both with the command's position
//!   (`failover_next_position`: above every position of an older timeline).
//! * [`changes_since`](crate::SymbolModeStore::changes_since) is one statement, so it
//!   reads one consistent snapshot; an idle poll returns a single row.
//! * Settings from `TRADEPULSE_SYMBOL_MODE_POSTGRES__*` (`from_env`, from [`PgStore`],
//!   which also gives `new`, `from_lookup`, `migrate` and `swap_dsn`).

use crate::subscription::CancelAllFeed;
use crate::{
    near_match, transition_refusal, Applied, Audit, AuditEvent, Authority, CancelAllCommand,
    CancelAllSubscription, Command, CommandKind, Error, ModeChange, ModeDelta, NewStrategiesState,
    RegisteredSymbol, Request, StartAt, SymbolMode, SymbolModeStore, SymbolRefusal, SymbolState,
    Throttle, ThrottleState, VenueState,
};
use failover_core::postgres::{
    hub, hub::HubSubscription, interpret_payload, unexpected_status, ApplyCall, ApplyColumns,
    ListenEvent, ListenOptions, Migration, Notified, PgChangeFeed, PgPool, Verdict, WhatFor,
};
use failover_core::{DbError, DbErrorKind, Position};
use std::time::Duration;
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

pub use failover_core::postgres::PgStore;

/// The env prefix of the store's settings: `TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN` …
pub const ENV_PREFIX: &str = "TRADEPULSE_SYMBOL_MODE";

/// The NOTIFY channel of every accepted command; the payload is the command's delta
/// as JSON (see [`NotifiedDelta`]).
pub const CHANNEL: &str = "symbol_mode_changed";

/// The NOTIFY channel of `CancelAll` commands; the payload is the command's `seq` (its position).
pub const CANCEL_ALL_CHANNEL: &str = "symbol_mode_cancel_all";

/// The embedded migrations of this crate (`symbol-mode/migrations/postgres/`).
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "symbol_mode",
        include_str!("../../migrations/postgres/0001_symbol_mode.sql"),
    ),
    Migration::new(
        2,
        "positions",
        include_str!("../../migrations/postgres/0002_positions.sql"),
    ),
    Migration::new(
        3,
        "authority_registry",
        include_str!("../../migrations/postgres/0003_authority_registry.sql"),
    ),
    Migration::new(
        4,
        "throttles",
        include_str!("../../migrations/postgres/0004_throttles.sql"),
    ),
    Migration::new(
        5,
        "audit_log",
        include_str!("../../migrations/postgres/0005_audit_log.sql"),
    ),
    Migration::new(
        6,
        "approvals",
        include_str!("../../migrations/postgres/0006_approvals.sql"),
    ),
    Migration::new(
        7,
        "append_only",
        include_str!("../../migrations/postgres/0007_append_only.sql"),
    ),
    Migration::new(
        8,
        "new_strategies",
        include_str!("../../migrations/postgres/0008_new_strategies.sql"),
    ),
];

const VENUE: &str = "SELECT global_mode, withdrawals_halted, version, position, \
                     global_position, withdrawals_position, \
                     new_strategies_disabled, new_strategies_position \
                     FROM symbol_mode_state WHERE id = 1";
/// The new-strategies halt and the event that last set it (none: NULLs).
const NEW_STRATEGIES: &str = "SELECT s.new_strategies_disabled, s.new_strategies_position, \
       e.actor, e.reason, e.ticket, e.at \
     FROM symbol_mode_state s \
     LEFT JOIN symbol_mode_events e ON e.position = s.new_strategies_position \
     WHERE s.id = 1";
const SYMBOL: &str =
    "SELECT symbol, mode, version, updated_by, reason, ticket, updated_at, position \
                      FROM symbol_modes WHERE symbol = $1";
const SYMBOLS: &str = "SELECT symbol, registered_by, registered_at, position \
                       FROM symbol_registry ORDER BY symbol";
/// One statement, one snapshot: the state row, the ids of the events at `$1` and at
/// the head, and every symbol mode and throttle set after `$1` (none: one row of
/// NULLs).
const CHANGES: &str = "SELECT s.version, s.position, s.global_mode, s.withdrawals_halted, \
       s.new_strategies_disabled, \
       (SELECT request_id FROM symbol_mode_events WHERE version = $1) AS since_event, \
       (SELECT request_id FROM symbol_mode_events WHERE version = s.version) AS head_event, \
       c.throttle, c.symbol, c.mode, c.per_second, c.burst \
     FROM symbol_mode_state s LEFT JOIN ( \
       SELECT FALSE AS throttle, symbol, mode, NULL::INTEGER AS per_second, NULL::INTEGER AS burst \
         FROM symbol_modes WHERE version > $1 \
       UNION ALL \
       SELECT TRUE, symbol, NULL, per_second, burst FROM symbol_throttles WHERE version > $1 \
     ) c ON TRUE \
     WHERE s.id = 1";
const THROTTLES: &str = "SELECT symbol, per_second, burst, version, updated_by, reason, ticket, \
       updated_at, position FROM symbol_throttles ORDER BY symbol";
/// `o_withdrawals` answers the flag of either halt command. The event's approval and
/// break glass are read from the trail for a replay (the statement's snapshot holds
/// the replayed event, not one this call wrote; this library never passes an
/// approval, so a new event has none, and breaks glass when the status says so).
const APPLY: &str = "SELECT o_status AS status, o_version AS version, o_position AS position, \
       o_request_id AS request_id, o_command AS command, o_symbol AS symbol, \
       o_from AS from_mode, o_to AS to_mode, \
       CASE WHEN o_command = 'NewStrategiesHalt' THEN NULL ELSE o_withdrawals END \
         AS withdrawals_halted, \
       CASE WHEN o_command = 'NewStrategiesHalt' THEN o_withdrawals END \
         AS new_strategies_disabled, \
       (SELECT ev.approval_id FROM symbol_mode_events ev \
         WHERE ev.request_id = a.o_request_id AND ev.position = a.o_position) AS approval_id, \
       coalesce((SELECT ev.break_glass FROM symbol_mode_events ev \
         WHERE ev.request_id = a.o_request_id AND ev.position = a.o_position), \
         o_status = 'applied_break_glass') AS break_glass, \
       o_reason AS reason, o_actor AS actor, o_ticket AS ticket, o_at AS at, \
       o_login AS login, o_authority AS authority, o_target AS target, \
       o_other_position AS other_position, o_other_actor AS other_actor, \
       o_other_what AS other_what, o_other_at AS other_at, \
       o_from_rate AS from_rate, o_from_burst AS from_burst, o_to_rate AS to_rate, \
       o_to_burst AS to_burst \
     FROM symbol_mode_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) a";
/// Where `symbol_mode_apply` answers a pending approval (its request id and expiry);
/// a broken glass is its own status, `applied_break_glass`.
const APPLY_COLUMNS: ApplyColumns = ApplyColumns {
    pending_id: "request_id",
    expires_at: "at",
    break_glass: None,
};
const HISTORY: &str = "SELECT version, position, request_id, command, symbol, from_mode, to_mode, \
       withdrawals_halted, new_strategies_disabled, reason, actor, ticket, at, login, authority, \
       from_rate, from_burst, to_rate, to_burst, approval_id, break_glass \
     FROM symbol_mode_events ORDER BY position DESC LIMIT $1";
const CANCEL_ALL_AFTER: &str = "SELECT version, position, request_id, command, symbol, from_mode, \
       to_mode, withdrawals_halted, new_strategies_disabled, reason, actor, ticket, at, login, \
       authority, from_rate, from_burst, to_rate, to_burst, approval_id, break_glass \
     FROM symbol_mode_events WHERE command = 'CancelAll' AND position > $1 ORDER BY position LIMIT 1000";

/// Symbol modes in PostgreSQL.
#[derive(Debug)]
pub struct PostgresSymbolModeStore {
    pool: PgPool,
    changes: PgChangeFeed<ModeChange>,
    listen_options: ListenOptions,
    cancel_all_poll: Duration,
}

/// What a pending relaxation would do, for its answer.
fn approval_what(
    kind: CommandKind,
    symbol: Option<&str>,
    to: Option<SymbolMode>,
    withdrawals: Option<bool>,
    limit: Option<Throttle>,
    row: &Row,
) -> String {
    let from = row.get::<_, Option<&str>>("from_mode").unwrap_or("NORMAL");
    match (symbol, to, withdrawals) {
        _ if kind == CommandKind::NewStrategiesHalt => {
            "enable new strategy activations again".into()
        }
        (Some(s), Some(to), _) => format!("{s} {from} -> {to}"),
        (None, Some(to), _) => format!("global mode {from} -> {to}"),
        (_, _, Some(_)) => "lift the withdrawals halt".into(),
        (Some(s), None, None) => match limit {
            Some(l) => format!("throttle of {s} -> {l}"),
            None => format!("clear the throttle of {s}"),
        },
        _ => "a relaxation".into(),
    }
}

fn corrupt(op: &'static str, what: String) -> Error {
    Error::Database {
        source: DbError::new(DbErrorKind::Permanent, op, None, what),
    }
}

fn mode(op: &'static str, text: &str) -> Result<SymbolMode, Error> {
    text.parse()
        .map_err(|e: crate::ParseModeError| corrupt(op, e.to_string()))
}

/// A limit from its two columns (both NULL: none).
fn throttle(
    op: &'static str,
    rate: Option<i32>,
    burst: Option<i32>,
) -> Result<Option<Throttle>, Error> {
    match (rate, burst) {
        (None, None) => Ok(None),
        (Some(rate), Some(burst)) => {
            let rate = u32::try_from(rate).unwrap_or(0);
            let burst = u32::try_from(burst).unwrap_or(0);
            Throttle::new(rate, burst)
                .map(Some)
                .map_err(|e| corrupt(op, e.to_string()))
        }
        _ => Err(corrupt(op, "a throttle with a rate but no burst".into())),
    }
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn since_param(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An audit event from the columns `version, position, request_id, command, symbol,
/// from_mode, to_mode, withdrawals_halted, new_strategies_disabled, reason, actor,
/// ticket, at, login, authority, from_rate, from_burst, to_rate, to_burst,
/// approval_id, break_glass`.
fn event_from(op: &'static str, row: &Row) -> Result<AuditEvent, Error> {
    let kind: String = row.get("command");
    let symbol: Option<String> = row.get("symbol");
    let from: Option<String> = row.get("from_mode");
    let to: Option<String> = row.get("to_mode");
    let on: Option<bool> = row.get("withdrawals_halted");
    let missing = || corrupt(op, format!("audit event of {kind} lacks a column"));
    let command = match CommandKind::parse(&kind) {
        Some(CommandKind::SetSymbolMode) => Command::SetSymbolMode {
            symbol: symbol.ok_or_else(missing)?,
            from: mode(op, from.as_deref().ok_or_else(missing)?)?,
            to: mode(op, to.as_deref().ok_or_else(missing)?)?,
        },
        Some(CommandKind::SetGlobalMode) => Command::SetGlobalMode {
            from: mode(op, from.as_deref().ok_or_else(missing)?)?,
            to: mode(op, to.as_deref().ok_or_else(missing)?)?,
        },
        Some(CommandKind::CancelAll) => Command::CancelAll {
            symbol: symbol.ok_or_else(missing)?,
        },
        Some(CommandKind::WithdrawalsHalt) => Command::WithdrawalsHalt {
            on: on.ok_or_else(missing)?,
        },
        Some(CommandKind::RegisterSymbol) => Command::RegisterSymbol {
            symbol: symbol.ok_or_else(missing)?,
        },
        Some(CommandKind::NewStrategiesHalt) => Command::NewStrategiesHalt {
            on: row
                .get::<_, Option<bool>>("new_strategies_disabled")
                .ok_or_else(missing)?,
        },
        Some(CommandKind::SetThrottle) => Command::SetThrottle {
            symbol: symbol.ok_or_else(missing)?,
            from: throttle(op, row.get("from_rate"), row.get("from_burst"))?,
            to: throttle(op, row.get("to_rate"), row.get("to_burst"))?,
        },
        None => return Err(corrupt(op, format!("unknown command {kind:?}"))),
    };
    Ok(AuditEvent {
        version: version(row.get("version")),
        position: Position::from_i64(row.get("position")),
        request_id: row.get("request_id"),
        command,
        reason: row.get("reason"),
        actor: row.get("actor"),
        ticket: row.get("ticket"),
        at: row.get("at"),
        login: row.get("login"),
        authority: row.get::<_, Option<&str>>("authority").map(|a| match a {
            "operator" => Authority::Operator,
            _ => Authority::Supervisor,
        }),
        approval_id: row.get("approval_id"),
        break_glass: row.get("break_glass"),
    })
}

fn schema_missing(op: &'static str) -> DbError {
    DbError::new(
        DbErrorKind::SchemaMissing,
        op,
        None,
        "symbol_mode_state has no row id = 1".into(),
    )
}

async fn venue(pool: &PgPool) -> Result<VenueState, Error> {
    let op = "symbol_mode.venue";
    let row = pool.query_opt(op, VENUE, &[]).await?;
    // The migration inserts the row; its absence means the schema is incomplete.
    let row = row.ok_or_else(|| schema_missing(op))?;
    Ok(VenueState {
        global: mode(op, row.get("global_mode"))?,
        withdrawals_halted: row.get("withdrawals_halted"),
        version: version(row.get("version")),
        position: Position::from_i64(row.get("position")),
        global_position: Position::from_i64(row.get("global_position")),
        withdrawals_position: Position::from_i64(row.get("withdrawals_position")),
        new_strategies_disabled: row.get("new_strategies_disabled"),
        new_strategies_position: Position::from_i64(row.get("new_strategies_position")),
    })
}

async fn position(pool: &PgPool) -> Result<Position, DbError> {
    let row = pool
        .query_opt(
            "symbol_mode.position",
            "SELECT position FROM symbol_mode_state WHERE id = 1",
            &[],
        )
        .await?;
    row.map(|r| Position::from_i64(r.get(0)))
        .ok_or_else(|| schema_missing("symbol_mode.position"))
}

/// The newest change, as a position: a reconnected reader reads what changed.
async fn reload(pool: &PgPool) -> Result<ModeChange, DbError> {
    position(pool).await.map(ModeChange::at)
}

failover_core::pg_feed_store!(PostgresSymbolModeStore {
    env_prefix: ENV_PREFIX,
    component: crate::HEALTH_COMPONENT,
    migrations: "symbol_mode" => MIGRATIONS,
    error: Error,
    item: ModeChange,
    channel: CHANNEL,
    events_table: "symbol_mode_events",
    reload: reload,
    interpret: interpret,
    extra: {
        listen_options: ListenOptions::default(),
        cancel_all_poll: Duration::from_secs(1),
    },
});

/// The delta a `symbol_mode_changed` notification carries.
#[derive(Debug, serde::Deserialize)]
pub struct NotifiedDelta {
    position: u64,
    version: u64,
    since_event: Option<Uuid>,
    head_event: Uuid,
    global: String,
    withdrawals_halted: bool,
    #[serde(default)]
    new_strategies_disabled: bool,
    symbol: Option<String>,
    mode: Option<String>,
    #[serde(default)]
    throttle: Option<NotifiedThrottle>,
}

/// The limit a `SetThrottle` notification carries (`per_second`/`burst` null: cleared).
#[derive(Debug, serde::Deserialize)]
struct NotifiedThrottle {
    symbol: String,
    per_second: Option<i32>,
    burst: Option<i32>,
}

impl NotifiedDelta {
    fn change(self) -> Option<ModeChange> {
        let op = "symbol_mode.notification";
        let symbols = match (self.symbol, self.mode) {
            (Some(symbol), Some(m)) => vec![(symbol, mode(op, &m).ok()?)],
            _ => Vec::new(),
        };
        let throttles = match self.throttle {
            Some(t) => vec![(t.symbol, throttle(op, t.per_second, t.burst).ok()?)],
            None => Vec::new(),
        };
        let position = Position(self.position);
        Some(ModeChange {
            position,
            delta: Some(ModeDelta {
                since: self.version.checked_sub(1)?,
                since_event: self.since_event,
                version: self.version,
                position,
                head_event: Some(self.head_event),
                global: mode(op, &self.global).ok()?,
                withdrawals_halted: self.withdrawals_halted,
                new_strategies_disabled: self.new_strategies_disabled,
                symbols,
                throttles,
            }),
        })
    }
}

/// A payload with the delta is published as is; a bare position means "newer".
fn interpret(payload: &str, held: Position) -> Notified<ModeChange> {
    let decode = |p: &str| serde_json::from_str::<NotifiedDelta>(p).ok()?.change();
    interpret_payload(payload, held, decode, |p| Some(ModeChange::at(p)))
}

impl PostgresSymbolModeStore {
    /// Sets how change listeners probe and reconnect.
    #[must_use]
    pub fn with_listen_options(mut self, options: ListenOptions) -> Self {
        self.changes.set_listen_options(options.clone());
        self.listen_options = options;
        self
    }

    /// Sets how often a `CancelAll` subscription re-reads the audit trail as a
    /// fallback to NOTIFY (default 1 s). Reconnects always trigger a read.
    #[must_use]
    pub fn with_cancel_all_poll(mut self, interval: Duration) -> Self {
        self.cancel_all_poll = interval;
        self
    }

    async fn apply(
        &self,
        request: Request<'_>,
        audit: &Audit,
    ) -> Result<Option<Applied<AuditEvent>>, Error> {
        request.validate(audit)?;
        let kind = request.kind();
        let (symbol, to, withdrawals, only_tighten) = match request {
            Request::SetMode {
                symbol,
                to,
                only_tighten,
            } => (symbol, Some(to), None, only_tighten),
            Request::CancelAll { symbol } | Request::Register { symbol } => {
                (Some(symbol), None, None, false)
            }
            Request::Withdrawals { on } | Request::NewStrategies { on } => {
                (None, None, Some(on), false)
            }
            Request::Throttle {
                symbol,
                only_tighten,
                ..
            } => (Some(symbol), None, None, only_tighten),
        };
        let limit = match request {
            Request::Throttle { to, .. } => to,
            _ => None,
        };
        let rate = limit.map(|t| i32::try_from(t.per_second()).unwrap_or(i32::MAX));
        let burst = limit.map(|t| i32::try_from(t.burst()).unwrap_or(i32::MAX));
        let op = match kind {
            CommandKind::SetSymbolMode => "symbol_mode.set_symbol_mode",
            CommandKind::SetGlobalMode => "symbol_mode.set_global_mode",
            CommandKind::CancelAll => "symbol_mode.cancel_all",
            CommandKind::WithdrawalsHalt => "symbol_mode.withdrawals_halt",
            CommandKind::NewStrategiesHalt => "symbol_mode.new_strategies_halt",
            CommandKind::RegisterSymbol => "symbol_mode.register_symbol",
            CommandKind::SetThrottle => "symbol_mode.set_throttle",
        };
        let request_id = audit.request_id();
        let precondition = audit.precondition();
        // Safe to send again on a retry: the request id makes it idempotent.
        let row = self
            .pool
            .query_one(
                op,
                APPLY,
                &[
                    (&request_id, Type::UUID),
                    (&kind.as_str(), Type::TEXT),
                    (&symbol, Type::TEXT),
                    (&to.map(SymbolMode::as_str), Type::TEXT),
                    (&withdrawals, Type::BOOL),
                    (&only_tighten, Type::BOOL),
                    (&audit.reason(), Type::TEXT),
                    (&audit.actor(), Type::TEXT),
                    (&audit.ticket(), Type::TEXT),
                    (&audit.authority().as_str(), Type::TEXT),
                    (&precondition.expected(), Type::INT8),
                    (&precondition.required(), Type::BOOL),
                    (&rate, Type::INT4),
                    (&burst, Type::INT4),
                    (&audit.break_glass(), Type::BOOL),
                ],
            )
            .await
            .map_err(|e| Error::from(e.during_write()))?;
        let from = || -> Result<SymbolMode, Error> {
            mode(
                op,
                row.get::<_, Option<&str>>("from_mode").unwrap_or("NORMAL"),
            )
        };
        let approval_action = match kind {
            CommandKind::SetSymbolMode => "mode.relax",
            CommandKind::SetGlobalMode => "global-mode.relax",
            CommandKind::WithdrawalsHalt => "withdrawals.lift",
            CommandKind::NewStrategiesHalt => "strategies.enable-new",
            _ => "throttle.relax",
        };
        let what = |what_for| -> Result<String, Error> {
            if what_for == WhatFor::Approval {
                return Ok(approval_what(kind, symbol, to, withdrawals, limit, &row));
            }
            Ok(match (symbol, to, withdrawals) {
                (_, _, Some(on)) if kind == CommandKind::NewStrategiesHalt => {
                    Command::NewStrategiesHalt { on }
                }
                _ if kind == CommandKind::SetThrottle => Command::SetThrottle {
                    symbol: symbol.unwrap_or_default().to_owned(),
                    from: throttle(op, row.get("from_rate"), row.get("from_burst"))?,
                    to: limit,
                },
                (Some(s), Some(to), _) => Command::SetSymbolMode {
                    symbol: s.to_owned(),
                    from: from()?,
                    to,
                },
                (None, Some(to), _) => Command::SetGlobalMode { from: from()?, to },
                (_, _, Some(on)) => Command::WithdrawalsHalt { on },
                _ => Command::CancelAll {
                    symbol: symbol.unwrap_or_default().to_owned(),
                },
            }
            .describe())
        };
        let target = Position::from_i64(row.get::<_, Option<i64>>("target").unwrap_or(0));
        let call = ApplyCall::new(approval_action, audit, target, &what);
        match call.decode(&row, &APPLY_COLUMNS)? {
            Verdict::Applied { replayed: true } => {
                Ok(Some(Applied::replayed(event_from(op, &row)?)))
            }
            Verdict::Applied { replayed: false } => {
                let event = event_from(op, &row)?;
                self.changes.feed().publish(ModeChange::at(event.position));
                Ok(Some(Applied::new(event)))
            }
            Verdict::Control(status) => match status.as_str() {
                "unchanged" => Ok(None),
                "unknown_symbol" => {
                    let asked = symbol.unwrap_or_default();
                    let known = self.symbols().await.unwrap_or_default();
                    Err(Error::Control(SymbolRefusal::UnknownSymbol {
                        symbol: asked.to_owned(),
                        did_you_mean: near_match(asked, known.iter().map(|r| r.symbol.as_str())),
                    }))
                }
                "symbol_conflict" => Err(Error::Control(SymbolRefusal::SymbolConflict {
                    symbol: symbol.unwrap_or_default().to_owned(),
                    registered: row.get("symbol"),
                })),
                "ticket_required" if kind == CommandKind::SetThrottle => {
                    let from = throttle(op, row.get("from_rate"), row.get("from_burst"))?;
                    Err(Error::InvalidAudit(
                        failover_core::AuditError::TicketRequired {
                            action: crate::throttle_relax_action(
                                symbol.unwrap_or_default(),
                                from,
                                limit,
                            ),
                        },
                    ))
                }
                "transition_forbidden" | "ticket_required" => {
                    let (from, to) = (from()?, to.unwrap_or_default());
                    Err(transition_refusal(symbol, from, to, audit.ticket())
                        .unwrap_or_else(|| corrupt(op, format!("the database refused {from} -> {to} ({status}) but the rules allow it"))))
                }
                _ => Err(unexpected_status(op, &status).into()),
            },
        }
    }

    async fn finish(
        &self,
        request: Request<'_>,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.apply(request, audit).await?.ok_or_else(|| {
            corrupt(
                "symbol_mode.apply",
                "a command that always writes wrote nothing".into(),
            )
        })
    }
}

#[async_trait::async_trait]
impl SymbolModeStore for PostgresSymbolModeStore {
    async fn venue(&self) -> Result<VenueState, Error> {
        let state = venue(&self.pool).await?;
        self.changes.feed().publish(ModeChange::at(state.position));
        Ok(state)
    }

    async fn symbol_state(&self, symbol: &str) -> Result<Option<SymbolState>, Error> {
        crate::validate_symbol(symbol)?;
        let op = "symbol_mode.symbol_state";
        let row = self
            .pool
            .query_opt(op, SYMBOL, &[(&symbol, Type::TEXT)])
            .await?;
        row.map(|r| {
            Ok(SymbolState {
                symbol: r.get("symbol"),
                mode: mode(op, r.get("mode"))?,
                version: version(r.get("version")),
                updated_by: r.get("updated_by"),
                reason: r.get("reason"),
                ticket: r.get("ticket"),
                updated_at: r.get("updated_at"),
                position: Position::from_i64(r.get("position")),
            })
        })
        .transpose()
    }

    async fn changes_since(&self, since: u64) -> Result<ModeDelta, Error> {
        let op = "symbol_mode.changes_since";
        let rows = self
            .pool
            .query(op, CHANGES, &[(&since_param(since), Type::INT8)])
            .await?;
        let first = rows.first().ok_or_else(|| schema_missing(op))?;
        let mut symbols = Vec::with_capacity(rows.len());
        let mut throttles = Vec::new();
        for row in &rows {
            let Some(symbol) = row.get::<_, Option<String>>("symbol") else {
                continue;
            };
            if row.get::<_, bool>("throttle") {
                throttles.push((
                    symbol,
                    throttle(op, row.get("per_second"), row.get("burst"))?,
                ));
            } else {
                symbols.push((symbol, mode(op, row.get("mode"))?));
            }
        }
        let delta = ModeDelta {
            since,
            since_event: first.get::<_, Option<Uuid>>("since_event"),
            version: version(first.get("version")),
            position: Position::from_i64(first.get("position")),
            head_event: first.get::<_, Option<Uuid>>("head_event"),
            global: mode(op, first.get("global_mode"))?,
            withdrawals_halted: first.get("withdrawals_halted"),
            new_strategies_disabled: first.get("new_strategies_disabled"),
            symbols,
            throttles,
        };
        self.changes.feed().publish(ModeChange::at(delta.position));
        Ok(delta)
    }

    async fn set_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: Some(symbol),
            to: mode,
            only_tighten: false,
        };
        self.finish(request, audit).await
    }

    async fn tighten_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: Some(symbol),
            to: mode,
            only_tighten: true,
        };
        Ok(self.apply(request, audit).await?.map(Applied::into_inner))
    }

    async fn set_global_mode(
        &self,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: None,
            to: mode,
            only_tighten: false,
        };
        self.finish(request, audit).await
    }

    async fn cancel_all(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Applied<CancelAllCommand>, Error> {
        let event = self.finish(Request::CancelAll { symbol }, audit).await?;
        let command = CancelAllCommand::from_event(&event)
            .ok_or_else(|| corrupt("symbol_mode.cancel_all", "not a CancelAll event".into()))?;
        Ok(event.map(|_| command))
    }

    async fn withdrawals_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.finish(Request::Withdrawals { on }, audit).await
    }

    async fn new_strategies_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.finish(Request::NewStrategies { on }, audit).await
    }

    async fn new_strategies(&self) -> Result<NewStrategiesState, Error> {
        let op = "symbol_mode.new_strategies";
        let row = self.pool.query_opt(op, NEW_STRATEGIES, &[]).await?;
        let row = row.ok_or_else(|| schema_missing(op))?;
        Ok(NewStrategiesState {
            new_strategies_disabled: row.get("new_strategies_disabled"),
            position: Position::from_i64(row.get("new_strategies_position")),
            updated_by: row.get("actor"),
            reason: row.get("reason"),
            ticket: row.get("ticket"),
            updated_at: row.get("at"),
        })
    }

    async fn register_symbol(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        Ok(self
            .apply(Request::Register { symbol }, audit)
            .await?
            .map(Applied::into_inner))
    }

    async fn symbols(&self) -> Result<Vec<RegisteredSymbol>, Error> {
        let rows = self.pool.query("symbol_mode.symbols", SYMBOLS, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| RegisteredSymbol {
                symbol: r.get("symbol"),
                registered_by: r.get("registered_by"),
                registered_at: r.get("registered_at"),
                position: Position::from_i64(r.get("position")),
            })
            .collect())
    }

    async fn set_throttle(
        &self,
        symbol: &str,
        limit: Option<Throttle>,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::Throttle {
            symbol,
            to: limit,
            only_tighten: false,
        };
        self.finish(request, audit).await
    }

    async fn tighten_throttle(
        &self,
        symbol: &str,
        limit: Throttle,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        let request = Request::Throttle {
            symbol,
            to: Some(limit),
            only_tighten: true,
        };
        Ok(self.apply(request, audit).await?.map(Applied::into_inner))
    }

    async fn throttles(&self) -> Result<Vec<ThrottleState>, Error> {
        let op = "symbol_mode.throttles";
        let rows = self.pool.query(op, THROTTLES, &[]).await?;
        rows.iter()
            .map(|r| {
                Ok(ThrottleState {
                    symbol: r.get("symbol"),
                    limit: throttle(op, r.get("per_second"), r.get("burst"))?,
                    version: version(r.get("version")),
                    updated_by: r.get("updated_by"),
                    reason: r.get("reason"),
                    ticket: r.get("ticket"),
                    updated_at: r.get("updated_at"),
                    position: Position::from_i64(r.get("position")),
                })
            })
            .collect()
    }

    async fn history(&self, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        let op = "symbol_mode.history";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool
            .query(op, HISTORY, &[(&limit, Type::INT8)])
            .await?;
        rows.iter().map(|r| event_from(op, r)).collect()
    }

    async fn subscribe_cancel_all(&self, start: StartAt) -> Result<CancelAllSubscription, Error> {
        // Listen before reading the cursor, so nothing accepted in between is missed
        // (the first fetch after `Connected` reads everything after the cursor).
        let listener = hub::subscribe(&self.pool, CANCEL_ALL_CHANNEL, &self.listen_options);
        let cursor = match start {
            StartAt::Now => venue(&self.pool).await?.position.0,
            StartAt::After(seq) => seq,
        };
        let mut poll = tokio::time::interval(self.cancel_all_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let feed = PgFeed {
            pool: self.pool.clone(),
            listener,
            poll,
        };
        Ok(CancelAllSubscription::new(Box::new(feed), cursor))
    }
}

/// One subscription to the process's shared LISTEN connection plus a poll tick.
#[derive(Debug)]
struct PgFeed {
    pool: PgPool,
    listener: HubSubscription,
    poll: tokio::time::Interval,
}

#[async_trait::async_trait]
impl CancelAllFeed for PgFeed {
    async fn fetch_after(&self, after: u64) -> Result<Vec<CancelAllCommand>, Error> {
        let op = "symbol_mode.cancel_all_after";
        let rows = self
            .pool
            .query(op, CANCEL_ALL_AFTER, &[(&since_param(after), Type::INT8)])
            .await?;
        let mut commands = Vec::with_capacity(rows.len());
        for row in &rows {
            commands.extend(CancelAllCommand::from_event(&event_from(op, row)?));
        }
        Ok(commands)
    }

    async fn wait(&mut self) -> bool {
        loop {
            tokio::select! {
                event = self.listener.recv() => match event {
                    Some(ListenEvent::Connected | ListenEvent::Joined { .. } | ListenEvent::Notification { .. }) => return true,
                    Some(ListenEvent::Disconnected { error }) => {
                        tracing::debug!(%error, "CancelAll listener disconnected; will catch up on reconnect");
                    }
                    None => return false,
                },
                _ = self.poll.tick() => return true,
            }
        }
    }
}
