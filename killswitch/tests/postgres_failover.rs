//! The kill switch through a primary failure, on a real primary + streaming replica:
//! kill -9 and promotion, a hung (SIGSTOPped) primary, terminated backends, and a
//! read-only primary followed by a DSN swap. The same store object is used before and
//! after each fault: no restart.

mod support;

use failover_core::DbErrorKind;
use std::time::{Duration, Instant};
use tradepulse_killswitch::{Audit, Error, KillSwitchStore, PostgresKillSwitchStore};
use tradepulse_testkit::Cluster;

const RUNBOOK_QUERY: &str =
    "SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;";

async fn replicated() -> (Cluster, String) {
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    (cluster, db)
}

#[tokio::test]
async fn kill9_primary_and_promote_replica_then_engage_succeeds_on_the_same_store() {
    let (cluster, db) = replicated().await;
    let store = support::store(&cluster.multi_host_dsn(&db)).await;
    store
        .disengage(&Audit::new("ops", "baseline").with_ticket("CHG-1"))
        .await
        .unwrap();
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();

    cluster.primary().kill9().await.unwrap();
    let replica = cluster.replica().unwrap();
    replica.promote().await.unwrap();

    let start = Instant::now();
    let state = store
        .engage(&Audit::new("ops:alice", "primary lost"))
        .await
        .expect("engage after promotion");
    let budget = store.pool().settings().retry_policy().budget;
    assert!(
        start.elapsed() <= budget + Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    assert!(state.engaged);
    assert_eq!(state.version, 2, "the pre-failover change survived");

    let rows = replica.query(&db, RUNBOOK_QUERY).await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("t"));
    assert_eq!(rows[0][1].as_deref(), Some("primary lost"));
    eprintln!("first engage after promotion took {:?}", start.elapsed());
}

#[tokio::test]
async fn a_hung_primary_gives_unavailable_within_the_bound_instead_of_hanging() {
    let (cluster, db) = support::primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    store.load().await.unwrap(); // warm pool: the connection will hang mid-query
    cluster.primary().freeze().unwrap();
    let budget = store.pool().settings().retry_policy().budget;
    let start = Instant::now();
    let result = tokio::time::timeout(
        budget + Duration::from_secs(5),
        store.engage(&Audit::new("ops", "while hung")),
    )
    .await
    .expect("the call must not hang");
    let elapsed = start.elapsed();
    cluster.primary().thaw().unwrap();
    let err = result.expect_err("a hung server cannot answer");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        elapsed <= budget + Duration::from_millis(500),
        "took {elapsed:?}, budget {budget:?}"
    );
    // Thawed: the same store works again (the write above may or may not have landed,
    // which is why it is idempotent).
    store.load().await.expect("works after thaw");
}

#[tokio::test]
async fn after_every_backend_is_terminated_the_next_call_succeeds() {
    let (cluster, db) = support::primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    // Fill the pool with idle connections.
    let loads = futures_util::future::join_all((0..4).map(|_| store.load())).await;
    for l in loads {
        l.unwrap();
    }
    let killed = cluster.primary().terminate_backends().await.unwrap();
    assert!(killed >= 1, "terminated {killed}");
    let state = store
        .engage(&Audit::new("ops", "after terminate"))
        .await
        .expect("next call succeeds");
    assert!(state.engaged);
}

#[tokio::test]
async fn a_read_only_primary_is_retryable_and_a_dsn_swap_to_the_promoted_replica_recovers() {
    let (cluster, db) = replicated().await;
    let primary = cluster.primary();
    let replica = cluster.replica().unwrap();
    // Migrating is setup: it gets the default retry budget; the store under test
    // keeps the tight one.
    PostgresKillSwitchStore::new(support::settings(&primary.dsn(&db)).build().unwrap())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let store = PostgresKillSwitchStore::new(
        support::settings(&primary.dsn(&db))
            .with_retry_budget(Duration::from_millis(800))
            .build()
            .unwrap(),
    )
    .unwrap();
    store
        .engage(&Audit::new("ops", "before").with_ticket("CHG-2"))
        .await
        .unwrap();
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();

    // The planned-failover runbook: make the primary read-only.
    primary.set_read_only(true).await.unwrap();
    let err = store
        .disengage(&Audit::new("ops", "during switchover").with_ticket("CHG-2"))
        .await
        .expect_err("a read-only server refuses writes");
    match &err {
        Error::Unavailable { source } => assert_eq!(source.kind(), DbErrorKind::Unavailable),
        other => panic!("expected a retryable (unavailable) error, got {other:?}"),
    }
    assert!(err_class_retryable(&err), "{err}");
    eprintln!("read-only primary: {err}");

    replica.promote().await.unwrap();
    store.swap_dsn(&replica.dsn(&db)).expect("swap");
    let state = store
        .disengage(&Audit::new("ops", "after swap").with_ticket("CHG-2"))
        .await
        .expect("writes succeed on the promoted replica");
    assert!(!state.engaged);
    assert_eq!(state.version, 2);
    let rows = replica.query(&db, RUNBOOK_QUERY).await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("f"));
}

fn err_class_retryable(err: &Error) -> bool {
    match err {
        Error::Unavailable { source } => source.class() == failover_core::ErrorClass::Retryable,
        _ => false,
    }
}

#[test]
fn sqlstate_25006_is_classified_retryable() {
    use failover_core::postgres::{classify_sqlstate, tokio_postgres::error::SqlState};
    assert_eq!(
        classify_sqlstate(&SqlState::READ_ONLY_SQL_TRANSACTION),
        failover_core::ErrorClass::Retryable
    );
    assert_eq!(
        classify_sqlstate(&SqlState::UNIQUE_VIOLATION),
        failover_core::ErrorClass::Permanent
    );
}
