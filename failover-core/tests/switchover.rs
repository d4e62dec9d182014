//! The runbooks' planned switchover and emergency failover on real servers.
#![cfg(feature = "postgres")]

use std::time::Duration;
use tradepulse_failover_core::postgres::{emergency_failover, planned_switchover, PgSettings};
use tradepulse_testkit::Cluster;

fn settings() -> PgSettings {
    PgSettings::builder()
        .with_dsn("host=127.0.0.1")
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_secs(2))
        .with_retry_budget(Duration::from_secs(3))
        .build()
        .unwrap()
}

#[tokio::test]
async fn planned_switchover_loses_nothing_and_reports_each_phase() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (primary, replica) = (cluster.primary(), cluster.replica().unwrap());
    primary
        .execute(&db, "CREATE TABLE t (n int)")
        .await
        .unwrap();
    primary
        .execute(&db, "INSERT INTO t SELECT generate_series(1, 5000)")
        .await
        .unwrap();
    let report = planned_switchover(
        &settings(),
        &primary.dsn(&db),
        &replica.dsn(&db),
        Duration::from_secs(10),
    )
    .await
    .expect("switchover");
    let names: Vec<&str> = report.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "make primary read-only",
            "wait for replay",
            "promote",
            "verify write"
        ]
    );
    assert!(
        tradepulse_failover_core::postgres::parse_lsn(&report.replayed_lsn)
            >= tradepulse_failover_core::postgres::parse_lsn(&report.primary_lsn)
    );
    assert!(!replica.is_in_recovery().await.unwrap());
    let rows = replica.query(&db, "SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("5000"));
    replica
        .execute(&db, "INSERT INTO t VALUES (0)")
        .await
        .expect("new primary takes writes");
    let err = primary
        .execute(&db, "INSERT INTO t VALUES (-1)")
        .await
        .expect_err("old primary is read-only");
    assert_eq!(err.sqlstate(), Some("25006"));
}

#[tokio::test]
async fn emergency_failover_promotes_the_replica_and_estimates_the_loss_window() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (primary, replica) = (cluster.primary(), cluster.replica().unwrap());
    primary
        .execute(&db, "CREATE TABLE t (n int)")
        .await
        .unwrap();
    primary
        .execute(&db, "INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    primary.kill9().await.unwrap();
    let report = emergency_failover(&settings(), &[primary.dsn(&db), replica.dsn(&db)])
        .await
        .expect("failover");
    assert_eq!(report.candidates.len(), 1, "the dead primary is skipped");
    assert_eq!(report.promoted, 1);
    let window = report
        .estimated_loss_window
        .expect("a replayed commit exists");
    assert!(window < Duration::from_secs(60), "{window:?}");
    assert!(!replica.is_in_recovery().await.unwrap());
    replica
        .execute(&db, "INSERT INTO t VALUES (2)")
        .await
        .expect("writable");
}
