//! The PostgreSQL store (feature `postgres`, on by default): the source of truth in
//! production.
//!
//! * Table `symbol_mode_state` (one row, `id = 1`): global mode, withdrawals halt and
//!   the version. Table `symbol_modes`: each symbol's own mode, who set it, and the
//!   version of that command. Table `symbol_mode_events`: the append-only audit trail
//!   (UPDATE, DELETE and TRUNCATE are refused by triggers), column `command` holding
//!   `SetSymbolMode`, `SetGlobalMode`, `CancelAll` or `WithdrawalsHalt` verbatim.
//! * Each command is one round trip to the function `symbol_mode_apply`, which locks
//!   the state row (serialising every command, so the transition check and the write
//!   cannot race), replays an already-applied request id, checks the transition
//!   against the sets of allowed source modes this library passes (the rules live in
//!   one place: [`SymbolMode::transition_to`]), bumps the version, writes the state
//!   and the audit row, and sends `NOTIFY symbol_mode_changed` (and
//!   `symbol_mode_cancel_all` for a `CancelAll`).
//! * [`changes_since`](crate::SymbolModeStore::changes_since) is one statement, so it
//!   reads one consistent snapshot; an idle poll returns a single row.
//! * Settings from `TRADEPULSE_SYMBOL_MODE_POSTGRES__*` ([`PostgresSymbolModeStore::from_env`]).

use crate::subscription::CancelAllFeed;
use crate::{
    transition_refusal, Audit, AuditEvent, CancelAllCommand, CancelAllSubscription, Command,
    CommandKind, Error, ModeDelta, Request, StartAt, Subscription, SymbolMode, SymbolModeStore,
    SymbolState, Transition, VenueState,
};
use failover_core::postgres::{
    migrate, ListenEvent, ListenOptions, Listener, Migration, MigrationReport, PgPool, PgSettings,
};
use failover_core::{DbError, DbErrorKind};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use uuid::Uuid;

/// The env prefix of the store's settings: `TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN` …
pub const ENV_PREFIX: &str = "TRADEPULSE_SYMBOL_MODE";

/// The NOTIFY channel of every accepted command; the payload is the new version.
pub const CHANNEL: &str = "symbol_mode_changed";

/// The NOTIFY channel of `CancelAll` commands; the payload is the command's `seq`.
pub const CANCEL_ALL_CHANNEL: &str = "symbol_mode_cancel_all";

/// The embedded migrations of this crate (`symbol-mode/migrations/postgres/`).
pub const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "symbol_mode",
    include_str!("../../migrations/postgres/0001_symbol_mode.sql"),
)];

const COMPONENT: &str = "symbol_mode";

const VENUE: &str =
    "SELECT global_mode, withdrawals_halted, version FROM symbol_mode_state WHERE id = 1";
const SYMBOL: &str = "SELECT symbol, mode, version, updated_by, reason, ticket, updated_at \
                      FROM symbol_modes WHERE symbol = $1";
/// One statement, one snapshot: the state row, the ids of the events at `$1` and at
/// the head, and every symbol set after `$1` (none: one row of NULLs).
const CHANGES: &str = "SELECT s.version, s.global_mode, s.withdrawals_halted, \
       (SELECT request_id FROM symbol_mode_events WHERE version = $1), \
       (SELECT request_id FROM symbol_mode_events WHERE version = s.version), \
       m.symbol, m.mode \
     FROM symbol_mode_state s LEFT JOIN symbol_modes m ON m.version > $1 \
     WHERE s.id = 1";
const APPLY: &str = "SELECT o_status, o_version, o_request_id, o_command, o_symbol, o_from, o_to, \
       o_withdrawals, o_reason, o_actor, o_ticket, o_at \
     FROM symbol_mode_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const HISTORY: &str = "SELECT version, request_id, command, symbol, from_mode, to_mode, \
       withdrawals_halted, reason, actor, ticket, at \
     FROM symbol_mode_events ORDER BY version DESC LIMIT $1";
const CANCEL_ALL_AFTER: &str = "SELECT version, request_id, command, symbol, from_mode, to_mode, \
       withdrawals_halted, reason, actor, ticket, at \
     FROM symbol_mode_events WHERE command = 'CancelAll' AND version > $1 ORDER BY version LIMIT 1000";

/// Symbol modes in PostgreSQL.
#[derive(Debug)]
pub struct PostgresSymbolModeStore {
    pool: PgPool,
    changes: watch::Sender<u64>,
    listener: Mutex<Option<JoinHandle<()>>>,
    listen_options: ListenOptions,
    cancel_all_poll: Duration,
}

