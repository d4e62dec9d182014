//! Tests of the testkit itself: every fault must really happen, observed from a client.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tradepulse_testkit::{generate_ca_file, Cluster, ClusterBuilder, Node};

/// The rows of `sql` on `node`, flattened to text ("NULL" for NULL).
async fn rows(node: &Node, db: &str, sql: &str) -> Vec<Vec<String>> {
    node.query(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", node.name()))
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".to_owned()))
                .collect()
        })
        .collect()
}

fn table(values: &[&[&str]]) -> Vec<Vec<String>> {
    values
        .iter()
        .map(|row| row.iter().map(|v| (*v).to_owned()).collect())
        .collect()
}

#[tokio::test]
async fn kill9_primary_then_promote_replica_keeps_replicated_rows() {
    let cluster = Cluster::start_with_replica().await.expect("cluster");
    let primary = cluster.primary();
    let replica = cluster.replica().expect("replica");
    assert_eq!(cluster.nodes().len(), 2);

    let db = cluster.create_database().await.expect("database");
    assert_eq!(
        cluster.multi_host_dsn(&db),
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={db} connect_timeout=2",
            primary.port(),
            replica.port()
        )
    );
    primary
        .execute(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
        )
        .await
        .expect("write on primary");
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .expect("caught up");
    assert!(replica.is_in_recovery().await.expect("recovery?"));
    assert_eq!(
        rows(replica, &db, "SELECT id FROM t").await,
        table(&[&["1"]])
    );
    let refused = replica
        .execute(&db, "INSERT INTO t VALUES (99)")
        .await
        .expect_err("a standby refuses writes");
    assert_eq!(refused.sqlstate(), Some("25006"), "{refused}");

    let pid = primary.postmaster_pid().expect("primary running");
    primary.kill9().await.expect("kill -9");
    assert_eq!(primary.postmaster_pid(), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster still exists"
    );
    assert!(
        primary.query("postgres", "SELECT 1").await.is_err(),
        "the killed primary still answers"
    );

    replica.promote().await.expect("promote");
    assert!(!replica.is_in_recovery().await.expect("recovery?"));
    replica
        .execute(&db, "INSERT INTO t VALUES (2)")
        .await
        .expect("write on the promoted replica");
    assert_eq!(
        rows(replica, &db, "SELECT id FROM t ORDER BY id").await,
        table(&[&["1"], &["2"]])
    );
}

#[tokio::test]
async fn freeze_hangs_clients_and_thaw_restores() {
    let cluster = Cluster::start().await.expect("cluster");
    let node = cluster.primary();
    node.freeze().expect("freeze");

    // The kernel still accepts TCP connections on the listen backlog...
    let tcp = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((node.host(), node.port())),
    )
    .await;
    assert!(
        matches!(tcp, Ok(Ok(_))),
        "TCP connect to a frozen server: {tcp:?}"
    );
    drop(tcp);
    // ...but nothing answers: connect + query hangs until our bound.
    let started = Instant::now();
    let attempt = tokio::time::timeout(Duration::from_millis(800), async {
        let (client, connection) = tokio_postgres::connect(&node.dsn("postgres"), NoTls).await?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await
    })
    .await;
    assert!(
        attempt.is_err(),
        "a frozen server answered: {:?}",
        attempt.map(|r| r.map(|_| ()))
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    node.thaw().expect("thaw");
    let answered = tokio::time::timeout(Duration::from_secs(5), node.query("postgres", "SELECT 1"))
        .await
        .expect("thawed server answers in time")
        .expect("query after thaw");
    assert_eq!(answered, vec![vec![Some("1".to_owned())]]);
}

