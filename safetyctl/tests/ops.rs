//! `safetyctl migrate` and `safetyctl doctor` end to end: the built binary with one
//! shared DSN (`TRADEPULSE_POSTGRES__DSN`, no store prefix) against real PostgreSQL
//! (testkit), as an operator runs them.

use failover_core::postgres::tokio_postgres;
use std::process::{Command, Output};
use std::time::Duration;
use tradepulse_testkit::{shared_primary, Cluster};

mod support;
use support::text;

/// Runs the binary with only the shared variables set (every store prefix removed).
async fn safetyctl(dsn: &str, args: &[&str]) -> Output {
    safetyctl_env(dsn, args, &[]).await
}

async fn safetyctl_env(dsn: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_safetyctl"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TRADEPULSE_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    if !dsn.is_empty() {
        cmd.env("TRADEPULSE_POSTGRES__DSN", dsn);
    }
    cmd.env("TRADEPULSE_POSTGRES__RETRY_BUDGET", "2s")
        .env("TRADEPULSE_POSTGRES__CONNECT_TIMEOUT", "500ms")
        .envs(extra.iter().copied())
        .args(args);
    // The binary blocks; keep the runtime's workers free for the test's own sessions.
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_dsn_migrates_passes_doctor_engages_and_exports() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);

    // Migrations log no server NOTICE ("… does not exist, skipping") even at info.
    let o = safetyctl_env(&dsn, &["migrate"], &[("RUST_LOG", "info")]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    for control in ["kill_switch", "symbol_mode", "fencing"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(control) && l.contains("applied version(s)")),
            "{control}: {out}"
        );
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("NOTICE") && !stderr.contains("skipping"),
        "{stderr}"
    );
    let o = safetyctl(&dsn, &["migrate"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o).matches("up to date").count(),
        3,
        "a second run applies nothing: {}",
        text(&o)
    );

    let o = safetyctl(&dsn, &["doctor"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 12, "{out}");
    for line in &lines {
        assert!(line.starts_with("ok "), "{line}\n{out}");
    }
    let port = cluster.primary().port().to_string();
    for needle in [
        "kill_switch from TRADEPULSE_POSTGRES__DSN, symbol_mode from TRADEPULSE_POSTGRES__DSN, fencing from TRADEPULSE_POSTGRES__DSN",
        "answered",
        "TLS off",
        "is a primary",
        "migrations failover_core",
        "migrations kill_switch",
        "migrations symbol_mode",
        "migrations fencing",
        "all four present",
        "NOTIFY reached LISTEN",
        "engaged=false",
        "no standbys",
        "clock",
        "max_connections",
        "locks",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    assert!(out.contains(&format!(":{port} answered")), "{out}");

    let o = safetyctl(&dsn, &["doctor", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(checks.len() >= 12);
    for c in &checks {
        assert_eq!(c["ok"], true, "{c}");
        assert!(c["check"].is_string() && c["detail"].is_string() && c["fix"].is_string());
    }

    let o = safetyctl(
        &dsn,
        &["kill-switch", "engage", "--reason", "shared dsn drill"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&dsn, &["audit", "export", "--format", "jsonl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["entry"]["control"] == "kill_switch"
                && e["entry"]["action"] == "engage"
                && e["entry"]["reason"] == "shared dsn drill"
        }),
        "{out}"
    );
    // Every control is exported from the shared DSN alone.
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("sha256"),
        "{}",
        text(&o)
    );
    let o = safetyctl(&dsn, &["audit", "export", "--json", "--out", "/dev/null"]).await;
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        summary["controls"],
        serde_json::json!(["kill_switch", "scope", "symbol_mode", "lease"]),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_roles_prints_the_roles_sql_without_a_database() {
    let o = safetyctl("", &["migrate", "--print-roles"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), failover_core::postgres::ROLES_SQL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_on_an_unmigrated_database_fails_naming_safetyctl_migrate() {
    let (cluster, db) = shared_primary().await.unwrap();
    let o = safetyctl(&cluster.primary().dsn(&db), &["doctor"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    let migrations: Vec<&str> = out.lines().filter(|l| l.contains("migrations")).collect();
    assert_eq!(migrations.len(), 4, "{out}");
    for line in migrations {
        assert!(
            line.starts_with("FAIL") && line.contains("safetyctl migrate"),
            "{line}"
        );
    }
    assert!(
        out.lines().any(|l| l.starts_with("ok    connection")),
        "the server itself answered: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_against_the_replica_says_it_is_a_standby() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let o = safetyctl(&cluster.primary().dsn(&db), &["migrate"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let replica = cluster.replica().unwrap();
    let o = safetyctl(&replica.dsn(&db), &["doctor"]).await;
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok    server") && l.contains("is a standby")),
        "{}",
        text(&o)
    );
    assert!(
        out.contains(&format!(":{} answered", replica.port())),
        "{out}"
    );
    assert!(out.contains("skipped on a standby"), "{out}");
    assert!(out.contains("standby streaming"), "{out}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "a migrated, streaming standby passes: {}",
        text(&o)
    );
    // Through a DSN naming only the replica, a write says why it cannot be done and
    // reads answer from the standby only when asked to, saying so with the lag.
    let o = safetyctl(
        &cluster.primary().dsn(&db),
        &[
            "kill-switch",
            "engage",
            "--reason",
            "before the standby read",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let replica_dsn = replica.dsn(&db);
    let o = safetyctl(&replica_dsn, &["kill-switch", "engage", "--reason", "x"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no primary yet"),
        "{}",
        text(&o)
    );
    let o = safetyctl(&replica_dsn, &["kill-switch", "show"]).await;
    assert_eq!(
        o.status.code(),
        Some(3),
        "without --allow-standby: {}",
        text(&o)
    );
    let o = safetyctl(
        &replica_dsn,
        &["kill-switch", "show", "--allow-standby", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let state: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        state["engaged"], true,
        "the standby has the engage: {state}"
    );
    let label = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        label.contains("standby")
            && label.contains(&format!(":{}", replica.port()))
            && label.contains("replay lag"),
        "{label}"
    );
    for args in [
        &["kill-switch", "history", "--allow-standby"][..],
        &["global-mode", "show", "--allow-standby"],
        &["audit", "export", "--allow-standby"],
    ] {
        let o = safetyctl(&replica_dsn, args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }

    // The primary sees its standby.
    let o = safetyctl(&cluster.primary().dsn(&db), &["doctor"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("ok    replication") && l.contains("streaming")),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_session_holding_the_kill_switch_row_and_how_to_end_it() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let o = safetyctl(&dsn, &["migrate"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let config: tokio_postgres::Config = format!("{dsn} application_name=stuck-report")
        .parse()
        .unwrap();
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .unwrap()
    .unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .query(
            "SELECT * FROM kill_switch_state WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(3200)).await;

    let o = safetyctl(&dsn, &["doctor"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL  locks"))
        .unwrap_or_else(|| panic!("no locks FAIL line:\n{out}"));
    for needle in [
        format!("pid {pid}"),
        "stuck-report".to_owned(),
        "kill_switch_state".to_owned(),
        "idle in transaction".to_owned(),
        format!("SELECT pg_terminate_backend({pid});"),
    ] {
        assert!(line.contains(&needle), "{needle} missing: {line}");
    }
    // Every other check still passes: only the lock is wrong.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{out}"
    );

    client.batch_execute("ROLLBACK").await.unwrap();
    drop(client);
    let _ = driver.await;
    let o = safetyctl(&dsn, &["doctor"]).await;
    assert_eq!(o.status.code(), Some(0), "released: {}", text(&o));
}
