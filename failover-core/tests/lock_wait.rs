//! A write stuck behind another session's lock, and a server without a free
//! connection slot, against real servers: each fails promptly, says what is in the way
//! and what to do, and says that nothing was written.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};
use tradepulse_failover_core::postgres::{DbErrorKind, PgPool, PgSettings, Reach};
use tradepulse_testkit::{fast_settings, Cluster};

/// A session of its own (like an operator's psql), with the connection driven in the
/// background.
async fn session(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(dsn, tokio_postgres::NoTls),
    )
    .await
    .expect("connect within 5 s")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The pool with every setting at its default, as the controls run it.
fn default_pool(dsn: &str) -> PgPool {
    let settings = PgSettings::builder().with_dsn(dsn).build().unwrap();
    PgPool::new("test", settings).unwrap()
}

#[tokio::test]
async fn a_write_behind_a_row_lock_fails_within_a_second_naming_the_holder() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let primary = cluster.primary();
    primary
        .execute(
            &db,
            "CREATE TABLE locked_rows (id int PRIMARY KEY, n int NOT NULL); \
             INSERT INTO locked_rows VALUES (1, 0)",
        )
        .await
        .unwrap();
    let holder = session(&format!("{} application_name=psql", primary.dsn(&db)))
        .await
        .unwrap();
    let holder_pid = backend_pid(&holder).await;
    holder
        .batch_execute("BEGIN; SELECT * FROM locked_rows WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();

    let pool = default_pool(&primary.dsn(&db));
    let start = Instant::now();
    let err = pool
        .execute(
            "test.update",
            "UPDATE locked_rows SET n = n + 1 WHERE id = 1",
            &[],
        )
        .await
        .expect_err("the row is locked");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}: {err}");
    assert_eq!(err.kind(), DbErrorKind::Locked, "{err}");
    assert_eq!(err.sqlstate(), Some("55P03"));
    assert_eq!(err.attempts(), 1, "a lock wait is not waited out again");
    let pids: Vec<i32> = err.blockers().iter().map(|b| b.pid).collect();
    assert_eq!(pids, vec![holder_pid], "{err}");
    let blocker = &err.blockers()[0];
    assert_eq!(blocker.application_name, "psql");
    assert_eq!(blocker.state.as_deref(), Some("idle in transaction"));
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "locked_rows is locked by pid {holder_pid} (psql, user postgres, idle in transaction for"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("SELECT pg_terminate_backend({holder_pid})")),
        "{text}"
    );
    // The database is up: a lock is not an outage, and nothing was written.
    assert_eq!(pool.unreachable(), None);
    let write = err.during_write();
    assert!(write.reached_server());
    assert!(!write.outcome_unknown());
    assert!(
        write.outcome_note().contains("nothing was written"),
        "{}",
        write.outcome_note()
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let updated = pool
        .execute(
            "test.update",
            "UPDATE locked_rows SET n = n + 1 WHERE id = 1",
            &[],
        )
        .await
        .expect("the lock is gone");
    assert_eq!(updated, 1);
    let rows = primary
        .query(&db, "SELECT n FROM locked_rows WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("1"), "exactly one write landed");
}

/// The kill switch's shape: a SQL function that locks the state row with `FOR
/// UPDATE`, called through `query_one`. (`killswitch` itself depends on this crate, so
/// its store cannot be used here without a dependency cycle.)
#[tokio::test]
async fn a_locking_function_behind_an_open_transaction_names_the_table_and_the_holder() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let primary = cluster.primary();
    primary
        .execute(
            &db,
            "CREATE TABLE kill_switch_state (id int PRIMARY KEY, engaged bool NOT NULL); \
             INSERT INTO kill_switch_state VALUES (1, false), (2, false); \
             CREATE FUNCTION engage() RETURNS bool LANGUAGE plpgsql AS $$ \
             DECLARE was bool; \
             BEGIN \
               SELECT engaged INTO was FROM kill_switch_state WHERE id = 1 FOR UPDATE; \
               UPDATE kill_switch_state SET engaged = true WHERE id = 1; \
               RETURN was; \
             END $$",
        )
        .await
        .unwrap();
    let holder = session(&format!("{} application_name=psql", primary.dsn(&db)))
        .await
        .unwrap();
    let holder_pid = backend_pid(&holder).await;
    holder
        .batch_execute("BEGIN; SELECT * FROM kill_switch_state WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    // Bystanders are not in the way: one reading the table in an open transaction,
    // one that updated another row and has not committed yet.
    let reader = session(&primary.dsn(&db)).await.unwrap();
    reader
        .batch_execute("BEGIN; SELECT * FROM kill_switch_state")
        .await
        .unwrap();
    let other_row = session(&primary.dsn(&db)).await.unwrap();
    let other_pid = backend_pid(&other_row).await;
    other_row
        .batch_execute("BEGIN; UPDATE kill_switch_state SET engaged = true WHERE id = 2")
        .await
        .unwrap();

    let pool = default_pool(&primary.dsn(&db));
    let start = Instant::now();
    let err = pool
        .query_one("kill_switch.engage", "SELECT engage()", &[])
        .await
        .expect_err("the state row is locked");
    assert!(start.elapsed() < Duration::from_secs(1), "{err}");
    assert_eq!(err.kind(), DbErrorKind::Locked, "{err}");
    let pids: Vec<i32> = err.blockers().iter().map(|b| b.pid).collect();
    assert_eq!(pids, vec![holder_pid], "{err}");
    assert_eq!(err.blockers()[0].relation, "kill_switch_state");
    assert!(
        err.to_string().contains(&format!(
            "kill_switch_state is locked by pid {holder_pid} (psql, user postgres, idle in transaction"
        )),
        "{err}"
    );
    assert_eq!(pool.unreachable(), None);
    // Asked for directly (what a doctor command shows), every session that holds a
    // lock on the table that can block a writer: the holder and the other writer,
    // not the reader.
    let mut pids: Vec<i32> = pool
        .blockers_of(Some("kill_switch_state"))
        .await
        .unwrap()
        .iter()
        .map(|b| b.pid)
        .collect();
    pids.sort_unstable();
    let mut expected = vec![holder_pid, other_pid];
    expected.sort_unstable();
    assert_eq!(pids, expected);

    holder.batch_execute("ROLLBACK").await.unwrap();
    let was: bool = pool
        .query_one("kill_switch.engage", "SELECT engage()", &[])
        .await
        .expect("the lock is gone")
        .get(0);
    assert!(!was);
}

#[tokio::test]
async fn with_every_connection_slot_taken_a_write_says_nothing_was_written_and_what_to_do() {
    let cluster = Cluster::builder()
        .setting("max_connections", "6")
        .setting("superuser_reserved_connections", "1")
        .start()
        .await
        .unwrap();
    let db = cluster.create_database().await.unwrap();
    let dsn = cluster.primary().dsn(&db);

    let doctor = PgPool::new(
        "doctor",
        fast_settings(&dsn).with_pool_size(1).build().unwrap(),
    )
    .unwrap();
    let headroom = doctor.connection_headroom().await.unwrap();
    assert_eq!(headroom.max_connections, 6);
    assert_eq!(headroom.superuser_reserved, 1);
    assert!(headroom.in_use >= 1, "{headroom:?}");
    assert!(headroom.login_is_superuser, "{headroom:?}");
    if headroom.server_version_num < 160000 {
        assert_eq!(headroom.reserved, None);
        assert_eq!(headroom.login_may_use_reserved, None);
    }
    assert!(headroom.free_for_ordinary_logins() <= 6 - 1 - headroom.in_use);
    drop(doctor);

    // Take every slot, the superuser's reserve included.
    let mut held = Vec::new();
    let refusal = loop {
        assert!(held.len() < 20, "max_connections = 6 never refused");
        match session(&dsn).await {
            Ok(client) => held.push(client),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code().map(|c| c.code()), Some("53300"), "{refusal}");

    let pool = PgPool::new("test", fast_settings(&dsn).build().unwrap()).unwrap();
    let budget = pool.settings().retry_policy().budget;
    let start = Instant::now();
    let err = pool
        .execute("test.write", "SELECT 1", &[])
        .await
        .expect_err("no slot is free")
        .during_write();
    let elapsed = start.elapsed();
    assert!(
        elapsed < budget + Duration::from_millis(500),
        "took {elapsed:?}"
    );
    assert_eq!(err.kind(), DbErrorKind::Unavailable, "{err}");
    assert_eq!(err.sqlstate(), Some("53300"), "{err}");
    assert_eq!(err.reach(), Reach::NotConnected, "{err}");
    assert!(!err.reached_server());
    assert!(!err.outcome_unknown());
    assert!(err.message().contains("53300"), "{err}");
    let note = err.outcome_note();
    assert!(note.contains("nothing was written"), "{note}");
    assert!(note.contains("every connection slot is taken"), "{note}");
    assert!(
        note.contains("GRANT pg_use_reserved_connections TO <login>"),
        "{note}"
    );
    drop(held);
}

/// Nodes starting together migrate one at a time. One node's migration holding the
/// migration lock longer than the pool's `lock_timeout` (500 ms by default) must not
/// fail the others: they wait for it, then find the migrations applied.
#[tokio::test]
async fn a_node_waits_for_another_nodes_migration_longer_than_the_lock_timeout() {
    use tradepulse_failover_core::postgres::{migrate, Migration};
    static DEMO: &[Migration] = &[Migration::new(
        1,
        "demo",
        "CREATE TABLE migrate_demo (x INT)",
    )];
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    // Another node's migration, as it holds the lock: the same advisory lock
    // failover-core's migrate takes, in a transaction left open for 1.5 s.
    let other = session(&dsn).await.unwrap();
    other
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(8390876139571148140)")
        .await
        .unwrap();
    let pool = default_pool(&dsn);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { migrate(&pool, "demo", DEMO).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "it waits while the other node migrates"
    );
    other.batch_execute("COMMIT").await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("done within 10 s of the other node's commit")
        .unwrap()
        .expect("migrated after waiting, not refused by the lock timeout");
    assert_eq!(report.applied, vec![1]);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}
