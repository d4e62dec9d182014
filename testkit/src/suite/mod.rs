//! One PostgreSQL store suite, run by every PostgreSQL store of the family against
//! real servers: the guarantees that failover-core gives every store, tested once and
//! the same way for each — so that no store's copy can drift.
//!
//! A store's tests implement [`SuiteStore`] (and [`SuiteHandleStore`] when the store
//! has a hot-path handle) and expand the macros:
//!
//! ```text
//! tradepulse_testkit::pg_store_suite!(KillSwitchSuite);
//! tradepulse_testkit::pg_handle_suite!(KillSwitchSuite);
//! ```
//!
//! Each macro expands to named `#[tokio::test]`s:
//!
//! * [`pg_store_suite!`](crate::pg_store_suite): env settings with a hidden password,
//!   concurrent migrations, an unmigrated database, the append-only audit trail, an
//!   outage that fails fast and recovers on the same store object.
//! * [`pg_handle_suite!`](crate::pg_handle_suite): push to a handle in another pool
//!   (polling at 1 h), health on the **default** settings (`failed` with "connection
//!   refused" within 1 s of killing the primary while the hot path serves the last
//!   state, then `operational` again), a lossy asynchronous failover in both
//!   directions (a lost relaxation returns the running handle to the stricter state;
//!   a tightening on the new timeline reaches it by push although its position's
//!   counter is below the lost ones), and a planned switchover as an operator runs it
//!   (make the primary read-only, then promote the replica; push follows the new
//!   primary; health is not `operational` in between).

use super::{fast_settings, own_primary, wait_until, Cluster};
use failover_core::health::{ComponentHealth, ComponentStatus};
use failover_core::position::Position;
use failover_core::postgres::{PgSettings, PgStore};
use failover_core::watcher::WatchConfig;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A PostgreSQL store as the suite drives it.
#[async_trait::async_trait]
pub trait SuiteStore: Send + Sync + 'static {
    /// The store.
    type Store: PgStore<Error = Self::Error> + Debug + Send + Sync + 'static;
    /// Its error type.
    type Error: std::fmt::Display + Debug + Send;
    /// Its append-only audit table.
    const AUDIT_TABLE: &'static str;

    /// A change that tightens safety (engage, a stricter mode, a lease grant); `n`
    /// makes each call's text unique. Returns the change's position.
    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Self::Error>;
    /// A change that relaxes safety (with a ticket). Returns the change's position.
    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Self::Error>;
    /// True when the error says the schema is missing and names the migrations.
    fn is_schema_missing(error: &Self::Error) -> bool;
    /// True when the error is the typed "unavailable" one.
    fn is_unavailable(error: &Self::Error) -> bool;
}

/// A running hot-path handle, as the suite observes it.
pub trait SuiteHandle: Send + Sync {
    /// True when the hot path says "halted" (or stricter than normal).
    fn halted(&self) -> bool;
    /// The handle's health component.
    fn health(&self) -> ComponentHealth;
    /// The position the handle holds.
    fn position(&self) -> Option<Position>;
}

/// A store with a hot-path handle.
pub trait SuiteHandleStore: SuiteStore {
    /// Starts a handle over `store` (its own pool) with `config`.
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle>;
}

const WAIT: Duration = Duration::from_secs(15);

