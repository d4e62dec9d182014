//! Postgres-specific behaviour of the kill switch: the runbook's query, settings from
//! env, migrations, the append-only audit table, NOTIFY between processes, outage
//! health and TLS. Every test runs against a real throw-away server.

mod support;

use support::wait_until;

use failover_core::postgres::TlsMode;
use failover_core::testkit::{generate_ca_file, Cluster};
use failover_core::{ComponentStatus, HealthRegistry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tradepulse_killswitch::{
    Audit, Error, Halt, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore,
    Trading,
};

const RUNBOOK_QUERY: &str =
    "SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;";

#[tokio::test]
async fn runbook_query_returns_the_engaged_row() {
    let (cluster, db) = support::primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    store
        .engage(&Audit::new("ops:alice", "runaway algo"))
        .await
        .expect("engage");
    let rows = cluster
        .primary()
        .query(&db, RUNBOOK_QUERY)
        .await
        .expect("runbook query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some("t"));
    assert_eq!(rows[0][1].as_deref(), Some("runaway algo"));
    assert!(rows[0][2].is_some(), "updated_at is set");
}

#[tokio::test]
async fn store_is_configured_from_the_env_variable_and_never_shows_the_password() {
    let (cluster, db) = support::primary().await;
    let env: HashMap<String, String> = [
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN".to_string(),
            format!("{} password=hunter2-secret", cluster.primary().dsn(&db)),
        ),
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__RETRY_BUDGET".to_string(),
            "2s".to_string(),
        ),
    ]
    .into();
    let store = PostgresKillSwitchStore::from_lookup(|k| env.get(k).cloned()).expect("store");
    store.migrate().await.expect("migrate");
    assert!(
        store
            .engage(&Audit::new("ops", "from env"))
            .await
            .expect("engage")
            .engaged
    );
    assert!(!format!("{store:?}").contains("hunter2"));

    // Missing and malformed variables are errors that name them.
    let err = PostgresKillSwitchStore::from_lookup(|_| None).unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(
        err.to_string()
            .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN"),
        "{err}"
    );
    let err = PostgresKillSwitchStore::from_lookup(|k| {
        (k == "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN")
            .then(|| "host=x port=99999999 password=hunter2-secret".into())
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN"),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // A failing connection: neither the error nor the logs carry the password.
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogWriter(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(writer)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dead = format!("host=127.0.0.1 port=1 user=postgres password=hunter2-secret dbname={db}");
    let store = PostgresKillSwitchStore::new(
        support::settings(&dead)
            .with_retry_budget(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = store.load().await.expect_err("nothing listens on port 1");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(!logged.is_empty(), "the failure was logged");
    assert!(!logged.contains("hunter2"), "{logged}");
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_four_tasks_apply_once_and_rerun_is_a_no_op() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let settings = support::settings(&dsn).build().unwrap();
        tasks.push(tokio::spawn(async move {
            let store = PostgresKillSwitchStore::new(settings).unwrap();
            store.migrate().await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        let report = t.await.unwrap().expect("migrate");
        applied += report.applied.len();
    }
    assert_eq!(applied, 1, "exactly one task applied the migration");
    let again = support::store(&dsn).await.migrate().await.expect("rerun");
    assert!(again.applied.is_empty());
    assert_eq!(again.already_applied, vec![1]);
    let rows = cluster
        .primary()
        .query(
            &db,
            "SELECT count(*) FROM failover_core_migrations WHERE component = 'killswitch'",
        )
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("1"));
}

#[tokio::test]
async fn an_unmigrated_database_says_to_run_migrations() {
    let (cluster, db) = support::primary().await;
    let store = PostgresKillSwitchStore::new(
        support::settings(&cluster.primary().dsn(&db))
            .build()
            .unwrap(),
    )
    .unwrap();
    let start = Instant::now();
    let err = store.load().await.expect_err("no schema");
    assert!(matches!(err, Error::SchemaMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("run killswitch migrations"),
        "{err}"
    );
    let err = store
        .engage(&Audit::new("ops", "stop"))
        .await
        .expect_err("no schema");
    assert!(matches!(err, Error::SchemaMissing { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a permanent error is not retried"
    );
}

#[tokio::test]
async fn the_database_refuses_update_delete_and_truncate_of_the_audit_trail() {
    let (cluster, db) = support::primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    store.engage(&Audit::new("ops", "stop")).await.unwrap();
    for sql in [
        "UPDATE kill_switch_events SET reason = 'forged'",
        "DELETE FROM kill_switch_events",
        "TRUNCATE kill_switch_events",
    ] {
        let err = cluster.primary().execute(&db, sql).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let history = store.history(10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].reason, "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engage_reaches_another_process_handle_through_notify() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    let writer = support::store(&dsn).await;
    // A second "process": its own pool; polling effectively off.
    let reader: Arc<dyn KillSwitchStore> = Arc::new(support::store(&dsn).await);
    let switch = KillSwitch::spawn(
        reader,
        KillSwitchConfig::default().with_poll_interval(Duration::from_secs(3600)),
    );
    assert_eq!(switch.ready(Duration::from_secs(5)).await, Trading::Allowed);
    // Let the LISTEN session establish before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pushed = switch.subscribe();
    let start = Instant::now();
    writer
        .engage(&Audit::new("ops", "halt via notify"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), pushed.wait_for(|t| t.is_halted()))
        .await
        .expect("engagement pushed within 5 s")
        .unwrap();
    let seen_after = start.elapsed();
    assert_eq!(switch.check(), Err(Halt::Engaged));
    assert_eq!(switch.status().state.unwrap().reason, "halt via notify");
    eprintln!("engage -> other handle halted in {seen_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_degrades_then_fails_closed_and_recovers_without_restart() {
    let (cluster, db) = support::primary().await;
    let store = PostgresKillSwitchStore::new(
        support::settings(&cluster.primary().dsn(&db))
            .with_retry_budget(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .unwrap();
    store.migrate().await.unwrap();
    let switch = KillSwitch::spawn(
        Arc::new(store),
        KillSwitchConfig::default()
            .with_staleness_window(Duration::from_secs(3))
            .with_poll_interval(Duration::from_millis(200)),
    );
    let registry = HealthRegistry::new();
    registry.register("kill_switch", switch.health_source());
    assert_eq!(switch.ready(Duration::from_secs(5)).await, Trading::Allowed);
    assert_eq!(switch.health().status, ComponentStatus::Operational);

    cluster.primary().stop_immediate().await.unwrap();
    wait_until("degraded", Duration::from_secs(5), || {
        switch.health().status == ComponentStatus::Degraded
    })
    .await;
    let health = switch.health();
    let details = health.details.clone().unwrap_or_default().to_lowercase();
    assert!(details.contains("connection refused"), "details: {details}");
    assert!(
        switch.check().is_ok(),
        "within the window the last state still serves"
    );

    wait_until("failed closed", Duration::from_secs(8), || {
        switch.is_halted()
    })
    .await;
    assert_eq!(switch.check(), Err(Halt::Stale));
    let readiness = registry.readiness();
    let json: serde_json::Value = serde_json::from_str(&readiness.to_json()).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["components"][0]["name"], "kill_switch");
    assert_eq!(json["components"][0]["status"], "failed");
    assert!(
        json["components"][0]["details"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{json}"
    );

    cluster.primary().start().await.unwrap();
    wait_until("operational again", Duration::from_secs(10), || {
        switch.health().status == ComponentStatus::Operational
    })
    .await;
    assert!(switch.check().is_ok());
}

#[tokio::test]
async fn a_handle_halts_before_its_first_load() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    cluster.primary().stop_immediate().await.unwrap();
    let store = PostgresKillSwitchStore::new(
        support::settings(&dsn)
            .with_retry_budget(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    let switch = KillSwitch::spawn(
        Arc::new(store),
        KillSwitchConfig::default().with_poll_interval(Duration::from_millis(100)),
    );
    assert_eq!(switch.check(), Err(Halt::NotLoaded));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(switch.check(), Err(Halt::NotLoaded));
    let health = switch.health();
    assert_eq!(health.status, ComponentStatus::Failed);
    assert!(health.details.unwrap().to_lowercase().contains("refused"));
    cluster.primary().start().await.unwrap();
    // The schema was never created: still halted, now saying why.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(switch.check(), Err(Halt::NotLoaded));
    assert!(switch
        .health()
        .details
        .unwrap()
        .contains("run killswitch migrations"));
}

#[tokio::test]
async fn verify_full_tls_connects_and_a_wrong_ca_is_refused() {
    let cluster = Cluster::builder()
        .tls(true)
        .start()
        .await
        .expect("tls cluster");
    let db = cluster.create_database().await.unwrap();
    let ca = cluster.ca_cert_path().expect("ca").to_path_buf();
    let env: HashMap<String, String> = [
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN".to_string(),
            cluster.primary().dsn(&db),
        ),
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE".to_string(),
            "verify-full".to_string(),
        ),
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE".to_string(),
            ca.display().to_string(),
        ),
    ]
    .into();
    let store = PostgresKillSwitchStore::from_lookup(|k| env.get(k).cloned()).expect("store");
    assert_eq!(store.pool().settings().tls().mode, TlsMode::VerifyFull);
    store.migrate().await.expect("migrate over TLS");
    store
        .engage(&Audit::new("ops", "over tls"))
        .await
        .expect("engage over TLS");
    let encrypted: bool = store
        .pool()
        .run("test.ssl", |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
        .await
        .unwrap();
    assert!(encrypted, "the session is encrypted");

    let other = tempfile::tempdir().unwrap();
    let wrong = generate_ca_file(other.path(), "wrong-ca").unwrap();
    let store = PostgresKillSwitchStore::from_lookup(|k| match k {
        "TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE" => Some(wrong.display().to_string()),
        _ => env.get(k).cloned(),
    })
    .expect("store");
    let start = Instant::now();
    let err = store.load().await.expect_err("wrong CA must be refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("unknownissuer"),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a certificate error is not retried"
    );
}
