//! What [`pg_handle_suite!`](crate::pg_handle_suite) runs: push to a handle in
//! another pool, health on the default settings when the primary dies, lossy
//! asynchronous failovers in both directions, and a planned switchover.

use super::{push_only, Db, Route, SuiteHandle, SuiteHandleStore, SuiteStore, WAIT};
use crate::{fast_settings, own_primary, wait_until, wait_until_seeing, Cluster};
use failover_core::health::ComponentStatus;
use failover_core::position::Position;
use failover_core::postgres::{PgSettings, PgStore};
use failover_core::watcher::WatchConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn store_on<S: SuiteStore>(dsn: &str) -> S::Store {
    let store = S::Store::new(fast_settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
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
    assert_eq!(
        handle.health().push,
        Some(true),
        "what failover_push_connected exports"
    );
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
            wait_until_seeing(
                "push back on the new primary",
                WAIT,
                || {
                    !lossy
                        .handle
                        .health()
                        .details
                        .unwrap_or_default()
                        .contains("push unavailable")
                        && lossy.handle.health().status != ComponentStatus::Failed
                },
                || lossy.handle.health(),
            )
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