async fn store_on<S: SuiteStore>(dsn: &str) -> S::Store {
    let store = S::Store::new(fast_settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// How the stores under test reach the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through pgbouncer in transaction mode, with push's LISTEN going to the server
    /// directly (`LISTEN_DSN`), as a fleet behind a transaction pooler is configured.
    TransactionPooler,
}

/// A fresh database and how the stores reach it.
struct Db {
    cluster: Arc<Cluster>,
    name: String,
    bouncer: Option<super::PgBouncer>,
}

impl Db {
    /// On the binary's shared cluster (`shared`) or one of its own (faults).
    async fn new(route: Route, shared: bool) -> Self {
        let (cluster, name) = if shared {
            super::shared_primary().await.expect("cluster")
        } else {
            let (cluster, name) = own_primary().await.expect("cluster");
            (Arc::new(cluster), name)
        };
        let bouncer = match route {
            Route::Direct => None,
            Route::TransactionPooler => Some(
                cluster
                    .pgbouncer(super::PoolMode::Transaction)
                    .await
                    .expect("pgbouncer"),
            ),
        };
        Self {
            cluster,
            name,
            bouncer,
        }
    }

    /// The server's own DSN (for checks beside the store).
    fn direct(&self) -> String {
        self.cluster.primary().dsn(&self.name)
    }

    /// Fast settings along the route.
    fn settings(&self) -> failover_core::postgres::PgSettingsBuilder {
        match &self.bouncer {
            None => fast_settings(&self.direct()),
            Some(bouncer) => fast_settings(&bouncer.dsn(&self.name)).with_listen_dsn(self.direct()),
        }
    }

    /// A store along the route, not migrated.
    fn bare<S: SuiteStore>(&self) -> S::Store {
        S::Store::new(self.settings().build().expect("settings")).expect("store")
    }

    /// A migrated store along the route.
    async fn store<S: SuiteStore>(&self) -> S::Store {
        let store = self.bare::<S>();
        store.migrate().await.expect("migrate");
        store
    }
}

fn push_only() -> WatchConfig {
    WatchConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}

/// Settings from the store's env variables: a password never shows in `Debug`, in
/// an error, or in the pool's description; a missing DSN names the variable.
pub async fn env_settings_hide_the_password<S: SuiteStore>() {
    let (_cluster, db) = own_primary().await.expect("cluster");
    let dsn_var = format!("{}_POSTGRES__DSN", S::Store::ENV_PREFIX);
    let dsn =
        format!("host=127.0.0.1 port=1 user=u password=hunter2 dbname={db} connect_timeout=1");
    let store = S::Store::from_lookup(|k| (k == dsn_var).then(|| dsn.clone())).expect("store");
    let shown = format!("{store:?} {}", store.pool().settings());
    assert!(!shown.contains("hunter2"), "password shown: {shown}");
    let err = S::tighten(&store, 1)
        .await
        .expect_err("nothing listens on port 1");
    assert!(S::is_unavailable(&err), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("hunter2"),
        "password in error: {err}"
    );
    let missing = match S::Store::from_lookup(|_| None) {
        Ok(_) => panic!("a store without a DSN was built"),
        Err(e) => e.to_string(),
    };
    assert!(missing.contains(&dsn_var), "names the variable: {missing}");
}

/// Four nodes migrating at once apply each migration exactly once; a rerun is a no-op.
pub async fn concurrent_migrations_apply_once<S: SuiteStore>(route: Route) {
    let db = Db::new(route, true).await;
    let stores: Vec<S::Store> = (0..4).map(|_| db.bare::<S>()).collect();
    let reports = futures_util::future::join_all(stores.iter().map(|s| s.migrate())).await;
    let applied: usize = reports
        .into_iter()
        .map(|r| r.expect("migrate").applied.len())
        .sum();
    assert_eq!(
        applied,
        S::Store::MIGRATIONS.len(),
        "each migration applied once"
    );
    let again = stores[0].migrate().await.expect("rerun");
    assert!(again.applied.is_empty(), "a rerun applies nothing");
    S::tighten(&stores[1], 1)
        .await
        .expect("usable after migrating");
}

/// On a database that was never migrated a call fails at once (no retry loop) with
/// the typed "schema missing" error that says to run the migrations.
pub async fn unmigrated_database_says_run_migrations<S: SuiteStore>(route: Route) {
    let db = Db::new(route, true).await;
    let store = db.bare::<S>();
    let started = Instant::now();
    let err = S::tighten(&store, 1).await.expect_err("no tables");
    assert!(S::is_schema_missing(&err), "{err:?}");
    assert!(err.to_string().contains("migrat"), "says what to do: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not retried: {:?}",
        started.elapsed()
    );
}

/// The audit table refuses UPDATE, DELETE and TRUNCATE, even for its owner.
pub async fn audit_trail_is_append_only<S: SuiteStore>(route: Route) {
    let db = Db::new(route, true).await;
    let store = db.store::<S>().await;
    let (cluster, db) = (&db.cluster, &db.name);
    S::tighten(&store, 1).await.expect("tighten");
    S::relax(&store, 2).await.expect("relax");
    let count = format!("SELECT count(*) FROM {}", S::AUDIT_TABLE);
    let before = cluster.primary().query(db, &count).await.unwrap();
    assert_ne!(
        before[0][0].as_deref(),
        Some("0"),
        "the changes were audited"
    );
    for sql in [
        format!("UPDATE {} SET at = at", S::AUDIT_TABLE),
        format!("DELETE FROM {}", S::AUDIT_TABLE),
        format!("TRUNCATE {}", S::AUDIT_TABLE),
    ] {
        let err = cluster.primary().execute(db, &sql).await;
        assert!(err.is_err(), "{sql} was accepted");
    }
    let after = cluster.primary().query(db, &count).await.unwrap();
    assert_eq!(before, after, "every event kept");
}

/// A stopped server: calls fail with the typed "unavailable" error within the retry
/// budget (never hang); after a restart the same store object works again.
pub async fn outage_fails_fast_and_recovers<S: SuiteStore>(route: Route) {
    let db = Db::new(route, false).await;
    let store = db.store::<S>().await;
    let cluster = &db.cluster;
    S::tighten(&store, 1).await.expect("before");
    cluster.primary().stop_immediate().await.unwrap();
    let budget = store.pool().settings().retry_policy().budget;
    let started = Instant::now();
    let err = S::tighten(&store, 2).await.expect_err("server down");
    assert!(S::is_unavailable(&err), "{err:?}");
    assert!(
        started.elapsed() <= budget + Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(
        store.pool().unreachable().is_some(),
        "the pool knows at once"
    );
    cluster.primary().start().await.unwrap();
    // The same store object works again once the server takes connections — through
    // pgbouncer once it has noticed (it refuses logins for a while after a server
    // failure: ~12 s measured here, whatever `server_login_retry` says).
    let restarted = Instant::now();
    let bound = match route {
        Route::Direct => Duration::from_secs(5),
        Route::TransactionPooler => Duration::from_secs(40),
    };
    let mut n = 3;
    while let Err(e) = S::tighten(&store, n).await {
        assert!(restarted.elapsed() < bound, "same store after restart: {e}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store.pool().unreachable().is_none());
    eprintln!(
        "{route:?}: the same store works again {:?} after the restart",
        restarted.elapsed()
    );
}

/// A change reaches a handle in another pool by push alone (polling at 1 h).
pub async fn push_reaches_another_pool<S: SuiteHandleStore>(route: Route) {
    let db = Db::new(route, true).await;
    let writer = db.store::<S>().await;
    let handle = S::handle(Arc::new(db.store::<S>().await), push_only());
    wait_until("loaded and listening", WAIT, || {
        handle.position().is_some() && handle.health().status == ComponentStatus::Operational
    })
    .await;
    assert!(!handle.halted());
    let position = S::tighten(&writer, 1).await.unwrap();
    let started = Instant::now();
    wait_until("pushed", Duration::from_secs(1), || handle.halted()).await;
    assert_eq!(handle.position(), Some(position));
    eprintln!("push reached the other pool in {:?}", started.elapsed());
}

/// On the **default** settings (a store from a DSN alone, a default handle): kill -9
/// of the primary makes health `failed` with "connection refused" within 1 s while the
/// hot path serves the last state; after a restart health is `operational` again.
pub async fn default_settings_report_a_dead_primary_within_a_second<S: SuiteHandleStore>() {
    let (cluster, db) = own_primary().await.expect("cluster");
    let dsn = cluster.primary().dsn(&db);
    let settings = PgSettings::builder()
        .with_dsn(&dsn)
        .build()
        .expect("a DSN alone");
    let store = S::Store::new(settings).expect("store");
    store.migrate().await.expect("migrate");
    let handle = S::handle(Arc::new(store), WatchConfig::default());
    wait_until("operational", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
    cluster.primary().kill9().await.unwrap();
    let killed = Instant::now();
    wait_until("failed within 1 s", Duration::from_millis(1500), || {
        handle.health().status == ComponentStatus::Failed
    })
    .await;
    let detected = killed.elapsed();
    let health = handle.health();
    let details = health.details.clone().unwrap_or_default();
    assert!(
        details.to_lowercase().contains("connection refused"),
        "{details}"
    );
    assert!(
        !handle.halted(),
        "the last known state serves within the window"
    );
    assert!(detected <= Duration::from_millis(1200), "took {detected:?}");
    eprintln!("default settings: failed after {detected:?}: {details}");
    cluster.primary().start().await.unwrap();
    wait_until("operational again", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
}

struct Lossy<S: SuiteStore> {
    cluster: Cluster,
    writer: S::Store,
    handle: Box<dyn SuiteHandle>,
    /// Whether the handle said "halted" while it held the newest (to be lost) change.
    halted_before: bool,
}

/// Primary + asynchronous replica; `replicated` changes reach the replica, then the
/// replica stops and `unreplicated` changes happen on the primary only (the handle, in
/// its own pool, sees them); kill -9 of the primary, promotion of the replica.
async fn lossy_failover<S: SuiteHandleStore>(
    replicated: &[bool],
    unreplicated: &[bool],
    config: WatchConfig,
) -> (Lossy<S>, String, Vec<Position>) {
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    let dsn = cluster.multi_host_dsn(&db);
    let writer = store_on::<S>(&dsn).await;
    let mut n = 0;
    let mut apply = |tighten: bool| {
        n += 1;
        let store = &writer;
        let n = n;
        async move {
            if tighten {
                S::tighten(store, n).await.unwrap()
            } else {
                S::relax(store, n).await.unwrap()
            }
        }
    };
    for &t in replicated {
        apply(t).await;
    }
    cluster.wait_replica_caught_up(WAIT).await.unwrap();
    cluster.replica().unwrap().stop().await.unwrap();
    let mut lost = Vec::new();
    for &t in unreplicated {
        lost.push(apply(t).await);
    }
    let handle = S::handle(Arc::new(store_on::<S>(&dsn).await), config);
    let newest = *lost.last().expect("something to lose");
    wait_until("the handle holds the newest change", WAIT, || {
        handle.position() == Some(newest)
    })
    .await;
    let halted_before = handle.halted();
    cluster.primary().kill9().await.unwrap();
    let replica = cluster.replica().unwrap();
    replica.start().await.unwrap();
    replica.promote().await.unwrap();
    (
        Lossy {
            cluster,
            writer,
            handle,
            halted_before,
        },
        db,
        lost,
    )
}

/// A lost relaxation: the handle held "relaxed" (lost); the promoted replica holds
/// "tightened". The running handle returns to the stricter state as soon as it reads
/// the new primary — by push/resync alone (polling at 1 h) — and health names the
/// divergence.
pub async fn lossy_failover_lost_relaxation_halts_the_running_handle<S: SuiteHandleStore>() {
    let (lossy, _db, lost) = lossy_failover::<S>(&[true], &[false], push_only()).await;
    assert!(
        !lossy.halted_before,
        "before the failover it held the relaxation"
    );
    let promoted = Instant::now();
    wait_until("halted again after the failover", WAIT, || {
        lossy.handle.halted()
    })
    .await;
    eprintln!(
        "lost relaxation undone {:?} after the promotion",
        promoted.elapsed()
    );
    let health = lossy.handle.health();
    let details = health.details.unwrap_or_default();
    assert!(
        details.contains("diverged") && details.contains(&lost[0].to_string()),
        "health names the divergence: {details}"
    );
    assert!(lossy.handle.position() < Some(lost[0]));
}

/// A tightening on the new timeline reaches a running handle whose held change was
/// lost — by poll within 1 s on the default poll, and by push within 100 ms with
/// polling at 1 h — although the store's version counter restarted below the lost
/// one. Audit identifiers stay unique and history is newest first.
pub async fn lossy_failover_new_tightening_reaches_the_running_handle<S: SuiteHandleStore>() {
    for config in [WatchConfig::default(), push_only()] {
        let pushed = config.poll_interval > Duration::from_secs(60);
        let (lossy, db, lost) = lossy_failover::<S>(&[true, false], &[true, false], config).await;
        assert!(!lossy.handle.halted());
        if pushed {
            // The handle's LISTEN connection follows the new primary.
            wait_until("push back on the new primary", WAIT, || {
                !lossy
                    .handle
                    .health()
                    .details
                    .unwrap_or_default()
                    .contains("push unavailable")
                    && lossy.handle.health().status != ComponentStatus::Failed
            })
            .await;
        }
        let position = S::tighten(&lossy.writer, 100)
            .await
            .expect("tighten on the new primary");
        let written = Instant::now();
        let bound = if pushed {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        wait_until(
            "the handle halts",
            bound + Duration::from_millis(400),
            || lossy.handle.halted(),
        )
        .await;
        let took = written.elapsed();
        assert!(took <= bound, "took {took:?}, bound {bound:?}");
        eprintln!(
            "tightening after a lossy failover reached the handle in {took:?} (push: {pushed})"
        );
        assert!(
            lost.iter().all(|l| position > *l),
            "{position} above every lost position"
        );
        assert!(position.timeline() > lost[0].timeline());
        assert_eq!(lossy.handle.position(), Some(position));
        // Audit: identifiers unique, newest first.
        let replica = lossy.cluster.replica().unwrap();
        let rows = replica
            .query(
                &db,
                &format!(
                    "SELECT position FROM {} ORDER BY position DESC",
                    S::AUDIT_TABLE
                ),
            )
            .await
            .unwrap();
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids, unique, "no two events share an identifier");
        assert_eq!(ids[0], position.as_i64(), "the new event is the newest");
    }
}

/// A planned switchover as an operator runs it (read-only primary, then promote), on
/// separate connections: between
/// the read-only step and the promotion health is not `operational`; after
/// `pg_promote()` a change reaches a handle in another pool by push (polling at 1 h)
/// within 1 s.
pub async fn planned_switchover_push_follows_the_new_primary<S: SuiteHandleStore>() {
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    let dsn = cluster.multi_host_dsn(&db);
    let writer = store_on::<S>(&dsn).await;
    S::relax(&writer, 1).await.unwrap();
    let handle = S::handle(Arc::new(store_on::<S>(&dsn).await), push_only());
    wait_until("operational", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
    let primary = cluster.primary();
    primary
        .execute(
            "postgres",
            "ALTER SYSTEM SET default_transaction_read_only = on;",
        )
        .await
        .unwrap();
    primary
        .execute("postgres", "SELECT pg_reload_conf();")
        .await
        .unwrap();
    wait_until(
        "not operational while the primary is read-only",
        Duration::from_secs(4),
        || handle.health().status != ComponentStatus::Operational,
    )
    .await;
    cluster.wait_replica_caught_up(WAIT).await.unwrap();
    let replica = cluster.replica().unwrap();
    replica
        .execute("postgres", "SELECT pg_promote();")
        .await
        .unwrap();
    let position = S::tighten(&writer, 2)
        .await
        .expect("write on the new primary");
    let written = Instant::now();
    wait_until(
        "pushed from the new primary",
        Duration::from_secs(1),
        || handle.halted(),
    )
    .await;
    eprintln!(
        "after the switchover push arrived in {:?}",
        written.elapsed()
    );
    assert_eq!(handle.position(), Some(position));
    wait_until("operational on the new primary", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
}

/// Expands to the named tests every PostgreSQL store runs (see [`crate::suite`]).
#[macro_export]
macro_rules! pg_store_suite {
    (@route $suite:ty, $module:ident, $route:ident) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn concurrent_migrations_apply_once() {
                $crate::suite::concurrent_migrations_apply_once::<$suite>(
                    $crate::suite::Route::$route,
                )
                .await;
            }
            #[tokio::test]
            async fn unmigrated_database_says_run_migrations() {
                $crate::suite::unmigrated_database_says_run_migrations::<$suite>(
                    $crate::suite::Route::$route,
                )
                .await;
            }
            #[tokio::test]
            async fn audit_trail_is_append_only() {
                $crate::suite::audit_trail_is_append_only::<$suite>(
                    $crate::suite::Route::$route,
                )
                .await;
            }
            #[tokio::test]
            async fn outage_fails_fast_and_recovers() {
                $crate::suite::outage_fails_fast_and_recovers::<$suite>(
                    $crate::suite::Route::$route,
                )
                .await;
            }
        }
    };
    ($suite:ty) => {
        #[tokio::test]
        async fn suite_env_settings_hide_the_password() {
            $crate::suite::env_settings_hide_the_password::<$suite>().await;
        }
        $crate::pg_store_suite!(@route $suite, suite, Direct);
        $crate::pg_store_suite!(@route $suite, suite_behind_pgbouncer, TransactionPooler);
    };

}

/// Expands to the named tests every PostgreSQL store with a hot-path handle runs (see
/// [`crate::suite`]).
#[macro_export]
macro_rules! pg_handle_suite {
    ($suite:ty) => {
        #[tokio::test]
        async fn suite_push_reaches_another_pool() {
            $crate::suite::push_reaches_another_pool::<$suite>($crate::suite::Route::Direct).await;
        }
        #[tokio::test]
        async fn suite_behind_pgbouncer_push_reaches_another_pool() {
            $crate::suite::push_reaches_another_pool::<$suite>(
                $crate::suite::Route::TransactionPooler,
            )
            .await;
        }
        #[tokio::test]
        async fn suite_default_settings_report_a_dead_primary_within_a_second() {
            $crate::suite::default_settings_report_a_dead_primary_within_a_second::<$suite>().await;
        }
        #[tokio::test]
        async fn suite_lossy_failover_lost_relaxation_halts_the_running_handle() {
            $crate::suite::lossy_failover_lost_relaxation_halts_the_running_handle::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn suite_lossy_failover_new_tightening_reaches_the_running_handle() {
            $crate::suite::lossy_failover_new_tightening_reaches_the_running_handle::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn suite_planned_switchover_push_follows_the_new_primary() {
            $crate::suite::planned_switchover_push_follows_the_new_primary::<$suite>().await;
        }
    };
}

/// Through pgbouncer in transaction mode (what most fleets run): 1,000 concurrent
/// calls succeed — no named prepared statement outlives its transaction there, so the
/// pool sends unnamed statements once it notices — and migrations run through it.
pub async fn transaction_pooler_serves_concurrent_calls<S: SuiteStore>() {
    let (cluster, db) = own_primary().await.expect("cluster");
    let bouncer = cluster
        .pgbouncer(super::PoolMode::Transaction)
        .await
        .expect("pgbouncer");
    let settings = PgSettings::builder()
        .with_dsn(bouncer.dsn(&db))
        .build()
        .unwrap();
    let store = Arc::new(S::Store::new(settings).expect("store"));
    store
        .migrate()
        .await
        .expect("migrations through the pooler");
    let calls = (0..1000u32).map(|n| {
        let store = store.clone();
        async move {
            if n % 2 == 0 {
                S::tighten(&store, n).await
            } else {
                S::relax(&store, n).await
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 1000 calls failed through the pooler, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}

/// A primary with pgbouncer in `mode` in front, a writer store and a handle in
/// another store, both through pgbouncer (LISTEN going to the primary directly with
/// `listen_direct`), after one relaxing change.
struct Pooled {
    _cluster: Cluster,
    _bouncer: super::PgBouncer,
    handle: Box<dyn SuiteHandle>,
}

async fn pooled<S: SuiteHandleStore>(
    mode: super::PoolMode,
    listen_direct: bool,
    config: WatchConfig,
) -> (Pooled, S::Store) {
    let (cluster, db) = own_primary().await.expect("cluster");
    let bouncer = cluster.pgbouncer(mode).await.expect("pgbouncer");
    let store = || {
        let mut settings = fast_settings(&bouncer.dsn(&db));
        if listen_direct {
            settings = settings.with_listen_dsn(cluster.primary().dsn(&db));
        }
        S::Store::new(settings.build().unwrap()).expect("store")
    };
    let writer = store();
    writer.migrate().await.expect("migrate through the pooler");
    S::relax(&writer, 1).await.unwrap();
    let handle = S::handle(Arc::new(store()), config);
    (
        Pooled {
            _cluster: cluster,
            _bouncer: bouncer,
            handle,
        },
        writer,
    )
}

/// Push reaches the handle (polling at 1 h) within 1 s, once health is `operational`.
async fn pushed_through<S: SuiteHandleStore>(mode: super::PoolMode, listen_direct: bool) {
    let (pooled, writer) = pooled::<S>(mode, listen_direct, push_only()).await;
    let handle = &pooled.handle;
    wait_until("operational (reads and push)", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
    let position = S::tighten(&writer, 2).await.unwrap();
    wait_until("pushed", Duration::from_secs(1), || handle.halted()).await;
    assert_eq!(handle.position(), Some(position));
}

/// Through pgbouncer in transaction mode with `LISTEN_DSN` pointing at the primary:
/// push works (polling at 1 h) and health is `operational`.
pub async fn push_through_the_listen_dsn_beside_a_transaction_pooler<S: SuiteHandleStore>() {
    pushed_through::<S>(super::PoolMode::Transaction, true).await;
}

/// pgbouncer in session mode passes LISTEN: push works without a listen DSN.
pub async fn push_through_a_session_pooler<S: SuiteHandleStore>() {
    pushed_through::<S>(super::PoolMode::Session, false).await;
}

/// Through pgbouncer in transaction mode without a listen DSN, notifications cannot
/// arrive: health says `degraded` with the reason ("push unavailable, polling every
/// 1s: … LISTEN_DSN …") instead of `operational`, and polling keeps the handle right.
pub async fn push_unavailable_through_a_transaction_pooler_is_reported<S: SuiteHandleStore>() {
    let (pooled, writer) =
        pooled::<S>(super::PoolMode::Transaction, false, WatchConfig::default()).await;
    let handle = &pooled.handle;
    // The probe (a notification from another session) does not come back: degraded,
    // with what to do.
    wait_until("degraded: push unavailable, set LISTEN_DSN", WAIT, || {
        let h = handle.health();
        let details = h.details.unwrap_or_default();
        h.status == ComponentStatus::Degraded
            && details.contains("push unavailable")
            && details.contains("LISTEN_DSN")
    })
    .await;
    let position = S::tighten(&writer, 2).await.unwrap();
    wait_until(
        "polled within the poll interval",
        Duration::from_secs(3),
        || handle.halted(),
    )
    .await;
    assert_eq!(handle.position(), Some(position));
}

/// Expands to the named tests every PostgreSQL store with a handle runs behind
/// pgbouncer (see [`crate::suite`]).
#[macro_export]
macro_rules! pg_pooler_suite {
    ($suite:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pooler_transaction_mode_serves_concurrent_calls() {
            $crate::suite::transaction_pooler_serves_concurrent_calls::<$suite>().await;
        }
        #[tokio::test]
        async fn pooler_push_through_the_listen_dsn_beside_a_transaction_pooler() {
            $crate::suite::push_through_the_listen_dsn_beside_a_transaction_pooler::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn pooler_push_unavailable_through_a_transaction_pooler_is_reported() {
            $crate::suite::push_unavailable_through_a_transaction_pooler_is_reported::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn pooler_push_through_a_session_pooler() {
            $crate::suite::push_through_a_session_pooler::<$suite>().await;
        }
    };
}
