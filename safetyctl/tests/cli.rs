//! `safetyctl` end to end: the built binary against a real PostgreSQL (testkit),
//! checked with the runbook's own SQL.

use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engage_is_seen_by_the_runbook_sql_and_disengage_without_ticket_exits_2() {
    let db = db().await;
    let o = safetyctl(
        &db.dsn,
        &[
            "kill-switch",
            "engage",
            "--reason",
            "runaway algo",
            "--actor",
            "ops:alice",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ENGAGED"),
        "{}",
        text(&o)
    );
    let row = db.runbook_row().await;
    assert_eq!(row[0].as_deref(), Some("t"), "{row:?}");
    assert_eq!(row[1].as_deref(), Some("runaway algo"));

    let o = safetyctl(&db.dsn, &["kill-switch", "disengage", "--reason", "fixed"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ticket"),
        "{}",
        text(&o)
    );
    let again = db.runbook_row().await;
    assert_eq!(again, row, "a refused disengage changed nothing");

    let o = safetyctl(&db.dsn, &["kill-switch", "engage"]);
    assert_eq!(o.status.code(), Some(2), "no --reason: {}", text(&o));

    let o = safetyctl(
        &db.dsn,
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "fixed",
            "--ticket",
            "INC-7",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let state: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(state["engaged"], false);
    assert_eq!(
        state["updated_by"], "postgres",
        "without --actor the actor is the database login: {state}"
    );
    assert_eq!(db.runbook_row().await[0].as_deref(), Some("f"));

    let o = safetyctl(&db.dsn, &["kill-switch", "history", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 2, "{events}");
    assert_eq!(events[1]["actor"], "ops:alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_set_cancel_all_withdrawals_and_a_forbidden_transition() {
    let db = db().await;
    let o = safetyctl(
        &db.dsn,
        &["symbols", "add", "BTC-USD", "--reason", "listing"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(
        &db.dsn,
        &[
            "mode",
            "set",
            "BTC-USD",
            "HARD_HALT",
            "--reason",
            "split brain",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&db.dsn, &["mode", "show", "BTC-USD", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["effective"], "HARD_HALT", "{shown}");
    let o = safetyctl(
        &db.dsn,
        &[
            "mode", "set", "BTC-USD", "NORMAL", "--reason", "resume", "--ticket", "INC-1",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "HARD_HALT resumes through CANCEL_ONLY: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("CANCEL_ONLY"),
        "{}",
        text(&o)
    );
    let o = safetyctl(
        &db.dsn,
        &["mode", "set", "BTC-USD", "BANANA", "--reason", "x"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = safetyctl(
        &db.dsn,
        &["cancel-all", "BTC-USD", "--reason", "flatten", "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let command: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(command["symbol"], "BTC-USD");
    let rows = db
        .cluster
        .primary()
        .query(&db.db, "SELECT count(*) FROM symbol_mode_events")
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some("3"),
        "RegisterSymbol + SetSymbolMode + CancelAll audited"
    );
    let o = safetyctl(
        &db.dsn,
        &["withdrawals", "halt", "--reason", "wallet anomaly"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&db.dsn, &["withdrawals", "lift", "--reason", "fixed"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = safetyctl(&db.dsn, &["global-mode", "show", "--json"]);
    let venue: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(venue["withdrawals_halted"], true, "{venue}");
    let o = safetyctl(
        &db.dsn,
        &[
            "global-mode",
            "set",
            "SOFT_HALT",
            "--reason",
            "unknown scope",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&db.dsn, &["lease", "show", "btc-book"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("free"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_holds_every_event_once_and_its_printed_sha256_matches_the_file() {
    let db = db().await;
    for args in [
        &["symbols", "add", "ETH-USD", "--reason", "listing"][..],
        &["kill-switch", "engage", "--reason", "a"],
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "b",
            "--ticket",
            "INC-1",
        ],
        &["mode", "set", "ETH-USD", "CANCEL_ONLY", "--reason", "c"],
        &["cancel-all", "ETH-USD", "--reason", "d, with \"quotes\""],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let fencer =
        fencing::PostgresLeaseFencer::from_lookup(|k| k.ends_with("__DSN").then(|| db.dsn.clone()))
            .unwrap();
    fencing::LeaseFencer::acquire(&fencer, "btc-book", "engine-a", Duration::from_secs(30))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    for format in ["jsonl", "csv"] {
        let out = dir.path().join(format!("audit.{format}"));
        let o = export(&db.dsn, format, &out, &["--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(
            summary["sha256"].as_str().unwrap(),
            safetyctl::evidence::sha256_hex(&bytes)
        );
        assert_eq!(summary["events"], 6, "{summary}");
        let content = String::from_utf8(bytes).unwrap();
        if format == "jsonl" {
            // A header, one line per log entry (the event under `entry`), then the
            // tree head.
            let events: Vec<serde_json::Value> = content
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter_map(|e| e.get("entry").cloned())
                .collect();
            let keys: std::collections::HashSet<(String, u64)> = events
                .iter()
                .map(|e| {
                    (
                        e["control"].as_str().unwrap().to_owned(),
                        e["position"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(keys.len(), 6, "every event once: {content}");
            for control in ["kill_switch", "symbol_mode", "lease"] {
                assert!(
                    events.iter().any(|e| e["control"] == control),
                    "{control} missing: {content}"
                );
            }
        } else {
            assert_eq!(content.lines().count(), 7, "header + 6 rows: {content}");
            assert!(content.contains("\"d, with \"\"quotes\"\"\""), "{content}");
        }
    }
    // Text mode prints the checksum beside the file name; --since in the future exports nothing.
    let out = dir.path().join("later.jsonl");
    let o = export(&db.dsn, "jsonl", &out, &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        printed.contains(&safetyctl::evidence::sha256_hex(b"")),
        "{printed}"
    );
    assert!(printed.contains("(0 events"), "{printed}");
}

#[test]
fn an_unreachable_server_exits_3_within_the_retry_budget() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let start = Instant::now();
    let o = safetyctl(&dsn, &["kill-switch", "engage", "--reason", "x"]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 1 s budget"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unavailable"),
        "{}",
        text(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_safetyctl"))
        .env_remove("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN")
        .args(["kill-switch", "show"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing DSN is bad input: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_refreshes_updated_at_without_a_version_bump_or_an_audit_row() {
    let db = db().await;
    let store = killswitch::PostgresKillSwitchStateStore::from_lookup(|k| {
        k.ends_with("__DSN").then(|| db.dsn.clone())
    })
    .unwrap();
    let before = killswitch::KillSwitchStore::load(&store).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = store.heartbeat().await.unwrap();
    let after = killswitch::KillSwitchStore::load(&store).await.unwrap();
    assert!(after.updated_at > before.updated_at);
    assert_eq!(after.updated_at, at);
    assert_eq!(
        (after.version, after.engaged),
        (before.version, before.engaged)
    );
    assert!(killswitch::KillSwitchStore::history(&store, 10)
        .await
        .unwrap()
        .is_empty());
    let age = db
        .cluster
        .primary()
        .query(
            &db.db,
            "SELECT extract(epoch FROM now() - updated_at) < 5 FROM kill_switch_state WHERE id = 1",
        )
        .await
        .unwrap();
    assert_eq!(
        age[0][0].as_deref(),
        Some("t"),
        "the runbook's freshness check passes"
    );
}

/// The rows of a CSV export whose first field is `control`.
fn rows_of<'a>(csv: &'a str, control: &str) -> Vec<&'a str> {
    csv.lines()
        .filter(|l| l.starts_with(&format!("{control},")))
        .collect()
}

/// The events export reads the audit log, so the four-eyes trail is in it: the
/// requirement, and the request a supervisor's disengage became, naming its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_carries_an_approval_requests_events() {
    let db = db().await;
    let people = alice_and_bob(&db).await;
    for args in [
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ][..],
        &["kill-switch", "engage", "--reason", "runaway algo"],
    ] {
        let o = safetyctl(&people.alice_dsn, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    let o = safetyctl(
        &people.bob_dsn,
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "feed fixed",
            "--ticket",
            "INC-7",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "pending: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let id = stderr
        .split("safetyctl approvals approve ")
        .nth(1)
        .and_then(|rest| rest.get(..36))
        .unwrap_or_else(|| panic!("no request id in {stderr}"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.csv");
    let o = export(&db.dsn, "csv", &out, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(
        summary["controls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "approvals"),
        "{summary}"
    );
    let approvals = rows_of(&csv, "approvals");
    let requested = approvals
        .iter()
        .find(|r| r.contains(",requested,"))
        .unwrap_or_else(|| panic!("no request in the CSV:\n{csv}"));
    assert!(
        requested.contains(id) && requested.contains(&people.bob),
        "the request names its id and its requester: {requested}"
    );
    assert!(
        requested.contains("feed fixed") && requested.contains("INC-7"),
        "{requested}"
    );
    assert!(
        approvals.len() >= 2,
        "the requirement and the request: {approvals:?}"
    );
    // One row per log entry: the approvals beside the kill switch's engage.
    let entries = db
        .cluster
        .primary()
        .query(&db.db, "SELECT count(*) FROM audit_log")
        .await
        .unwrap();
    assert_eq!(
        Some((csv.lines().count() - 1).to_string().as_str()),
        entries[0][0].as_deref(),
        "{csv}"
    );
    assert_eq!(rows_of(&csv, "kill_switch").len(), 1, "{csv}");
}

/// `--since` keeps the events at or after the time given, in both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_keeps_only_the_later_events() {
    let db = db().await;
    let o = safetyctl(&db.dsn, &["kill-switch", "engage", "--reason", "before"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let now = db
        .cluster
        .primary()
        .query(
            &db.db,
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .await
        .unwrap();
    let since = now[0][0].clone().unwrap();
    for args in [
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "after",
            "--ticket",
            "INC-2",
        ][..],
        &["symbols", "add", "ETH-USD", "--reason", "after"],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    for format in ["csv", "jsonl"] {
        let out = dir.path().join(format!("later.{format}"));
        let o = export(&db.dsn, format, &out, &["--since", &since, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["events"], 2, "{summary}");
        assert_eq!(
            summary["controls"],
            serde_json::json!(["kill_switch", "symbol_mode"]),
            "{summary}"
        );
        let content = std::fs::read_to_string(&out).unwrap();
        assert!(!content.contains("before"), "{content}");
        assert_eq!(content.matches("after").count(), 2, "{content}");
        if format == "jsonl" {
            for line in content.lines() {
                let e: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(e["at"].as_str().unwrap() >= since.as_str(), "{e}");
            }
        }
    }
}

/// A failed export exits non-zero and leaves nothing under the name, and no partial
/// file: when the --out directory is missing, and when the database refuses a read
/// halfway (a login that may read the log and the kill switch's events but not the
/// symbol modes'); a previous export under the name is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_csv_export_leaves_no_partial_file() {
    let db = db().await;
    for args in [
        &["kill-switch", "engage", "--reason", "a"][..],
        &["symbols", "add", "ETH-USD", "--reason", "listing"],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").join("audit.csv");
    let o = export(&db.dsn, "csv", &missing, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("give a writable --out path"), "{stderr}");
    assert!(!dir.path().join("missing").exists());

    let login = format!("reader_{}", db.db);
    session(&db.dsn)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN; \
             GRANT SELECT ON audit_log, audit_log_head, tradepulse_controls, kill_switch_events TO {login};"
        ))
        .await
        .unwrap();
    let out = dir.path().join("audit.csv");
    std::fs::write(&out, "the previous export\n").unwrap();
    let o = export(&as_login(&db.dsn, &login), "csv", &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("symbol_mode_events"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "the previous export\n"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["audit.csv"], "no partial file is left");
}

/// Controls in different databases: each database is exported once, with only the
/// controls configured for it (a kill switch event in the symbol modes' database is
/// not the configured kill switch's), the kill switch's database first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_reads_each_database_once_with_its_own_controls() {
    let (ks, modes) = (db().await, db().await);
    for (dsn, args) in [
        (
            &modes.dsn,
            &["symbols", "add", "ETH-USD", "--reason", "listing"][..],
        ),
        (
            &modes.dsn,
            &["kill-switch", "engage", "--reason", "not this one"],
        ),
        (
            &ks.dsn,
            &["kill-switch", "engage", "--reason", "the switch"],
        ),
    ] {
        let o = safetyctl(dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = command(&ks.dsn, &["audit", "export", "--format", "csv", "--json"])
        .env("TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN", &modes.dsn)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let csv = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[0].starts_with("kill_switch,") && rows[0].contains("the switch"),
        "{csv}"
    );
    assert!(
        rows[1].starts_with("symbol_mode,") && rows[1].contains("ETH-USD"),
        "{csv}"
    );
}
