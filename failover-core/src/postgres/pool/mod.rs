//! A PostgreSQL pool that survives a primary failure.
//!
//! * Built on deadpool-postgres with a `tokio_postgres::Config` of our own, because
//!   deadpool's own `Config` silently drops `target_session_attrs`.
//! * Hosts of a multi-host DSN are tried in order, **each bounded by the connect
//!   timeout** (tokio-postgres bounds only the TCP connect, so a hung or SIGSTOPped
//!   server would otherwise stall every caller), and only a read-write server is
//!   accepted.
//! * A pooled connection is verified before reuse — and dropped when its server has
//!   become a standby or read-only (a demoted primary passes deadpool's `Verified`) —
//!   whenever it was not verified within the last second, and after any failed
//!   operation of [`PgPool::run`] or [`PgPool::transaction`] (a failover sign). A busy connection therefore costs
//!   no extra round trip per operation, and reads cannot linger on a demoted server.
//! * Every operation runs under [`RetryPolicy`](crate::RetryPolicy): each attempt is
//!   bounded by the operation timeout, the whole call by the retry budget; a
//!   connection that failed or timed out is discarded, never reused.
//! * Every pooled connection gets `SET lock_timeout` when it is opened
//!   ([`PgSettings::effective_lock_timeout`], 500 ms by default): a statement stuck
//!   behind another session's lock fails as [`DbErrorKind::Locked`] within it, is not
//!   retried (it would wait for the same session again), and the error names the
//!   sessions holding the lock ([`DbError::blockers`]) and how to end them. A lock is
//!   not an outage: [`PgPool::unreachable`] stays `None`.
//! * When every host answers but each is in recovery or read-only, the error is
//!   [`DbErrorKind::Unavailable`] with [`DbError::no_primary`] ("every host is in
//!   recovery: no primary yet …"), and health says so.
//! * Each error says how far it got ([`DbError::reach`]): no connection opened,
//!   refused by the server, or lost in flight — only the last leaves a write's
//!   outcome unknown.
//! * [`PgPool::read_only_from_standby`] gives a pool for read-only commands that
//!   accepts any server, standbys included; [`PgPool::answered_by`] says which server
//!   answered and its replay lag.
//! * [`PgPool::swap_dsn`] points the pool at a new primary without a restart.
//! * Every attempt's outcome is remembered: [`PgPool::unreachable`] says at once
//!   (not after the retry budget) when the database cannot be reached, so health can
//!   say `failed` within a second of the first failed attempt.
//! * Query helpers ([`PgPool::query`], [`query_one`](PgPool::query_one),
//!   [`query_opt`](PgPool::query_opt), [`execute`](PgPool::execute)) take borrowed
//!   parameters and prepare (and cache) the statement inside the retry loop.
//!
//! Metrics (through the `metrics` facade, label `component`):
//! `failover_pg_attempts_total`, `failover_pg_retries_total`,
//! `failover_pg_timeouts_total`, `failover_pg_errors_total{class}`,
//! `failover_pg_lock_timeouts_total{op}`,
//! `failover_pg_failovers_total`, `failover_pg_connects_total{host,outcome}`,
//! histogram `failover_pg_operation_seconds{op}`.

use super::connect::{DedicatedConnection, FailoverConnect, SharedConnect};
use super::error::{from_retry, lock_site, LockSite, PgFailure, LOCK_NOT_AVAILABLE, NO_PRIMARY};
use super::manager::{Object, Pool, VerifyingManager, RECYCLE_CHECK};
use super::settings::{PgSettings, StatementMode};
use super::tls::connector;
use crate::errors::ConfigError;
use crate::errors::{describe_blockers, Blocker, DbError, DbErrorKind, Reach};
use crate::log::Throttle;
use crate::retry::{Classify, ErrorClass};
use arc_swap::ArcSwap;
use deadpool_postgres::{Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime, Timeouts};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

/// A statement parameter with its PostgreSQL type, e.g. `(&id, Type::UUID)`: the type
/// lets the pool send the statement prepared or unnamed.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// What a statement must return.
#[derive(Debug, Clone, Copy)]
enum Rows {
    All,
    One,
    AtMostOne,
    Count,
}

struct Output {
    rows: Vec<Row>,
    count: u64,
}