impl Drop for PostgresSymbolModeStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
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

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn since_param(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An audit event from the columns `version, request_id, command, symbol, from, to,
/// withdrawals, reason, actor, ticket, at` starting at `offset`.
fn event_from(op: &'static str, row: &Row, offset: usize) -> Result<AuditEvent, Error> {
    let kind: String = row.get(offset + 2);
    let symbol: Option<String> = row.get(offset + 3);
    let from: Option<String> = row.get(offset + 4);
    let to: Option<String> = row.get(offset + 5);
    let on: Option<bool> = row.get(offset + 6);
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
        None => return Err(corrupt(op, format!("unknown command {kind:?}"))),
    };
    Ok(AuditEvent {
        version: version(row.get(offset)),
        request_id: row.get(offset + 1),
        command,
        reason: row.get(offset + 7),
        actor: row.get(offset + 8),
        ticket: row.get(offset + 9),
        at: row.get(offset + 10),
    })
}

async fn venue(pool: &PgPool) -> Result<VenueState, Error> {
    let row = pool
        .run("symbol_mode.venue", |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(VENUE).await?;
                c.query_opt(&statement, &[]).await
            })
        })
        .await?;
    // The migration inserts the row; its absence means the schema is incomplete.
    let row = row.ok_or_else(|| Error::SchemaMissing {
        source: DbError::new(
            DbErrorKind::SchemaMissing,
            "symbol_mode.venue",
            None,
            "symbol_mode_state has no row id = 1".into(),
        ),
    })?;
    Ok(VenueState {
        global: mode("symbol_mode.venue", row.get(0))?,
        withdrawals_halted: row.get(1),
        version: version(row.get(2)),
    })
}

/// Publishes `version` when it is newer than what subscribers have.
fn publish(changes: &watch::Sender<u64>, version: u64) {
    changes.send_if_modified(|current| {
        if version > *current {
            *current = version;
            true
        } else {
            false
        }
    });
}

fn names(modes: Vec<SymbolMode>) -> Vec<&'static str> {
    modes.into_iter().map(SymbolMode::as_str).collect()
}

impl PostgresSymbolModeStore {
    /// A store with settings from `TRADEPULSE_SYMBOL_MODE_POSTGRES__*`.
    pub fn from_env() -> Result<Self, Error> {
        Self::new(PgSettings::from_env(ENV_PREFIX)?)
    }

