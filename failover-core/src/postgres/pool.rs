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
//! * [`PgPool::swap_dsn`] points the pool at a new primary without a restart.
//!
//! Metrics (through the `metrics` facade, label `component`):
//! `failover_pg_attempts_total`, `failover_pg_retries_total`,
//! `failover_pg_timeouts_total`, `failover_pg_errors_total{class}`,
//! `failover_pg_failovers_total`, `failover_pg_connects_total{host,outcome}`,
//! histogram `failover_pg_operation_seconds{op}`.

use super::error::{describe, from_retry, PgFailure};
use super::settings::PgSettings;
use super::tls::{connector, Connector};
use crate::errors::ConfigError;
use crate::errors::{DbError, DbErrorKind};
use crate::retry::{Classify, ErrorClass};
use arc_swap::ArcSwap;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{
    ClientWrapper, Connect, Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// Fails the recycle check on a standby or a read-only primary, so the connection is
/// replaced by one to the writable server.
const RECYCLE_CHECK: &str = "DO $$ BEGIN \
    IF pg_is_in_recovery() THEN RAISE EXCEPTION 'server is a standby' USING ERRCODE = '25006'; END IF; \
    IF current_setting('transaction_read_only') = 'on' THEN RAISE EXCEPTION 'server is read-only' USING ERRCODE = '25006'; END IF; \
    END $$";

/// How long a verified connection is trusted before it is verified again.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

type Pool = managed::Pool<VerifyingManager>;
type Object = managed::Object<VerifyingManager>;

/// A client checked out of the pool (derefs to `tokio_postgres::Client`, with a
/// prepared-statement cache through `prepare_cached`).
pub type PgClient = Object;

/// A pooled connection and when it was last proven to reach a writable primary.
#[derive(Debug)]
pub struct VerifiedClient {
    client: ClientWrapper,
    verified_at: Instant,
    epoch: u64,
}

impl std::ops::Deref for VerifiedClient {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl std::ops::DerefMut for VerifiedClient {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

/// deadpool-postgres's manager (connect, statement caches) plus a verification that
/// runs only when due: older than [`VERIFY_EVERY`], or a failure was seen since.
pub struct VerifyingManager {
    inner: Manager,
    epoch: Arc<AtomicU64>,
}

impl managed::Manager for VerifyingManager {
    type Type = VerifiedClient;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<VerifiedClient, tokio_postgres::Error> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let client = managed::Manager::create(&self.inner).await?;
        // A fresh connection went through target_session_attrs=read-write.
        Ok(VerifiedClient {
            client,
            verified_at: Instant::now(),
            epoch,
        })
    }

    async fn recycle(
        &self,
        obj: &mut VerifiedClient,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if obj.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        if obj.epoch == epoch && obj.verified_at.elapsed() < VERIFY_EVERY {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut obj.client, metrics).await?;
        obj.verified_at = Instant::now();
        obj.epoch = epoch;
        Ok(())
    }

    fn detach(&self, obj: &mut VerifiedClient) {
        managed::Manager::detach(&self.inner, &mut obj.client);
    }
}

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
}

struct Generation {
    id: u64,
    pool: Pool,
    settings: PgSettings,
    connect: Arc<FailoverConnect>,
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

impl PgPool {
    /// A pool for `component` (used in metrics and as default `application_name`).
    /// Does not connect: the first operation does.
    pub fn new(component: &'static str, settings: PgSettings) -> Result<Self, ConfigError> {
        let last_connect = Arc::new(Mutex::new(None));
        let last_host = Arc::new(Mutex::new(None));
        let epoch = Arc::new(AtomicU64::new(0));
        let generation = build(component, 0, settings, &last_connect, &last_host, &epoch)?;
        Ok(Self {
            inner: Arc::new(Inner {
                component,
                epoch,
                current: ArcSwap::from_pointee(generation),
                next_id: AtomicU64::new(1),
                last_connect,
                last_host,
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
        )?;
        tracing::info!(component = self.inner.component, dsn = %generation.settings, "postgres DSN swapped");
        metrics::counter!("failover_pg_failovers_total", "component" => self.inner.component, "cause" => "dsn_swap").increment(1);
        let old = self.inner.current.swap(Arc::new(generation));
        old.pool.close();
        Ok(())
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
        let component = self.inner.component;
        let span = tracing::debug_span!("pg", component, op);
        let started = Instant::now();
        let policy = self.inner.current.load().settings.retry.clone();
        let result = policy
            .run(|attempt| {
                let f = &f;
                async move {
                    metrics::counter!("failover_pg_attempts_total", "component" => component, "op" => op).increment(1);
                    if attempt > 1 {
                        metrics::counter!("failover_pg_retries_total", "component" => component, "op" => op).increment(1);
                    }
                    let mut guard = ClientGuard(Some(self.checkout().await?), self.inner.epoch.clone());
                    let client = guard.0.as_ref().expect("guard holds the client until done");
                    match f(client).await {
                        Ok(v) => {
                            guard.keep();
                            Ok(v)
                        }
                        // The guard discards the connection: it may sit in an
                        // aborted transaction or point at a dead server.
                        Err(e) => Err(PgFailure::Query(e)),
                    }
                }
            })
            .instrument(span)
            .await;
        metrics::histogram!("failover_pg_operation_seconds", "component" => component, "op" => op)
            .record(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            if matches!(e.last, crate::retry::AttemptError::TimedOut(_)) {
                metrics::counter!("failover_pg_timeouts_total", "component" => component, "op" => op).increment(1);
            }
            let class = e.last_class();
            metrics::counter!("failover_pg_errors_total", "component" => component, "op" => op, "class" => class).increment(1);
            let hint = self.last_connect_error();
            let err = from_retry(op, e, hint);
            tracing::warn!(component, op, error = %err, "postgres operation failed");
            err
        })
    }

    /// Runs `f` inside `BEGIN … COMMIT` on a pooled connection under the retry
    /// policy, for writes that need the caller's own transaction (a fenced write: check
    /// the token, then write, atomically). Each attempt is bounded by the operation
    /// timeout and the whole call by the retry budget; a failed attempt rolls back and
    /// its connection is discarded, so `f` may run again in a fresh transaction.
    ///
    /// `f`'s error type decides what is retried through [`Classify`]: a refusal (a
    /// stale fencing token, say) is permanent and returned at once.
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
                        let kind = match f.class() {
                            ErrorClass::Retryable => DbErrorKind::Unavailable,
                            ErrorClass::Permanent => DbErrorKind::Permanent,
                        };
                        E::from(DbError::new(kind, op, None, f.to_string()))
                    })?;
                    let mut guard = ClientGuard(Some(object), self.inner.epoch.clone());
                    let client = guard.0.as_mut().expect("guard holds the client until done");
                    let tx = client.transaction().await.map_err(failed)?;
                    let value = f(&tx).await?;
                    tx.commit().await.map_err(failed)?;
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
                    "transaction got no answer within {bound:?} after {} attempt(s){}",
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
        self.checkout().await.map_err(|f| {
            let kind = match f.class() {
                ErrorClass::Retryable => DbErrorKind::Unavailable,
                ErrorClass::Permanent => DbErrorKind::Permanent,
            };
            DbError::new(kind, "pool.get", None, f.to_string())
        })
    }

    /// A retryable failure may mean a failover: verify every pooled connection
    /// before its next use.
    fn suspect_failover(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    async fn checkout(&self) -> Result<Object, PgFailure> {
        let generation = self.inner.current.load_full();
        let result = generation.pool.get().await;
        if result.is_err() {
            self.suspect_failover();
        }
        result.map_err(|e| match e {
            PoolError::Backend(e) => match self.last_connect_error() {
                // A connect failure: name every host's reason, not only the last one.
                Some(hosts) if super::error::classify(&e) == ErrorClass::Retryable => {
                    PgFailure::Pool(format!("no writable host: {hosts}"), ErrorClass::Retryable)
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
    /// host, bounded by the connect timeout per host. The connection task forwards
    /// asynchronous messages (notifications) to `on_message`.
    pub async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, DedicatedConnection), DbError> {
        let generation = self.inner.current.load_full();
        generation
            .connect
            .connect_raw()
            .await
            .map_err(|e| DbError::new(DbErrorKind::Unavailable, "pool.connect_dedicated", None, e))
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
) -> Result<Generation, ConfigError> {
    if settings.config.get_application_name().is_none() {
        settings.config.application_name(component);
    }
    let tls = connector(&settings.names, &settings.tls)?;
    let hosts = settings.per_host_configs();
    let n_hosts = hosts.len().max(1) as u32;
    let connect = Arc::new(FailoverConnect {
        component,
        hosts,
        tls,
        timeout: settings.connect_timeout,
        last_connect: last_connect.clone(),
        last_host: last_host.clone(),
    });
    let manager = Manager::from_connect(
        settings.config.clone(),
        SharedConnect(connect.clone()),
        ManagerConfig {
            recycling_method: RecyclingMethod::Custom(RECYCLE_CHECK.into()),
        },
    );
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
    })
}

/// The connection task of a dedicated connection; forwards asynchronous messages.
pub type DedicatedConnection = futures_util::stream::BoxStream<
    'static,
    Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
>;

struct FailoverConnect {
    component: &'static str,
    hosts: Vec<(String, tokio_postgres::Config)>,
    tls: Connector,
    timeout: Duration,
    last_connect: Arc<Mutex<Option<String>>>,
    last_host: Arc<Mutex<Option<String>>>,
}

struct SharedConnect(Arc<FailoverConnect>);

enum AnyConnection {
    Plain(
        Box<tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>>,
    ),
    Tls(
        Box<
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        >,
    ),
}

impl AnyConnection {
    fn into_stream(self) -> DedicatedConnection {
        use futures_util::StreamExt;
        match self {
            Self::Plain(mut c) => {
                futures_util::stream::poll_fn(move |cx| c.poll_message(cx)).boxed()
            }
            Self::Tls(mut c) => futures_util::stream::poll_fn(move |cx| c.poll_message(cx)).boxed(),
        }
    }
}

impl FailoverConnect {
    /// Tries each host in order, each bounded by the connect timeout. Returns the
    /// first connection a writable server accepted, or the last error as text.
    async fn connect_any(
        &self,
    ) -> Result<(tokio_postgres::Client, AnyConnection), (Option<tokio_postgres::Error>, String)>
    {
        let mut last_error = None;
        let mut failures: Vec<String> = Vec::new();
        let mut last_text = String::from("no host configured");
        for (label, config) in &self.hosts {
            let attempt = async {
                match &self.tls {
                    Connector::Plain => config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map(|(c, conn)| (c, AnyConnection::Plain(Box::new(conn)))),
                    Connector::Tls(tls) => config
                        .connect(tls.clone())
                        .await
                        .map(|(c, conn)| (c, AnyConnection::Tls(Box::new(conn)))),
                }
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(pair)) => {
                    metrics::counter!("failover_pg_connects_total", "component" => self.component, "outcome" => "ok").increment(1);
                    let mut last_host = lock(&self.last_host);
                    if last_host.as_deref().is_some_and(|h| h != label) {
                        tracing::warn!(component = self.component, from = ?*last_host, to = %label, "connected to a different primary");
                        metrics::counter!("failover_pg_failovers_total", "component" => self.component, "cause" => "host_change").increment(1);
                    }
                    *last_host = Some(label.clone());
                    *lock(&self.last_connect) = None;
                    return Ok(pair);
                }
                Ok(Err(e)) => {
                    failures.push(format!("{label}: {}", describe(&e)));
                    last_error = Some(e);
                }
                Err(_) => {
                    failures.push(format!(
                        "{label}: no answer within {:?} (server hung?)",
                        self.timeout
                    ));
                }
            }
            // Every host's reason: the first host's "connection refused" matters as
            // much as the standby's "does not allow writes".
            last_text = failures.join("; ");
            metrics::counter!("failover_pg_connects_total", "component" => self.component, "outcome" => "error").increment(1);
            tracing::debug!(component = self.component, error = %last_text, "connect failed");
            *lock(&self.last_connect) = Some(last_text.clone());
        }
        Err((last_error, last_text))
    }

    async fn connect_raw(&self) -> Result<(tokio_postgres::Client, DedicatedConnection), String> {
        match self.connect_any().await {
            Ok((client, conn)) => Ok((client, conn.into_stream())),
            Err((_, text)) => Err(text),
        }
    }
}

impl Connect for SharedConnect {
    fn connect(
        &self,
        _pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        Box::pin(async move {
            match self.0.connect_any().await {
                Ok((client, conn)) => {
                    let component = self.0.component;
                    let task = tokio::spawn(async move {
                        let result = match conn {
                            AnyConnection::Plain(c) => (*c).await,
                            AnyConnection::Tls(c) => (*c).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!(component, error = %e, "postgres connection ended");
                        }
                    });
                    Ok((client, task))
                }
                Err((Some(e), _)) => Err(e),
                // Every host hung: there is no tokio-postgres error to return, so wait
                // for the pool's create timeout, which reports a timeout (retryable).
                Err((None, _)) => std::future::pending().await,
            }
        })
    }
}