/// SQLSTATE 26000 (prepared statement does not exist) or 42P05 (already exists).
fn is_pooler_error(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("26000" | "42P05"))
}

/// Prepared once per connection (cached), then executed.
async fn prepared(
    client: &PgClient,
    sql: &str,
    types: &[Type],
    values: &[&(dyn ToSql + Sync)],
    want: Rows,
) -> Result<Output, tokio_postgres::Error> {
    let statement = client.prepare_typed_cached(sql, types).await?;
    if let Rows::Count = want {
        let count = client.execute(&statement, values).await?;
        return Ok(Output {
            rows: Vec::new(),
            count,
        });
    }
    let rows = client.query(&statement, values).await?;
    Ok(Output {
        count: rows.len() as u64,
        rows,
    })
}

/// Parsed, bound and executed unnamed in one round trip: nothing lives on the server
/// connection afterwards, so a transaction pooler may hand the next statement to
/// another one.
async fn unnamed(
    client: &PgClient,
    sql: &str,
    params: &[Param<'_>],
    want: Rows,
) -> Result<Output, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let stream = client
        .query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone())))
        .await?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    let count = match want {
        Rows::Count => stream.rows_affected().unwrap_or(rows.len() as u64),
        _ => rows.len() as u64,
    };
    Ok(Output { rows, count })
}
use tracing::Instrument;

pub use super::manager::PgClient;

/// A failover-aware pool. Cheap to clone; clones share connections and settings.
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<Inner>,
}

struct Inner {
    component: &'static str,
    /// Bumped on every retryable failure: every pooled connection is verified again.
    epoch: Arc<AtomicU64>,
    current: ArcSwap<Generation>,
    next_id: AtomicU64,
    last_connect: Arc<Mutex<Option<String>>>,
    last_host: Arc<Mutex<Option<String>>>,
    link: Mutex<Link>,
    /// Statements are sent unnamed (a transaction pooler in between).
    unnamed: std::sync::atomic::AtomicBool,
    /// The generation id, for listeners that must follow a DSN swap.
    generation: watch::Sender<u64>,
    /// Any server is accepted, standbys included (a pool for reads).
    standby: bool,
}

/// Whether the database can be reached now, from the outcome of the last attempt.
#[derive(Debug, Default)]
struct Link {
    failing: Option<(Instant, String)>,
    warnings: Throttle,
}

struct Generation {
    id: u64,
    pool: Pool,
    settings: PgSettings,
    connect: Arc<FailoverConnect>,
    /// Where LISTEN goes when a listen DSN is set apart from the DSN.
    listen: Option<Arc<FailoverConnect>>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.current.load();
        f.debug_struct("PgPool")
            .field("component", &self.inner.component)
            .field("generation", &g.id)
            .field("settings", &g.settings)
            .field("status", &g.pool.status())
            .finish()
    }
}

/// The short word health details start with, from a failure's full text: what an
/// operator greps for ("connection refused", "no writable host", "timed out after 2s").
pub(crate) fn cause_of(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if text.starts_with(NO_PRIMARY) {
        return text.to_owned();
    }
    let word = if lower.contains("connection refused") {
        "connection refused"
    } else if lower.starts_with("no writable host")
        || lower.contains("does not allow writes")
        || lower.contains("read-only")
        || lower.contains("standby")
    {
        "no writable host"
    } else if lower.contains("timed out") || lower.contains("no answer within") {
        return text.to_owned();
    } else if lower.contains("connection closed") || lower.contains("connection reset") {
        "connection lost"
    } else {
        return text.to_owned();
    };
    if lower.starts_with(word) {
        text.to_owned()
    } else {
        format!("{word}: {text}")
    }
}

impl PgPool {
    /// A pool for `component` (used in metrics and as default `application_name`).
    /// Does not connect: the first operation does.
    pub fn new(component: &'static str, settings: PgSettings) -> Result<Self, ConfigError> {
        Self::with_mode(component, settings, false)
    }

