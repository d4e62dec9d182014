//! The pool and the listener against real servers: a hung host does not stall the
//! next one, reads do not linger on a demoted primary, LISTEN reconnects.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};
use tradepulse_failover_core::postgres::{
    ListenEvent, ListenOptions, Listener, PgPool, PgSettings,
};
use tradepulse_testkit::Cluster;

fn pool(dsn: &str) -> PgPool {
    let settings = PgSettings::builder()
        .with_dsn(dsn)
        .with_pool_size(2)
        .with_connect_timeout(Duration::from_millis(300))
        .with_operation_timeout(Duration::from_millis(700))
        .with_retry_budget(Duration::from_secs(3))
        .build()
        .unwrap();
    PgPool::new("test", settings).unwrap()
}

async fn server_port(pool: &PgPool) -> i32 {
    pool.run("test.port", |c| {
        Box::pin(async move { Ok(c.query_one("SELECT inet_server_port()", &[]).await?.get(0)) })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_hung_first_host_does_not_stall_the_writable_second_host() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let replica = cluster.replica().unwrap();
    cluster.primary().freeze().unwrap();
    replica.promote().await.unwrap();
    let pool = pool(&cluster.multi_host_dsn(&db));
    let start = Instant::now();
    let port = server_port(&pool).await;
    let elapsed = start.elapsed();
    cluster.primary().thaw().unwrap();
    assert_eq!(port, i32::from(replica.port()));
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn reads_do_not_linger_on_a_demoted_primary() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (primary, replica) = (cluster.primary(), cluster.replica().unwrap());
    let pool = pool(&cluster.multi_host_dsn(&db));
    assert_eq!(server_port(&pool).await, i32::from(primary.port()));
    // Planned switchover: the old primary turns read-only but keeps answering reads.
    primary.set_read_only(true).await.unwrap();
    replica.promote().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        server_port(&pool).await,
        i32::from(replica.port()),
        "a pooled connection to the read-only server must be verified away"
    );
}

#[tokio::test]
async fn the_listener_reconnects_after_its_backend_is_terminated() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let pool = pool(&cluster.primary().dsn(&db));
    let mut listener = Listener::start(
        pool.clone(),
        &["test_channel"],
        ListenOptions {
            heartbeat: Duration::from_millis(200),
            ..ListenOptions::default()
        },
    );
    assert_eq!(next(&mut listener).await, Some(ListenEvent::Connected));
    cluster
        .primary()
        .execute(&db, "NOTIFY test_channel, 'one'")
        .await
        .unwrap();
    assert_eq!(
        next(&mut listener).await,
        Some(ListenEvent::Notification {
            channel: "test_channel".into(),
            payload: "one".into()
        })
    );
    cluster.primary().terminate_backends().await.unwrap();
    assert!(matches!(
        next(&mut listener).await,
        Some(ListenEvent::Disconnected { .. })
    ));
    assert_eq!(next(&mut listener).await, Some(ListenEvent::Connected));
    cluster
        .primary()
        .execute(&db, "NOTIFY test_channel, 'two'")
        .await
        .unwrap();
    assert_eq!(
        next(&mut listener).await,
        Some(ListenEvent::Notification {
            channel: "test_channel".into(),
            payload: "two".into()
        })
    );
}

async fn next(listener: &mut Listener) -> Option<ListenEvent> {
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("event in time")
}

#[tokio::test]
async fn a_transaction_is_retried_after_its_backend_was_terminated_and_a_refusal_is_not() {
    use tradepulse_failover_core::postgres::db_error;
    use tradepulse_failover_core::DbError;
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let pool = pool(&cluster.primary().dsn(&db));
    cluster
        .primary()
        .execute(&db, "CREATE TABLE t (n int CHECK (n > 0))")
        .await
        .unwrap();
    let insert = |n: i32| {
        pool.transaction("test.insert", move |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO t VALUES ($1)", &[&n])
                    .await
                    .map_err(|e| db_error("test.insert", &e))?;
                Ok::<_, DbError>(())
            })
        })
    };
    insert(1).await.unwrap(); // a pooled connection now exists
    let terminated = cluster.primary().terminate_backends().await.unwrap();
    assert!(terminated >= 1);
    insert(2).await.expect("the very next transaction succeeds");
    let start = Instant::now();
    let err = insert(-1).await.expect_err("the CHECK refuses it");
    assert_eq!(err.sqlstate(), Some("23514"));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "a refusal is not retried"
    );
    let rows = cluster
        .primary()
        .query(&db, "SELECT count(*) FROM t")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("2"));
}