#[tokio::test]
async fn read_only_refuses_writes_with_25006_until_turned_off() {
    let cluster = Cluster::start().await.expect("cluster");
    let node = cluster.primary();
    let db = cluster.create_database().await.expect("database");
    node.execute(&db, "CREATE TABLE t (x int)")
        .await
        .expect("create");

    node.set_read_only(true).await.expect("read-only on");
    let refused = node
        .execute(&db, "INSERT INTO t VALUES (1)")
        .await
        .expect_err("write on a read-only server");
    assert_eq!(refused.sqlstate(), Some("25006"), "{refused}");

    node.set_read_only(false).await.expect("read-only off");
    node.execute(&db, "INSERT INTO t VALUES (2)")
        .await
        .expect("write after read-only off");
    assert_eq!(rows(node, &db, "SELECT x FROM t").await, table(&[&["2"]]));

    // Restarts: fast, immediate and after a crash; committed data survives each.
    node.stop().await.expect("stop");
    assert_eq!(node.postmaster_pid(), None);
    assert!(node.query("postgres", "SELECT 1").await.is_err());
    node.start().await.expect("start after stop");
    node.stop_immediate().await.expect("stop immediate");
    assert_eq!(node.postmaster_pid(), None);
    node.start().await.expect("start after immediate stop");
    node.kill9().await.expect("kill -9");
    node.start().await.expect("start after kill -9");
    assert_eq!(rows(node, &db, "SELECT x FROM t").await, table(&[&["2"]]));
}

#[tokio::test]
async fn terminate_backends_closes_open_client_connections() {
    let cluster = Cluster::start().await.expect("cluster");
    let node = cluster.primary();
    let (client, connection) = tokio_postgres::connect(&node.dsn("postgres"), NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    client.simple_query("SELECT 1").await.expect("query");

    let terminated = node.terminate_backends().await.expect("terminate");
    assert!(terminated >= 1, "terminated {terminated}");

    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the connection ends in time")
        .expect("connection task");
    let error = ended.expect_err("the server closed the connection with an error");
    assert_eq!(error.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{error}");
    assert!(client.is_closed());
    assert!(client.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn synchronous_replica_is_sync_and_holds_commits() {
    let cluster = ClusterBuilder::new()
        .synchronous(true)
        .start()
        .await
        .expect("cluster");
    assert!(cluster.is_synchronous());
    let primary = cluster.primary();
    let replica = cluster.replica().expect("replica");
    assert_eq!(
        rows(
            primary,
            "postgres",
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        )
        .await,
        table(&[&["replica1", "streaming", "sync"]])
    );

    // A commit waits for the replica: with the replica frozen it does not return.
    let db = cluster.create_database().await.expect("database");
    primary
        .execute(&db, "CREATE TABLE t (x int)")
        .await
        .expect("create");
    replica.freeze().expect("freeze replica");
    let blocked = primary
        .query_timeout(&db, "INSERT INTO t VALUES (1)", Duration::from_millis(700))
        .await;
    assert!(
        matches!(
            blocked,
            Err(tradepulse_testkit::TestkitError::Timeout { .. })
        ),
        "commit returned without the synchronous replica: {blocked:?}"
    );
    replica.thaw().expect("thaw replica");
    primary
        .execute(&db, "INSERT INTO t VALUES (2)")
        .await
        .expect("commit with the replica back");
}

#[tokio::test]
async fn tls_cluster_serves_verified_tls_and_refuses_a_wrong_ca() {
    let cluster = ClusterBuilder::new()
        .tls(true)
        .start()
        .await
        .expect("cluster");
    let node = cluster.primary();
    assert_eq!(rows(node, "postgres", "SHOW ssl").await, table(&[&["on"]]));

    let ca = cluster.ca_cert_path().expect("CA path");
    let connect = |ca_file: std::path::PathBuf| {
        let dsn = format!("{} sslmode=require", node.dsn("postgres"));
        async move {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca_file).expect("read CA") {
                roots.add(cert.expect("parse CA")).expect("add CA");
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let (client, connection) =
                tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&dsn, tls))
                    .await
                    .expect("connect in time")?;
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        }
    };

    let client = connect(ca.to_path_buf()).await.expect("TLS connect");
    let ssl = client
        .simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .expect("query");
    let on = ssl.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(on.as_deref(), Some("true"));

    let other = tempfile::tempdir().expect("tempdir");
    let wrong = generate_ca_file(other.path(), "wrong-ca").expect("wrong CA");
    assert!(
        connect(wrong).await.is_err(),
        "a server certificate from another CA was accepted"
    );
}