    /// Like [`from_env`](Self::from_env) with a custom lookup of the same variable
    /// names (a config map, a secret store, tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::new(PgSettings::from_lookup(ENV_PREFIX, lookup)?)
    }

    /// A store with these settings. Does not connect; the first call does.
    pub fn new(settings: PgSettings) -> Result<Self, Error> {
        Ok(Self::from_pool(PgPool::new(COMPONENT, settings)?))
    }

    /// A store over an existing pool (shared with other stores of the process).
    pub fn from_pool(pool: PgPool) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            pool,
            changes,
            listener: Mutex::new(None),
            listen_options: ListenOptions::default(),
            cancel_all_poll: Duration::from_secs(1),
        }
    }

    /// Sets how change listeners probe and reconnect.
    #[must_use]
    pub fn with_listen_options(mut self, options: ListenOptions) -> Self {
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

    /// Applies the embedded migrations (idempotent, safe under concurrent start).
    pub async fn migrate(&self) -> Result<MigrationReport, Error> {
        Ok(migrate(&self.pool, COMPONENT, MIGRATIONS).await?)
    }

    /// The pool, e.g. to share it or read its settings.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Points the store at another DSN (a promoted replica) without a restart.
    pub fn swap_dsn(&self, dsn: &str) -> Result<(), Error> {
        Ok(self.pool.swap_dsn(dsn)?)
    }

    async fn apply(
        &self,
        request: Request<'_>,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        request.validate(audit)?;
        let kind = request.kind();
        let (symbol, to, withdrawals, allowed, relax, noop) = match request {
            Request::SetMode {
                symbol,
                to,
                only_tighten,
            } => {
                let (allowed, relax, noop) = if only_tighten {
                    let below: Vec<SymbolMode> =
                        SymbolMode::ALL.into_iter().filter(|m| *m < to).collect();
                    let rest = SymbolMode::ALL.into_iter().filter(|m| *m >= to).collect();
                    (below, Vec::new(), rest)
                } else {
                    let mut allowed = SymbolMode::sources(to, Transition::Tighten);
                    let relax = SymbolMode::sources(to, Transition::Relax);
                    allowed.extend(relax.iter().copied());
                    (allowed, relax, Vec::new())
                };
                (symbol, Some(to), None, allowed, relax, noop)
            }
            Request::CancelAll { symbol } => {
                (Some(symbol), None, None, Vec::new(), Vec::new(), Vec::new())
            }
            Request::Withdrawals { on } => {
                (None, None, Some(on), Vec::new(), Vec::new(), Vec::new())
            }
        };
        let op = match kind {
            CommandKind::SetSymbolMode => "symbol_mode.set_symbol_mode",
            CommandKind::SetGlobalMode => "symbol_mode.set_global_mode",
            CommandKind::CancelAll => "symbol_mode.cancel_all",
            CommandKind::WithdrawalsHalt => "symbol_mode.withdrawals_halt",
        };
        let request_id = audit.request_id();
        let (allowed, relax, noop) = (names(allowed), names(relax), names(noop));
        let symbol_param = symbol.map(str::to_owned);
        let to_param = to.map(SymbolMode::as_str);
        let (reason, actor) = (audit.reason().to_owned(), audit.actor().to_owned());
        let ticket = audit.ticket().map(str::to_owned);
        let row = self
            .pool
            .run(op, |c| {
                // Owned copies: the statement may be sent again on a retry, which
                // is safe because the request id makes it idempotent.
                let (symbol, reason, actor, ticket) = (
                    symbol_param.clone(),
                    reason.clone(),
                    actor.clone(),
                    ticket.clone(),
                );
                let (allowed, relax, noop) = (allowed.clone(), relax.clone(), noop.clone());
                Box::pin(async move {
                    let statement = c.prepare_cached(APPLY).await?;
                    c.query_one(
                        &statement,
                        &[
                            &request_id,
                            &kind.as_str(),
                            &symbol,
                            &to_param,
                            &withdrawals,
                            &allowed,
                            &relax,
                            &noop,
                            &reason,
                            &actor,
                            &ticket,
                        ],
                    )
                    .await
                })
            })
            .await?;
        let status: String = row.get(0);
        match status.as_str() {
            "applied" | "replayed" => {
                let event = event_from(op, &row, 1)?;
                if status == "replayed" && !request.matches(&event.command) {
                    return Err(Error::RequestReused {
                        request_id,
                        previous: event.command.kind(),
                    });
                }
                publish(&self.changes, event.version);
                Ok(Some(event))
            }
            "unchanged" => Ok(None),
            "forbidden" | "ticket_required" => {
                let from = mode(op, row.get::<_, &str>(5))?;
                let to = to.unwrap_or_default();
                Err(transition_refusal(symbol, from, to, audit.ticket())
                    .unwrap_or_else(|| corrupt(op, format!("the database refused {from} -> {to} ({status}) but the rules allow it"))))
            }
            other => Err(corrupt(op, format!("unexpected status {other:?}"))),
        }
    }

    fn ensure_listener(&self) {
        let mut slot = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let pool = self.pool.clone();
        let changes = self.changes.clone();
        let mut listener = Listener::start(pool.clone(), &[CHANNEL], self.listen_options.clone());
        *slot = Some(tokio::spawn(async move {
            while let Some(event) = listener.recv().await {
                match event {
                    ListenEvent::Notification { payload, .. } => match payload.parse::<u64>() {
                        Ok(v) => publish(&changes, v),
                        Err(_) => tracing::warn!(payload, "unexpected symbol mode notification"),
                    },
                    // Notifications may have been missed while disconnected.
                    ListenEvent::Connected => match venue(&pool).await {
                        Ok(state) => publish(&changes, state.version),
                        Err(error) => {
                            tracing::warn!(%error, "symbol mode reload after reconnect failed")
                        }
                    },
                    ListenEvent::Disconnected { error } => {
                        tracing::warn!(%error, "symbol mode change listener disconnected");
                    }
                }
            }
        }));
    }

    async fn finish(&self, request: Request<'_>, audit: &Audit) -> Result<AuditEvent, Error> {
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
        publish(&self.changes, state.version);
        Ok(state)
    }

    async fn symbol_state(&self, symbol: &str) -> Result<Option<SymbolState>, Error> {
        crate::validate_symbol(symbol)?;
        let symbol = symbol.to_owned();
        let row = self
            .pool
            .run("symbol_mode.symbol_state", |c| {
                let symbol = symbol.clone();
                Box::pin(async move {
                    let statement = c.prepare_cached(SYMBOL).await?;
                    c.query_opt(&statement, &[&symbol]).await
                })
            })
            .await?;
        row.map(|r| {
            Ok(SymbolState {
                symbol: r.get(0),
                mode: mode("symbol_mode.symbol_state", r.get(1))?,
                version: version(r.get(2)),
                updated_by: r.get(3),
                reason: r.get(4),
                ticket: r.get(5),
                updated_at: r.get(6),
            })
        })
        .transpose()
    }

    async fn changes_since(&self, since: u64) -> Result<ModeDelta, Error> {
        let param = since_param(since);
        let rows = self
            .pool
            .run("symbol_mode.changes_since", |c| {
                Box::pin(async move {
                    let statement = c.prepare_cached(CHANGES).await?;
                    c.query(&statement, &[&param]).await
                })
            })
            .await?;
        let op = "symbol_mode.changes_since";
        let first = rows.first().ok_or_else(|| Error::SchemaMissing {
            source: DbError::new(
                DbErrorKind::SchemaMissing,
                op,
                None,
                "symbol_mode_state has no row id = 1".into(),
            ),
        })?;
        let mut symbols = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(symbol) = row.get::<_, Option<String>>(5) {
                symbols.push((symbol, mode(op, row.get(6))?));
            }
        }
        let delta = ModeDelta {
            since,
            since_event: first.get::<_, Option<Uuid>>(3),
            version: version(first.get(0)),
            head_event: first.get::<_, Option<Uuid>>(4),
            global: mode(op, first.get(1))?,
            withdrawals_halted: first.get(2),
            symbols,
        };
        publish(&self.changes, delta.version);
        Ok(delta)
    }

    async fn set_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<AuditEvent, Error> {
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
        self.apply(request, audit).await
    }

    async fn set_global_mode(&self, mode: SymbolMode, audit: &Audit) -> Result<AuditEvent, Error> {
        let request = Request::SetMode {
            symbol: None,
            to: mode,
            only_tighten: false,
        };
        self.finish(request, audit).await
    }

    async fn cancel_all(&self, symbol: &str, audit: &Audit) -> Result<CancelAllCommand, Error> {
        let event = self.finish(Request::CancelAll { symbol }, audit).await?;
        CancelAllCommand::from_event(&event)
            .ok_or_else(|| corrupt("symbol_mode.cancel_all", "not a CancelAll event".into()))
    }

    async fn withdrawals_halt(&self, on: bool, audit: &Audit) -> Result<AuditEvent, Error> {
        self.finish(Request::Withdrawals { on }, audit).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool
            .run("symbol_mode.history", |c| {
                Box::pin(async move {
                    let statement = c.prepare_cached(HISTORY).await?;
                    c.query(&statement, &[&limit]).await
                })
            })
            .await?;
        rows.iter()
            .map(|r| event_from("symbol_mode.history", r, 0))
            .collect()
    }

    async fn subscribe(&self) -> Result<Subscription, Error> {
        self.ensure_listener();
        let rx = self.changes.subscribe();
        SymbolModeStore::venue(self).await?;
        Ok(Subscription::new(rx))
    }

    async fn subscribe_cancel_all(&self, start: StartAt) -> Result<CancelAllSubscription, Error> {
        // Listen before reading the cursor, so nothing accepted in between is missed
        // (the first fetch after `Connected` reads everything after the cursor).
        let listener = Listener::start(
            self.pool.clone(),
            &[CANCEL_ALL_CHANNEL],
            self.listen_options.clone(),
        );
        let cursor = match start {
            StartAt::Now => venue(&self.pool).await?.version,
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

/// One subscription's own LISTEN connection plus a poll tick.
#[derive(Debug)]
struct PgFeed {
    pool: PgPool,
    listener: Listener,
    poll: tokio::time::Interval,
}

#[async_trait::async_trait]
impl CancelAllFeed for PgFeed {
    async fn fetch_after(&self, after: u64) -> Result<Vec<CancelAllCommand>, Error> {
        let op = "symbol_mode.cancel_all_after";
        let param = since_param(after);
        let rows = self
            .pool
            .run(op, |c| {
                Box::pin(async move {
                    let statement = c.prepare_cached(CANCEL_ALL_AFTER).await?;
                    c.query(&statement, &[&param]).await
                })
            })
            .await?;
        let mut commands = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = event_from(op, row, 0)?;
            commands.extend(CancelAllCommand::from_event(&event));
        }
        Ok(commands)
    }

    async fn wait(&mut self) -> bool {
        loop {
            tokio::select! {
                event = self.listener.recv() => match event {
                    Some(ListenEvent::Connected | ListenEvent::Notification { .. }) => return true,
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
