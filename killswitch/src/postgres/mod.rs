//! The PostgreSQL store (feature `postgres`, on by default): the source of truth in
//! production.
//!
//! * Table `kill_switch_state` (one row, `id = 1`, enforced by a CHECK), read by the
//!   runbook verbatim: `SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;`
//! * Table `kill_switch_events`: the append-only audit trail (UPDATE, DELETE and
//!   TRUNCATE are refused by triggers).
//! * Each change is one round trip to the function `kill_switch_apply`, which locks
//!   the state row, replays an already-applied request id, bumps the version,
//!   appends the audit row and sends `NOTIFY kill_switch_changed`.
//! * Settings from `TRADEPULSE_KILL_SWITCH_POSTGRES__*` ([`PostgresKillSwitchStore::from_env`]).

use crate::{
    validate, Action, Audit, Error, KillSwitchEvent, KillSwitchState, KillSwitchStore, Subscription,
};
use failover_core::postgres::{
    migrate, ListenEvent, ListenOptions, Listener, Migration, MigrationReport, PgPool, PgSettings,
};
use std::sync::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use uuid::Uuid;

/// The env prefix of the store's settings: `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN` …
pub const ENV_PREFIX: &str = "TRADEPULSE_KILL_SWITCH";

/// The NOTIFY channel; the payload is the new version.
pub const CHANNEL: &str = "kill_switch_changed";

/// The embedded migrations of this crate (`killswitch/migrations/postgres/`).
pub const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "kill_switch",
    include_str!("../../migrations/postgres/0001_kill_switch.sql"),
)];

/// The pool's metrics label: the health component's spelling.
const COMPONENT: &str = crate::HEALTH_COMPONENT;
/// The key of this crate's migrations in the ledger (unchanged since the first release).
const MIGRATION_KEY: &str = "killswitch";

const LOAD: &str = "SELECT engaged, reason, updated_at, updated_by, ticket, version \
                    FROM kill_switch_state WHERE id = 1";
const APPLY: &str = "SELECT o_engaged, o_reason, o_updated_at, o_updated_by, o_ticket, o_version, \
                     o_replayed, o_prior_action FROM kill_switch_apply($1, $2, $3, $4, $5)";
const HISTORY: &str = "SELECT version, request_id, action, engaged, reason, actor, ticket, at \
                       FROM kill_switch_events ORDER BY version DESC LIMIT $1";

/// The kill switch in PostgreSQL.
#[derive(Debug)]
pub struct PostgresKillSwitchStore {
    pool: PgPool,
    changes: watch::Sender<Option<KillSwitchState>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    listen_options: ListenOptions,
}

impl Drop for PostgresKillSwitchStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

fn state_from(row: &Row) -> KillSwitchState {
    KillSwitchState {
        engaged: row.get(0),
        reason: row.get(1),
        updated_at: row.get(2),
        updated_by: row.get(3),
        ticket: row.get(4),
        version: row.get::<_, i64>(5) as u64,
    }
}

async fn load(pool: &PgPool) -> Result<KillSwitchState, Error> {
    let row = pool
        .run("kill_switch.load", |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(LOAD).await?;
                c.query_opt(&statement, &[]).await
            })
        })
        .await?;
    // The migration inserts the row; its absence means the schema is incomplete.
    row.map(|r| state_from(&r))
        .ok_or_else(|| Error::SchemaMissing {
            source: failover_core::DbError::new(
                failover_core::DbErrorKind::SchemaMissing,
                "kill_switch.load",
                None,
                "kill_switch_state has no row id = 1".into(),
            ),
        })
}

/// Publishes `state` when it is newer than what subscribers have.
fn publish(changes: &watch::Sender<Option<KillSwitchState>>, state: KillSwitchState) {
    changes.send_if_modified(|current| match current {
        Some(c) if c.version >= state.version => false,
        _ => {
            *current = Some(state);
            true
        }
    });
}

