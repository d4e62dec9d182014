//! Only standbys reachable, against a real primary+replica cluster: a write says there
//! is no primary yet (and health says so), while a pool that accepts a standby serves
//! reads and says which server answered and how far behind it is.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};
use tradepulse_failover_core::postgres::{DbErrorKind, PgPool, Reach};
use tradepulse_testkit::{fast_settings, Cluster};

#[tokio::test]
async fn a_dsn_naming_only_the_replica_says_no_primary_yet_and_reads_from_the_standby() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (primary, replica) = (cluster.primary(), cluster.replica().unwrap());
    primary
        .execute(
            &db,
            "CREATE TABLE state (id int PRIMARY KEY, engaged bool NOT NULL); \
             INSERT INTO state VALUES (1, true)",
        )
        .await
        .unwrap();
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();

    let pool = PgPool::new("test", fast_settings(&replica.dsn(&db)).build().unwrap()).unwrap();
    let budget = pool.settings().retry_policy().budget;
    let start = Instant::now();
    let err = pool
        .execute(
            "test.write",
            "UPDATE state SET engaged = false WHERE id = 1",
            &[],
        )
        .await
        .expect_err("a standby takes no writes")
        .during_write();
    assert!(
        start.elapsed() < budget + Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(err.kind(), DbErrorKind::Unavailable, "{err}");
    assert!(err.no_primary(), "{err}");
    assert!(
        err.to_string()
            .contains("every host is in recovery: no primary yet"),
        "{err}"
    );
    assert_eq!(err.reach(), Reach::NotConnected);
    assert!(!err.outcome_unknown());
    assert!(err.outcome_note().contains("nothing was written"), "{err}");
    // Health names the cause, not a bare "unreachable".
    let cause = pool
        .unreachable()
        .expect("no primary is an outage for writes");
    assert!(
        cause.starts_with("every host is in recovery: no primary yet"),
        "{cause}"
    );

    let reads = pool.read_only_from_standby().unwrap();
    assert!(reads.accepts_standby());
    let engaged: bool = reads
        .query_one("test.read", "SELECT engaged FROM state WHERE id = 1", &[])
        .await
        .expect("a standby serves reads")
        .get(0);
    assert!(engaged);
    let answered = reads.answered_by().await.unwrap();
    assert!(answered.in_recovery, "{answered:?}");
    assert_eq!(answered.host, format!("127.0.0.1:{}", replica.port()));
    let lag = answered
        .replay_lag
        .expect("the standby replayed the insert");
    assert!(lag < Duration::from_secs(60), "{lag:?}");
    let said = answered.to_string();
    assert!(
        said.starts_with(&format!(
            "answered by standby 127.0.0.1:{}, replay lag ",
            replica.port()
        )),
        "{said}"
    );
    // Reads keep working on a reused connection (not verified away as a standby).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reads
        .query_one("test.read", "SELECT engaged FROM state WHERE id = 1", &[])
        .await
        .expect("a pooled standby connection is reused");
    assert_eq!(reads.unreachable(), None);
}

#[tokio::test]
async fn the_standby_pool_is_served_by_a_primary_that_answers_first_without_lag() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let pool = PgPool::new(
        "test",
        fast_settings(&cluster.multi_host_dsn(&db)).build().unwrap(),
    )
    .unwrap();
    let reads = pool.read_only_from_standby().unwrap();
    let answered = reads.answered_by().await.unwrap();
    assert!(!answered.in_recovery, "{answered:?}");
    assert_eq!(answered.replay_lag, None);
    assert_eq!(
        answered.to_string(),
        format!("answered by primary 127.0.0.1:{}", cluster.primary().port())
    );
}
