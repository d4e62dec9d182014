//! The CLI holds every caller to the database's roles: the login's authority is
//! decided inside the write, the actor is the login, a relaxation applies only to the
//! state it printed, a replay never reports a stop that is no longer in force, and a
//! mistyped symbol halts nothing. Real PostgreSQL; competing changes are held open
//! in another transaction.

mod support;

use std::time::Duration;
use support::*;
use tradepulse_testkit::Held;

async fn engaged(db: &Db) -> bool {
    db.runbook_row().await[0].as_deref() == Some("t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_login_tightens_and_is_refused_every_relaxation() {
    let db = db().await;
    let alice = login(&db, "alice", "tradepulse_operator").await;
    let alice_dsn = as_login(&db.dsn, &alice);

    let o = safetyctl(
        &alice_dsn,
        &["kill-switch", "engage", "--reason", "runaway algo"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(engaged(&db).await);
    let admin = session(&db.dsn).await;
    let row = admin
        .query_one(
            "SELECT actor, login, authority FROM kill_switch_events ORDER BY position DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), alice, "the actor is the login");
    assert_eq!(row.get::<_, String>(1), alice, "the event names the login");
    assert_eq!(row.get::<_, String>(2), "operator");

    let o = safetyctl(
        &alice_dsn,
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "resume",
            "--ticket",
            "INC-1",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("supervisor"),
        "{}",
        text(&o)
    );
    assert!(engaged(&db).await, "the refused disengage changed nothing");

    let o = safetyctl(
        &alice_dsn,
        &[
            "kill-switch",
            "engage",
            "--reason",
            "x",
            "--actor",
            "ops:someone-else",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("own name"),
        "{}",
        text(&o)
    );

    // psql as the same login: the apply function refuses with 42501 whatever actor
    // and ticket it passes, and the tables cannot be written directly.
    let psql = session(&alice_dsn).await;
    let err = psql
        .batch_execute(&format!(
            "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'disengage', 'resume', '{alice}', 'INC-1')"
        ))
        .await
        .expect_err("an operator may not disengage");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    let err = psql
        .batch_execute(&format!(
            "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'disengage', 'resume', '{alice}', 'INC-1', 'supervisor')"
        ))
        .await
        .expect_err("claiming supervisor authority does not make it so");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    let err = psql
        .batch_execute("UPDATE kill_switch_state SET engaged = false WHERE id = 1")
        .await
        .expect_err("no direct writes");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    psql.batch_execute(&format!(
        "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'engage', 'from psql', '{alice}', NULL)"
    ))
    .await
    .expect("an operator engages from psql");
    assert!(engaged(&db).await);

    // The same login tightens symbol modes and CancelAll, and is refused relaxing them.
    for args in [
        &["symbols", "add", "BTC-USD", "--reason", "listing"][..],
        &["mode", "set", "BTC-USD", "SOFT_HALT", "--reason", "lag"],
        &["cancel-all", "BTC-USD", "--reason", "flatten"],
        &["global-mode", "set", "CANCEL_ONLY", "--reason", "widen"],
        &["withdrawals", "halt", "--reason", "custody"],
    ] {
        let o = safetyctl(&alice_dsn, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    for args in [
        &[
            "mode", "set", "BTC-USD", "NORMAL", "--reason", "r", "--ticket", "T-1",
        ][..],
        &[
            "global-mode",
            "set",
            "NORMAL",
            "--reason",
            "r",
            "--ticket",
            "T-1",
        ],
        &["withdrawals", "lift", "--reason", "r", "--ticket", "T-1"],
    ] {
        let o = safetyctl(&alice_dsn, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }

    // A supervisor login relaxes, printing what it relaxes.
    let bob = login(&db, "bob", "tradepulse_supervisor").await;
    let o = safetyctl(
        &as_login(&db.dsn, &bob),
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "resolved",
            "--ticket",
            "INC-2",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("about to relax: kill switch ENGAGED -> disengaged") && err.contains(&alice),
        "{}",
        text(&o)
    );
    assert!(!engaged(&db).await);

    // A login without any of the roles changes nothing.
    let admin_only = format!("carol_{}", db.db);
    admin
        .batch_execute(&format!("CREATE ROLE {admin_only} LOGIN"))
        .await
        .unwrap();
    let o = safetyctl(
        &as_login(&db.dsn, &admin_only),
        &["kill-switch", "engage", "--reason", "x"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `safetyctl` started while another actor's change holds the row: the command reads
/// the state, prints it, then waits on the row; the competitor commits; the command
/// must refuse (exit 2) naming the change, and nothing it meant to relax is relaxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxation_refuses_when_the_state_moved_after_it_was_printed() {
    let db = db().await;
    let o = safetyctl(
        &db.dsn,
        &["global-mode", "set", "SOFT_HALT", "--reason", "lag"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let held = Held::begin(
        &db.dsn,
        "SELECT * FROM symbol_mode_apply(gen_random_uuid(), 'SetGlobalMode', NULL, 'HARD_HALT', \
         NULL, FALSE, 'split brain', 'ops:dave', NULL)",
    )
    .await;
    let o = run_behind(
        held,
        &db.dsn,
        &[
            "global-mode",
            "set",
            "CANCEL_ONLY",
            "--reason",
            "resume",
            "--ticket",
            "INC-1",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("about to relax: global mode SOFT_HALT -> CANCEL_ONLY"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("SetGlobalMode SOFT_HALT -> HARD_HALT by ops:dave"),
        "{}",
        text(&o)
    );
    let venue = session(&db.dsn)
        .await
        .query_one(
            "SELECT global_mode FROM symbol_mode_state WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(venue.get::<_, String>(0), "HARD_HALT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_id_exits_2_once_superseded_or_reused() {
    let db = db().await;
    let id = uuid::Uuid::new_v4().to_string();
    let engage = [
        "kill-switch",
        "engage",
        "--reason",
        "runaway",
        "--request-id",
        &id,
        "--json",
    ];
    let o = safetyctl(&db.dsn, &engage);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&db.dsn, &engage);
    assert_eq!(
        o.status.code(),
        Some(0),
        "replayed while in force: {}",
        text(&o)
    );
    let o = safetyctl(
        &db.dsn,
        &[
            "kill-switch",
            "engage",
            "--reason",
            "runaway",
            "--request-id",
            &id,
            "--actor",
            "ops:mallory",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already used"),
        "{}",
        text(&o)
    );
    let o = safetyctl(
        &db.dsn,
        &[
            "kill-switch",
            "disengage",
            "--reason",
            "fixed",
            "--ticket",
            "INC-1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&db.dsn, &engage);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("superseded it: disengage by postgres"),
        "{}",
        text(&o)
    );
    assert_eq!(
        db.runbook_row().await[0].as_deref(),
        Some("f"),
        "the replay did not re-engage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_halts_nothing() {
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
            "CANCEL_ONLY",
            "--reason",
            "wind down",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for args in [
        &["mode", "set", "btc-usd", "HARD_HALT", "--reason", "typo"][..],
        &["symbols", "add", "btc-usd", "--reason", "typo"],
        &["cancel-all", "BTCUSD", "--reason", "typo"],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("BTC-USD"),
            "{}",
            text(&o)
        );
    }
    let o = safetyctl(
        &db.dsn,
        &["mode", "set", "NOPE-USD", "HARD_HALT", "--reason", "typo"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("symbols.txt");
    std::fs::write(&file, "# the venue's list\nETH-USD\n\nSOL-USD\nBTC-USD\n").unwrap();
    let o = safetyctl(
        &db.dsn,
        &[
            "symbols",
            "import",
            file.to_str().unwrap(),
            "--reason",
            "listing",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let added: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        added["registered"],
        serde_json::json!(["ETH-USD", "SOL-USD"])
    );
    assert_eq!(added["already_registered"], serde_json::json!(["BTC-USD"]));
    let o = safetyctl(&db.dsn, &["symbols", "list"]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let rows = db
        .cluster
        .primary()
        .query(
            &db.db,
            "SELECT symbol, mode FROM symbol_modes ORDER BY symbol",
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Some("BTC-USD".to_owned()),
            Some("CANCEL_ONLY".to_owned())
        ]],
        "only the registered symbol changed"
    );
}

/// A session left holding the kill switch row (a DBA's `SELECT … FOR UPDATE` in an
/// open transaction) does not send the operator looking for an outage: the engage
/// fails within a second, naming that session and the statement that ends it, and
/// succeeds once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_in_the_way_is_named_within_a_second() {
    let db = db().await;
    let held = Held::begin(
        &db.dsn,
        "SELECT * FROM kill_switch_state WHERE id = 1 FOR UPDATE",
    )
    .await;
    let pid = held.pid();
    let started = std::time::Instant::now();
    let o = safetyctl(&db.dsn, &["kill-switch", "engage", "--reason", "runaway"]);
    let took = started.elapsed();
    eprintln!("engage behind a held row lock failed after {took:?}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("locked by pid {pid}")),
        "{}",
        text(&o)
    );
    assert!(
        err.contains(&format!("SELECT pg_terminate_backend({pid})")),
        "{}",
        text(&o)
    );
    assert!(err.contains("nothing was written"), "{}", text(&o));
    assert!(
        !err.contains("unreachable") && !err.contains("outcome is unknown"),
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    held.rollback().await;
    let o = safetyctl(&db.dsn, &["kill-switch", "engage", "--reason", "runaway"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