impl PostgresKillSwitchStore {
    /// A store with settings from `TRADEPULSE_KILL_SWITCH_POSTGRES__*`.
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
        let (changes, _) = watch::channel(None);
        Self {
            pool,
            changes,
            listener: Mutex::new(None),
            listen_options: ListenOptions::default(),
        }
    }

    /// Sets how the change listener probes and reconnects.
    #[must_use]
    pub fn with_listen_options(mut self, options: ListenOptions) -> Self {
        self.listen_options = options;
        self
    }

    /// Applies the embedded migrations (idempotent, safe under concurrent start).
    pub async fn migrate(&self) -> Result<MigrationReport, Error> {
        Ok(migrate(&self.pool, MIGRATION_KEY, MIGRATIONS).await?)
    }

    /// The pool, e.g. to share it or read its settings.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Points the store at another DSN (a promoted replica) without a restart.
    pub fn swap_dsn(&self, dsn: &str) -> Result<(), Error> {
        Ok(self.pool.swap_dsn(dsn)?)
    }

    async fn apply(&self, audit: &Audit, action: Action) -> Result<KillSwitchState, Error> {
        validate(audit, action)?;
        let request_id = audit.request_id();
        let (reason, actor) = (audit.reason().to_owned(), audit.actor().to_owned());
        let ticket = audit.ticket().map(str::to_owned);
        let op = match action {
            Action::Engage => "kill_switch.engage",
            Action::Disengage => "kill_switch.disengage",
        };
        let row = self
            .pool
            .run(op, |c| {
                // Owned copies: the statement may be sent again on a retry.
                let (reason, actor, ticket) = (reason.clone(), actor.clone(), ticket.clone());
                Box::pin(async move {
                    let statement = c.prepare_cached(APPLY).await?;
                    c.query_one(
                        &statement,
                        &[&request_id, &action.as_str(), &reason, &actor, &ticket],
                    )
                    .await
                })
            })
            .await?;
        let replayed: bool = row.get(6);
        let prior: String = row.get(7);
        if replayed && prior != action.as_str() {
            return Err(Error::RequestReused {
                request_id,
                previous: Action::parse(&prior).unwrap_or(Action::Engage),
            });
        }
        let state = state_from(&row);
        publish(&self.changes, state.clone());
        Ok(state)
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
                let newer = match &event {
                    ListenEvent::Connected => true,
                    ListenEvent::Notification { payload, .. } => {
                        let seen = changes.borrow().as_ref().map_or(0, |s| s.version);
                        payload.parse::<u64>().map_or(true, |v| v > seen)
                    }
                    ListenEvent::Disconnected { error } => {
                        tracing::warn!(%error, "kill switch change listener disconnected");
                        false
                    }
                };
                if newer {
                    match load(&pool).await {
                        Ok(state) => publish(&changes, state),
                        Err(error) => {
                            tracing::warn!(%error, "kill switch reload after notification failed")
                        }
                    }
                }
            }
        }));
    }
}

#[async_trait::async_trait]
impl KillSwitchStore for PostgresKillSwitchStore {
    async fn load(&self) -> Result<KillSwitchState, Error> {
        let state = load(&self.pool).await?;
        publish(&self.changes, state.clone());
        Ok(state)
    }

    async fn engage(&self, audit: &Audit) -> Result<KillSwitchState, Error> {
        self.apply(audit, Action::Engage).await
    }

    async fn disengage(&self, audit: &Audit) -> Result<KillSwitchState, Error> {
        self.apply(audit, Action::Disengage).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<KillSwitchEvent>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool
            .run("kill_switch.history", |c| {
                Box::pin(async move {
                    let statement = c.prepare_cached(HISTORY).await?;
                    c.query(&statement, &[&limit]).await
                })
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| KillSwitchEvent {
                version: r.get::<_, i64>(0) as u64,
                request_id: r.get::<_, Uuid>(1),
                action: Action::parse(r.get(2)).unwrap_or(Action::Engage),
                engaged: r.get(3),
                reason: r.get(4),
                actor: r.get(5),
                ticket: r.get(6),
                at: r.get(7),
            })
            .collect())
    }

    async fn subscribe(&self) -> Result<Subscription, Error> {
        self.ensure_listener();
        let rx = self.changes.subscribe();
        KillSwitchStore::load(self).await?;
        Ok(Subscription::new(rx))
    }
}
