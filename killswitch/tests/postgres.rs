//! Postgres-specific behaviour of the kill switch: the runbook's query, settings from
//! env, migrations, the append-only audit table, NOTIFY between processes, outage
//! health and TLS. Every test runs against a real throw-away server.

mod support;

use support::wait_until;

use failover_core::postgres::TlsMode;
use failover_core::{ComponentStatus, HealthRegistry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tradepulse_killswitch::{
    Audit, Halt, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore, Trading,
};
use tradepulse_testkit::{generate_ca_file, Cluster};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_health_at_once_then_fails_closed_and_recovers_without_restart() {
    let (cluster, db) = support::primary().await;
    // Migrating is setup: it gets the default retry budget; the store under test
    // keeps the tight one.
    PostgresKillSwitchStore::new(
        support::settings(&cluster.primary().dsn(&db))
            .build()
            .unwrap(),
    )
    .unwrap()
    .migrate()
    .await
    .unwrap();
    let store = PostgresKillSwitchStore::new(
        support::settings(&cluster.primary().dsn(&db))
            .with_retry_budget(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .unwrap();
    let switch = KillSwitch::spawn(
        Arc::new(store),
        KillSwitchConfig::default()
            .with_staleness_window(Duration::from_secs(3))
            .with_poll_interval(Duration::from_millis(200)),
    );
    let registry = HealthRegistry::new();
    registry.register("kill_switch", switch.health_source());
    assert!(switch.ready(Duration::from_secs(5)).await);
    assert_eq!(switch.trading(), Trading::Allowed);
    wait_until(
        "operational: reads and push work",
        Duration::from_secs(5),
        || switch.health().status == ComponentStatus::Operational,
    )
    .await;

    cluster.primary().stop_immediate().await.unwrap();
    // Health says `failed` at once (the store cannot be reached now)…
    wait_until("failed", Duration::from_secs(1), || {
        switch.health().status == ComponentStatus::Failed
    })
    .await;
    let health = switch.health();
    let details = health.details.clone().unwrap_or_default().to_lowercase();
    assert!(details.contains("connection refused"), "details: {details}");
    assert!(
        switch.check().is_ok(),
        "…while within the window the last state still serves"
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

/// Through the store API, with another actor's engage held open in its own
/// transaction while the call waits on the row: an operator's disengage is refused
/// (42501, `forbidden`) and a supervisor's disengage decided on the earlier state is
/// refused naming the engage in between. Nothing is relaxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disengage_is_decided_inside_the_write_against_the_change_that_beat_it() {
    use tradepulse_killswitch::{Authority, Error};
    use tradepulse_testkit::Held;
    let (cluster, db) = support::shared_primary().await;
    let dsn = cluster.primary().dsn(&db);
    let store = Arc::new(support::store(&dsn).await);
    let seen = store
        .engage(&Audit::new("ops:alice", "first"))
        .await
        .unwrap();
    let engage_by_dave = "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'engage', \
                          'second incident', 'ops:dave', NULL)";

    let s = store.clone();
    let position = seen.position;
    let refused = Held::begin(&dsn, engage_by_dave)
        .await
        .race(async move {
            s.disengage(
                &Audit::new("ops:bob", "resume")
                    .with_ticket("INC-1")
                    .expecting(position),
            )
            .await
        })
        .await
        .expect_err("the state moved while the disengage waited");
    match &refused {
        Error::Refused(failover_core::Refusal::PreconditionFailed { current, .. }) => {
            assert_eq!(
                (current.actor.as_str(), current.what.as_str()),
                ("ops:dave", "engage")
            );
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }

    let now = store.load().await.unwrap();
    let s = store.clone();
    let refused = Held::begin(&dsn, engage_by_dave)
        .await
        .race(async move {
            s.disengage(
                &Audit::new("ops:carol", "resume")
                    .with_ticket("INC-2")
                    .with_authority(Authority::Operator)
                    .expecting(now.position),
            )
            .await
        })
        .await
        .expect_err("an operator may not disengage");
    assert!(
        matches!(
            &refused,
            Error::Refused(failover_core::Refusal::Forbidden { .. })
        ),
        "{refused:?}"
    );
    let state = store.load().await.unwrap();
    assert!(state.engaged, "nothing was relaxed");
    let history = store.history(10).await.unwrap();
    assert_eq!(history.len(), 3, "three engages, no disengage");
    assert!(history
        .iter()
        .all(|e| e.action == tradepulse_killswitch::Action::Engage));
}
