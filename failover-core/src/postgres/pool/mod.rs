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
//!
//! [`DbErrorKind::Locked`]: super::DbErrorKind::Locked
//! [`DbError::blockers`]: super::DbError::blockers
//! [`DbErrorKind::Unavailable`]: super::DbErrorKind::Unavailable
//! [`DbError::no_primary`]: super::DbError::no_primary
//! [`DbError::reach`]: super::DbError::reach

mod attempts;
mod checkout;
mod dedicated;
mod reachability;
mod statements;

use super::connect::{FailoverConnect, SharedConnect};
use super::manager::{Pool, VerifyingManager, RECYCLE_CHECK};
use super::settings::PgSettings;
use super::tls::connector;
use crate::errors::ConfigError;
use crate::handle::lock;
use arc_swap::ArcSwap;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use reachability::Link;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub use super::manager::PgClient;
#[cfg(test)]
pub(crate) use reachability::cause_of;
pub use statements::Param;

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
    /// True when LISTEN goes to a listen DSN apart from the DSN.
    pub fn has_listen_dsn(&self) -> bool {
        self.inner.current.load().listen.is_some()
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