    /// A pool over the same settings for **read-only** commands that accepts any
    /// server, a standby included (libpq's `target_session_attrs=any`): the hosts are
    /// tried in DSN order and the first that answers serves, whether primary or
    /// standby, and a pooled connection is not dropped for being on a standby. Use it
    /// to show state while there is no primary (a promotion under way) or through a
    /// DSN that names a replica, and say where the answer came from with
    /// [`answered_by`](Self::answered_by): a standby may lag behind the primary.
    /// Writes through it fail on a standby (SQLSTATE 25006). The new pool has
    /// connections of its own; its settings follow [`swap_settings`](Self::swap_settings)
    /// of the new pool only.
    pub fn read_only_from_standby(&self) -> Result<PgPool, ConfigError> {
        Self::with_mode(self.inner.component, self.settings(), true)
    }

    /// True for a pool made by [`read_only_from_standby`](Self::read_only_from_standby).
    pub fn accepts_standby(&self) -> bool {
        self.inner.standby
    }

    fn with_mode(
        component: &'static str,
        settings: PgSettings,
        standby: bool,
    ) -> Result<Self, ConfigError> {
        let last_connect = Arc::new(Mutex::new(None));
        let last_host = Arc::new(Mutex::new(None));
        let epoch = Arc::new(AtomicU64::new(0));
        let generation = build(
            component,
            0,
            settings,
            &last_connect,
            &last_host,
            &epoch,
            standby,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                component,
                epoch,
                current: ArcSwap::from_pointee(generation),
                next_id: AtomicU64::new(1),
                last_connect,
                last_host,
                link: Mutex::new(Link::default()),
                unnamed: std::sync::atomic::AtomicBool::new(false),
                generation: watch::channel(0).0,
                standby,
            }),
        })
    }

    /// The component name.
    pub fn component(&self) -> &'static str {
        self.inner.component
    }

    /// The settings in force.
    pub fn settings(&self) -> PgSettings {
        self.inner.current.load().settings.clone()
    }

    /// The id of the settings in force; changes with every DSN or settings swap.
    pub fn generation(&self) -> u64 {
        self.inner.current.load().id
    }

    /// Notified on every DSN or settings swap (the new generation id).
    pub fn watch_generation(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// The host (`host:port`) the pool last connected to: its current primary.
    pub fn current_host(&self) -> Option<String> {
        lock(&self.inner.last_host).clone()
    }

    /// Why the database cannot be reached **now**: the last attempt (of any operation,
    /// or of the LISTEN connection) failed with a retryable error and none succeeded
    /// since. The text starts with the cause, e.g. "connection refused: …",
    /// "no writable host: …", "every host is in recovery: no primary yet …",
    /// "timed out after 2s". `None` while reachable — also while a statement fails
    /// because another session holds a lock ([`DbErrorKind::Locked`]): the server
    /// answered.
    pub fn unreachable(&self) -> Option<String> {
        lock(&self.inner.link)
            .failing
            .as_ref()
            .map(|(_, t)| t.clone())
    }

    /// Records an attempt that reached a writable server.
    pub(crate) fn reached(&self) {
        let mut link = lock(&self.inner.link);
        if let Some((since, _)) = link.failing.take() {
            tracing::info!(component = self.inner.component, after = ?since.elapsed(), "database reachable again");
        }
        link.warnings.reset();
    }

    /// Records an attempt that could not reach a writable server.
    pub(crate) fn not_reached(&self, text: &str) {
        let cause = cause_of(text);
        let mut link = lock(&self.inner.link);
        let first = link.failing.is_none();
        let since = link
            .failing
            .as_ref()
            .map_or_else(Instant::now, |(at, _)| *at);
        link.failing = Some((since, cause.clone()));
        if first || link.warnings.allow() {
            if first {
                link.warnings.allow();
            }
            tracing::warn!(component = self.inner.component, error = %cause, "database unreachable (logged once per outage, then at most once a minute)");
        }
    }

    /// Points the pool at another DSN (for example the promoted replica) keeping
    /// every other setting. Operations already running finish on the old
    /// connections; every new one uses the new DSN. No restart needed.
    pub fn swap_dsn(&self, dsn: &str) -> Result<(), ConfigError> {
        let settings = self.settings().with_dsn(dsn)?;
        self.swap_settings(settings)
    }

    /// Replaces all settings at run time.
    pub fn swap_settings(&self, settings: PgSettings) -> Result<(), ConfigError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let generation = build(
            self.inner.component,
            id,
            settings,
            &self.inner.last_connect,
            &self.inner.last_host,
            &self.inner.epoch,
            self.inner.standby,
        )?;
        tracing::info!(component = self.inner.component, dsn = %generation.settings, "postgres DSN swapped");
        metrics::counter!("failover_pg_failovers_total", "component" => self.inner.component, "cause" => "dsn_swap").increment(1);
        let old = self.inner.current.swap(Arc::new(generation));
        old.pool.close();
        self.inner.generation.send_replace(id);
        Ok(())
    }

    /// Runs `sql` under the retry policy and returns its rows. Parameters carry their
    /// types ([`Param`]), so the statement can be sent either way the pool runs:
    /// prepared once per connection and cached (the default), or — behind a
    /// transaction pooler such as pgbouncer in transaction mode, where a prepared
    /// statement may live on another server connection — unnamed, parsed and
    /// executed in one round trip ([`PgPool::unnamed_statements`]).
    pub async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        self.statement(op, sql, params, Rows::All)
            .await
            .map(|r| r.rows)
    }

    /// Like [`query`](Self::query), for exactly one row.
    pub async fn query_one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Row, DbError> {
        let rows = self.statement(op, sql, params, Rows::One).await?.rows;
        rows.into_iter().next().ok_or_else(|| {
            DbError::new(
                DbErrorKind::Permanent,
                op,
                None,
                "the statement returned no row".into(),
            )
        })
    }

    /// Like [`query`](Self::query), for at most one row.
    pub async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, DbError> {
        let rows = self.statement(op, sql, params, Rows::AtMostOne).await?.rows;
        Ok(rows.into_iter().next())
    }

    /// Like [`query`](Self::query), returning the number of rows affected.
    pub async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, DbError> {
        self.statement(op, sql, params, Rows::Count)
            .await
            .map(|r| r.count)
    }

    /// True once the pool sends unnamed statements: set by
    /// `…__STATEMENTS=unnamed`, or switched on by itself the first time the server
    /// says a prepared statement does not exist (or already exists) — the sign of a
    /// transaction pooler in between.
    pub fn unnamed_statements(&self) -> bool {
        self.inner.unnamed.load(Ordering::Relaxed)
            || self.inner.current.load().settings.statements() == StatementMode::Unnamed
    }

    /// True when LISTEN goes to a listen DSN apart from the DSN.
    pub fn has_listen_dsn(&self) -> bool {
        self.inner.current.load().listen.is_some()
    }

    /// Sends every later statement unnamed (see [`query`](Self::query)), unless the
    /// settings say `prepared`.
    pub fn use_unnamed_statements(&self) {
        self.switch_to_unnamed();
    }

    /// True when statements are now sent unnamed.
    fn switch_to_unnamed(&self) -> bool {
        if self.inner.current.load().settings.statements() == StatementMode::Prepared {
            return false;
        }
        if !self.inner.unnamed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                component = self.inner.component,
                "prepared statements do not survive between transactions here (a transaction pooler?): sending unnamed statements from now on"
            );
        }
        true
    }

    async fn statement(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
        want: Rows,
    ) -> Result<Output, DbError> {
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let (values, types) = (&values, &types);
        self.attempts(op, |client| {
            Box::pin(async move {
                let result = if self.unnamed_statements() {
                    unnamed(&client, sql, params, want).await
                } else {
                    match prepared(&client, sql, types, values, want).await {
                        // A prepared statement that is missing (or exists already) on
                        // the server connection: a transaction pooler in between.
                        // Switch to unnamed statements and send this one again.
                        Err(e) if is_pooler_error(&e) && self.switch_to_unnamed() => {
                            unnamed(&client, sql, params, want).await
                        }
                        other => other,
                    }
                };
                (client, result)
            })
        })
        .await
    }

    /// The retry loop every operation shares: each attempt checks a client out, runs
    /// `f` on it (which hands the client back), records whether the database was
    /// reached, and discards the client when the attempt failed.
    async fn attempts<'a, T, F>(&'a self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: Fn(Object) -> BoxFuture<'a, (Object, Result<T, tokio_postgres::Error>)> + Send + Sync,
    {
        let component = self.inner.component;
        let span = tracing::debug_span!("pg", component, op);
        let started = Instant::now();
        let policy = self.inner.current.load().settings.retry.clone();
        // Inside the attempt, after a lock wait of at most three quarters of the
        // operation timeout: the look-up must not make the attempt time out.
        let lookup_bound = policy.attempt_timeout.mul_f64(0.2).min(LOCK_LOOKUP_BOUND);
        // How far the attempts got: a statement sent whose answer was lost (the
        // connection dropped, the attempt timed out) leaves a write's outcome unknown;
        // one the server refused or cancelled did not take effect.
        let uncertain = AtomicBool::new(false);
        let refused = AtomicBool::new(false);
        // Who held the lock a cancelled statement waited for, asked on its own
        // connection (idle again after the cancel) before that one is discarded.
        let holders: Mutex<Option<Result<Vec<Blocker>, String>>> = Mutex::new(None);
        let result = policy
            .run(|attempt| {
                let (f, uncertain, refused, holders) = (&f, &uncertain, &refused, &holders);
                async move {
                    metrics::counter!("failover_pg_attempts_total", "component" => component, "op" => op).increment(1);
                    if attempt > 1 {
                        metrics::counter!("failover_pg_retries_total", "component" => component, "op" => op).increment(1);
                    }
                    let object = match self.checkout().await {
                        Ok(object) => object,
                        Err(failure) => {
                            if self.is_connect_failure(&failure) {
                                self.not_reached(&failure.to_string());
                            }
                            return Err(failure);
                        }
                    };
                    let mut guard = ClientGuard(None, self.inner.epoch.clone());
                    // Dropped armed (the attempt timed out mid-statement), it marks
                    // the outcome unknown.
                    let mut sent = InFlight(Some(uncertain));
                    let (object, result) = f(object).await;
                    guard.0 = Some(object);
                    match result {
                        Ok(v) => {
                            sent.0 = None;
                            self.reached();
                            guard.keep();
                            Ok(v)
                        }
                        // The guard discards the connection: it may sit in an
                        // aborted transaction or point at a dead server.
                        Err(e) => {
                            let failure = PgFailure::Query(e);
                            if failure.refused_by_server() {
                                sent.0 = None;
                                refused.store(true, Ordering::Relaxed);
                            }
                            if let (PgFailure::Query(q), Some(client)) = (&failure, &guard.0) {
                                if q.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) {
                                    let found = super::diagnose::blockers_on(
                                        client,
                                        &lock_site(q),
                                        lookup_bound,
                                    )
                                    .await;
                                    *lock(holders) = Some(found);
                                }
                            }
                            if failure.class() == ErrorClass::Retryable {
                                self.not_reached(&failure.to_string());
                            } else {
                                // The server answered: it is reachable.
                                self.reached();
                            }
                            Err(failure)
                        }
                    }
                }
            })
            .instrument(span)
            .await;
        let e = match result {
            Ok(value) => {
                metrics::histogram!("failover_pg_operation_seconds", "component" => component, "op" => op)
                    .record(started.elapsed().as_secs_f64());
                return Ok(value);
            }
            Err(e) => e,
        };
        if let crate::retry::AttemptError::TimedOut(bound) = &e.last {
            metrics::counter!("failover_pg_timeouts_total", "component" => component, "op" => op)
                .increment(1);
            self.not_reached(&format!(
                "timed out after {}",
                humantime::format_duration(*bound)
            ));
        }
        let class = e.last_class();
        metrics::counter!("failover_pg_errors_total", "component" => component, "op" => op, "class" => class).increment(1);
        let locked = match &e.last {
            crate::retry::AttemptError::Failed(PgFailure::Query(q))
                if q.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) =>
            {
                Some(lock_site(q))
            }
            _ => None,
        };
        let reach = if uncertain.load(Ordering::Relaxed) {
            Reach::Unknown
        } else if refused.load(Ordering::Relaxed) {
            Reach::Refused
        } else {
            Reach::NotConnected
        };
        let hint = self.last_connect_error();
        let mut err = from_retry(op, e, hint, reach);
        if let Some(site) = locked {
            metrics::counter!("failover_pg_lock_timeouts_total", "component" => component, "op" => op).increment(1);
            let asked = lock(&holders).take();
            err = self.name_blockers(err, site, asked).await;
        }
        metrics::histogram!("failover_pg_operation_seconds", "component" => component, "op" => op)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(component, op, error = %err, "postgres operation failed");
        Err(err)
    }

    /// Adds who holds the lock a cancelled statement waited for, looked up on one
    /// bounded attempt so that the error still comes back promptly.
    /// `asked`: the answer got on the failed statement's own connection, if any; when
    /// that did not work, another connection is asked.
    async fn name_blockers(
        &self,
        err: DbError,
        site: LockSite,
        asked: Option<Result<Vec<Blocker>, String>>,
    ) -> DbError {
        let bound = self
            .inner
            .current
            .load()
            .settings
            .operation_timeout
            .min(LOCK_LOOKUP_BOUND);
        let found = match asked {
            Some(Ok(blockers)) => Ok(blockers),
            _ => super::diagnose::lookup_blockers(self, &site, bound).await,
        };
        let relation = site.relation;
        match found {
            Ok(blockers) => {
                let text = describe_blockers(relation.as_deref(), &blockers);
                tracing::warn!(component = self.inner.component, op = err.op(), "{text}");
                err.with_blockers(blockers, text)
            }
            Err(why) => {
                let text = format!(
                    "{} is locked by another session, which could not be named ({why}); look for it in pg_locks joined with pg_stat_activity",
                    relation.as_deref().unwrap_or("the row or table")
                );
                err.with_blockers(Vec::new(), text)
            }
        }
    }

    /// Runs `f` with a pooled client under the retry policy: every attempt bounded by
    /// the operation timeout, the whole call by the retry budget. `f` may run more
    /// than once, so the statement it sends must be idempotent.
    ///
    /// ```no_run
    /// # async fn demo(pool: tradepulse_failover_core::postgres::PgPool) -> Result<(), tradepulse_failover_core::postgres::DbError> {
    /// let n: i64 = pool
    ///     .run("demo.count", |c| Box::pin(async move {
    ///         let row = c.query_one("SELECT count(*) FROM kill_switch_events", &[]).await?;
    ///         Ok(row.get(0))
    ///     }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: for<'c> Fn(&'c PgClient) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send
            + Sync,
    {
        self.attempts(op, |client| {
            let f = &f;
            Box::pin(async move {
                let result = f(&client).await;
                (client, result)
            })
        })
        .await
    }

    /// Runs `f` inside `BEGIN … COMMIT` on a pooled connection under the retry
    /// policy, for writes that need the caller's own transaction (a fenced write: check
    /// the token, then write, atomically). Each attempt is bounded by the operation
    /// timeout and the whole call by the retry budget; a failed attempt rolls back and
    /// its connection is discarded, so `f` may run again in a fresh transaction.
    ///
    /// `f`'s error type decides what is retried through [`Classify`]: a refusal (a
    /// stale fencing token, say) is permanent and returned at once.
    ///
    /// A statement cancelled by `lock_timeout` reaches `f` as a tokio-postgres error
    /// with SQLSTATE 55P03; [`db_error`](super::db_error) turns it into
    /// [`DbErrorKind::Locked`], which `E` may retry (a [`DbError`] says retryable) or
    /// not. The holders are not looked up here: ask [`blockers_of`](Self::blockers_of).
    pub async fn transaction<T, E, F>(&self, op: &'static str, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<DbError> + Classify + std::fmt::Display + Send,
        F: for<'a, 'b> Fn(&'a deadpool_postgres::Transaction<'b>) -> BoxFuture<'a, Result<T, E>>
            + Send
            + Sync,
    {
        let component = self.inner.component;
        let policy = self.inner.current.load().settings.retry.clone();
        let failed = |e: tokio_postgres::Error| E::from(super::error::db_error(op, &e));
        let result = policy
            .run(|_| {
                let (f, failed) = (&f, &failed);
                async move {
                    metrics::counter!("failover_pg_attempts_total", "component" => component, "op" => op).increment(1);
                    let object = self.checkout().await.map_err(|f| {
                        if self.is_connect_failure(&f) {
                            self.not_reached(&f.to_string());
                        }
                        E::from(checkout_error(op, &f))
                    })?;
                    let mut guard = ClientGuard(Some(object), self.inner.epoch.clone());
                    let client = guard.0.as_mut().expect("guard holds the client until done");
                    let tx = client.transaction().await.map_err(failed)?;
                    let value = f(&tx).await?;
                    tx.commit().await.map_err(failed)?;
                    self.reached();
                    guard.keep();
                    Ok(value)
                }
            })
            .await;
        result.map_err(|e| match e.last {
            crate::retry::AttemptError::Failed(e) => e,
            crate::retry::AttemptError::TimedOut(bound) => E::from(DbError::new(
                DbErrorKind::Unavailable,
                op,
                None,
                format!(
                    "transaction timed out after {} ({} attempt(s)){}",
                    humantime::format_duration(bound),
                    e.attempts,
                    self.last_connect_error()
                        .map(|h| format!("; last connect: {h}"))
                        .unwrap_or_default()
                ),
            )),
        })
    }

    /// A client from the pool. Bounded by the pool's wait/create/recycle timeouts; not
    /// retried, and a connection whose backend was just terminated may still be handed
    /// out: for a transaction of your own prefer [`transaction`](Self::transaction),
    /// which retries it.
    pub async fn get(&self) -> Result<PgClient, DbError> {
        self.checkout()
            .await
            .map_err(|f| checkout_error("pool.get", &f))
    }

    /// A checkout failure that says the database cannot be reached (a failed connect),
    /// as opposed to a busy pool or a pool replaced by a DSN swap.
    fn is_connect_failure(&self, failure: &PgFailure) -> bool {
        match failure {
            PgFailure::Query(e) => super::error::classify(e) == ErrorClass::Retryable,
            PgFailure::Pool(text, ErrorClass::Retryable) => {
                text.starts_with("no writable host") || self.last_connect_error().is_some()
            }
            PgFailure::Pool(_, ErrorClass::Permanent) => false,
            PgFailure::Connect(..) | PgFailure::NoPrimary(_) => true,
        }
    }

    /// A retryable failure may mean a failover: verify every pooled connection
    /// before its next use.
    fn suspect_failover(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) async fn checkout(&self) -> Result<Object, PgFailure> {
        let generation = self.inner.current.load_full();
        let result = generation.pool.get().await;
        if result.is_err() {
            self.suspect_failover();
        }
        result.map_err(|e| match e {
            PoolError::Backend(e) => match self.last_connect_error() {
                // A connect failure: name every host's reason, not only the last one.
                Some(hosts) if hosts.starts_with(NO_PRIMARY) => PgFailure::NoPrimary(hosts),
                Some(hosts) if super::error::classify(&e) == ErrorClass::Retryable => {
                    let what = if self.inner.standby {
                        "no host answered"
                    } else {
                        "no writable host"
                    };
                    PgFailure::Connect(
                        format!("{what}: {hosts}"),
                        e.code().map(|c| c.code().to_owned()),
                    )
                }
                _ => PgFailure::Query(e),
            },
            PoolError::Timeout(t) => PgFailure::Pool(
                format!(
                    "timed out waiting for a connection ({t:?}){}",
                    self.last_connect_error()
                        .map(|h| format!("; last connect: {h}"))
                        .unwrap_or_default()
                ),
                ErrorClass::Retryable,
            ),
            PoolError::Closed => PgFailure::Pool(
                "pool closed (DSN swapped); retrying on the new pool".into(),
                ErrorClass::Retryable,
            ),
            other => PgFailure::Pool(other.to_string(), ErrorClass::Retryable),
        })
    }

    /// A dedicated connection outside the pool (for LISTEN), to the first writable
    /// host, bounded by the connect timeout per host, with the host (`host:port`) it
    /// reached. The returned stream carries the connection's asynchronous messages
    /// (notifications).
    pub async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, DedicatedConnection, String), DbError> {
        let generation = self.inner.current.load_full();
        let connect = generation.listen.as_ref().unwrap_or(&generation.connect);
        match connect.connect_raw().await {
            Ok(connected) => {
                self.reached();
                Ok(connected)
            }
            Err(e) => {
                let no_primary = e.starts_with(NO_PRIMARY);
                let text = if no_primary {
                    e
                } else {
                    format!("no writable host: {e}")
                };
                self.not_reached(&text);
                let err = DbError::new(
                    DbErrorKind::Unavailable,
                    "pool.connect_dedicated",
                    None,
                    text,
                )
                .with_reach(Reach::NotConnected);
                Err(if no_primary {
                    err.with_no_primary()
                } else {
                    err
                })
            }
        }
    }

    /// The last connection failure seen, e.g. `127.0.0.1:5432: Connection refused`.
    pub fn last_connect_error(&self) -> Option<String> {
        lock(&self.inner.last_connect).clone()
    }

    /// Pool statistics: (size, available, waiting).
    pub fn status(&self) -> (usize, usize, usize) {
        let s = self.inner.current.load().pool.status();
        (s.size, s.available, s.waiting)
    }
}

