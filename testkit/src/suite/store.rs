//! What [`pg_store_suite!`](crate::pg_store_suite) runs: env settings with a hidden
//! password, concurrent migrations, an unmigrated database, the append-only audit
//! trail, and an outage that fails fast and recovers on the same store object.

use super::{Db, Route, SuiteStore};
use crate::own_primary;
use failover_core::postgres::PgStore;
use std::time::{Duration, Instant};

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