trait LastClass {
    fn last_class(&self) -> &'static str;
}

impl LastClass for crate::retry::RetryError<PgFailure> {
    fn last_class(&self) -> &'static str {
        match &self.last {
            crate::retry::AttemptError::TimedOut(_) => "timeout",
            crate::retry::AttemptError::Failed(f) => match f.class() {
                ErrorClass::Retryable => "retryable",
                ErrorClass::Permanent => "permanent",
            },
        }
    }
}

/// Discards the connection unless the operation finished cleanly: a timed-out or
/// failed connection may have a request in flight or point at a dead server. Its
/// failure may be a failover, so every other pooled connection is verified again.
struct ClientGuard(Option<Object>, Arc<AtomicU64>);

impl ClientGuard {
    fn keep(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
            self.1.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Marks the operation's outcome unknown when dropped still armed: the statement
/// was sent and no answer came back (the attempt timed out or the connection died).
struct InFlight<'a>(Option<&'a AtomicBool>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Bound of the look-up of who holds a lock after a lock timeout.
const LOCK_LOOKUP_BOUND: Duration = Duration::from_millis(400);

/// A failed checkout as a [`DbError`]: no connection, so nothing was sent.
fn checkout_error(op: &'static str, f: &PgFailure) -> DbError {
    let kind = match f.class() {
        ErrorClass::Retryable => DbErrorKind::Unavailable,
        ErrorClass::Permanent => DbErrorKind::Permanent,
    };
    let err = DbError::new(kind, op, f.sqlstate().map(str::to_owned), f.to_string())
        .with_reach(Reach::NotConnected);
    match f {
        PgFailure::NoPrimary(_) => err.with_no_primary(),
        _ => err,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn build(
    component: &'static str,
    id: u64,
    mut settings: PgSettings,
    last_connect: &Arc<Mutex<Option<String>>>,
    last_host: &Arc<Mutex<Option<String>>>,
    epoch: &Arc<AtomicU64>,
    standby: bool,
) -> Result<Generation, ConfigError> {
    if settings.config.get_application_name().is_none() {
        settings.config.application_name(component);
    }
    let tls = connector(&settings.names, &settings.tls)?;
    let mut hosts = settings.per_host_configs();
    if standby {
        for (_, config) in &mut hosts {
            config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        }
    }
    let n_hosts = hosts.len().max(1) as u32;
    let connect = Arc::new(FailoverConnect {
        component,
        hosts,
        tls,
        timeout: settings.connect_timeout,
        last_connect: last_connect.clone(),
        last_host: last_host.clone(),
    });
    let session = format!(
        "SET lock_timeout = '{}ms'",
        settings.effective_lock_timeout().as_millis()
    );
    let manager = Manager::from_connect(
        settings.config.clone(),
        SharedConnect(connect.clone(), Some(session)),
        ManagerConfig {
            // A standby is what a reading pool may use; a writing pool drops it.
            recycling_method: if standby {
                RecyclingMethod::Verified
            } else {
                RecyclingMethod::Custom(RECYCLE_CHECK.into())
            },
        },
    );
    let listen = settings.listen.is_some().then(|| {
        Arc::new(FailoverConnect {
            component,
            hosts: settings.listen_per_host_configs(),
            tls: connect.tls.clone(),
            timeout: settings.connect_timeout,
            last_connect: Arc::new(Mutex::new(None)),
            last_host: Arc::new(Mutex::new(None)),
        })
    });
    let timeouts = Timeouts {
        wait: Some(settings.operation_timeout),
        create: Some(settings.connect_timeout * n_hosts + Duration::from_millis(100)),
        recycle: Some(settings.operation_timeout.min(Duration::from_secs(1))),
    };
    let manager = VerifyingManager {
        inner: manager,
        epoch: epoch.clone(),
    };
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| ConfigError::Invalid {
            var: settings.names.name("POOL_SIZE"),
            reason: e.to_string(),
        })?;
    Ok(Generation {
        id,
        pool,
        settings,
        connect,
        listen,
    })
}
