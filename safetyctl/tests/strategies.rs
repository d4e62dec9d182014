//! `safetyctl strategies`: an operator's `disable-new` halts new strategy
//! activations — `show` says so, and a running handle in another process (its own
//! pool, polling at 1 h) answers no by push; `enable-new` without a ticket is
//! refused with exit 2 naming it, by an operator with exit 2 (a supervisor's), and
//! a supervisor with a ticket enables them again. A supervisor's `enable-new`
//! started while another operator's `disable-new` is held open in its own
//! transaction waits on the row and, once that commits, exits 2 naming it: the
//! write decides, not the position the command read first. Real PostgreSQL, real
//! logins.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::*;
use symbol_mode::{SymbolModes, SymbolModesConfig};
use tradepulse_testkit::{wait_until, Held};

/// An operator's `disable-new`, with its reason.
const DISABLE_NEW: &[&str] = &[
    "strategies",
    "disable-new",
    "--reason",
    "runaway strategies",
];

/// A supervisor's `enable-new`, with its reason and ticket.
const ENABLE_NEW: &[&str] = &[
    "strategies",
    "enable-new",
    "--reason",
    "fixed",
    "--ticket",
    "INC-7",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_new_by_an_operator_shows_disabled_and_enabling_needs_a_ticket_and_a_supervisor() {
    let db = db().await;
    let AliceAndBob {
        alice,
        alice_dsn,
        bob_dsn,
        ..
    } = alice_and_bob(&db).await;

    // The engine: its own pool, push only.
    let lookup = |k: &str| k.ends_with("__DSN").then(|| db.dsn.clone());
    let store = Arc::new(symbol_mode::PostgresSymbolModeStore::from_lookup(lookup).unwrap());
    let modes = SymbolModes::spawn(
        store,
        SymbolModesConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    );
    assert!(modes.ready(Duration::from_secs(10)).await);
    wait_until("push connected", Duration::from_secs(10), || {
        modes.health().status == failover_core::ComponentStatus::Operational
    })
    .await;
    assert!(modes.may_activate_strategy());

    let o = safetyctl(&alice_dsn, &["strategies", "show"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("new strategy activations enabled"),
        "{}",
        text(&o)
    );

    let o = safetyctl(&alice_dsn, DISABLE_NEW);
    assert_eq!(
        o.status.code(),
        Some(0),
        "an operator may halt: {}",
        text(&o)
    );
    assert!(text(&o).contains("DISABLED"), "{}", text(&o));
    wait_until(
        "the halt reaches the engine by push",
        Duration::from_secs(2),
        || !modes.may_activate_strategy(),
    )
    .await;

    let o = safetyctl(&alice_dsn, &["strategies", "show"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        shown.contains("new strategy activations DISABLED"),
        "{shown}"
    );
    assert!(shown.contains(&alice), "names who: {shown}");
    assert!(shown.contains("runaway strategies"), "names why: {shown}");
    let o = safetyctl(&alice_dsn, &["strategies", "show", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["new_strategies_disabled"], true, "{json}");
    assert_eq!(json["updated_by"], alice.as_str(), "{json}");

    // Without a ticket: exit 2, naming the ticket, nothing changed.
    let o = safetyctl(&bob_dsn, &["strategies", "enable-new", "--reason", "fixed"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--ticket"), "{}", text(&o));
    // An operator's login may not enable them again, ticket or not.
    let o = safetyctl(&alice_dsn, ENABLE_NEW);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("supervisor"), "{}", text(&o));
    assert!(!modes.may_activate_strategy());

    let o = safetyctl(&bob_dsn, ENABLE_NEW);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("about to relax"),
        "{}",
        text(&o)
    );
    wait_until("enabled again by push", Duration::from_secs(2), || {
        modes.may_activate_strategy()
    })
    .await;
    let o = safetyctl(&alice_dsn, &["strategies", "show"]);
    assert!(
        text(&o).contains("new strategy activations enabled"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("INC-7"), "{}", text(&o));

    // Both changes are entries of the tamper-evident log: the export verifies.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let file = file.to_str().unwrap();
    let o = safetyctl(&alice_dsn, &["audit", "export", "--out", file, "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let exported = std::fs::read_to_string(file).unwrap();
    assert_eq!(
        exported.matches("NewStrategiesHalt").count(),
        2,
        "the disable and the enable: {exported}"
    );
    let o = safetyctl(&alice_dsn, &["audit", "verify", file, "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("ok: "), "{}", text(&o));
}

/// Another operator's `disable-new` (a tightening with a reason of its own), made by a
/// session of its own, as another admin process or a DBA's psql would make it.
const DISABLE_BY_DAVE: &str = "SELECT * FROM symbol_mode_apply(gen_random_uuid(), \
     'NewStrategiesHalt', NULL, NULL, TRUE, FALSE, 'second incident', 'ops:dave', NULL, \
     'operator')";

async fn events(db: &Db) -> i64 {
    session(&db.dsn)
        .await
        .query_one("SELECT count(*) FROM symbol_mode_events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_new_waits_for_a_held_disable_then_exits_2_naming_it() {
    let db = db().await;
    let AliceAndBob {
        alice,
        alice_dsn,
        bob_dsn,
        ..
    } = alice_and_bob(&db).await;
    let o = safetyctl(&alice_dsn, DISABLE_NEW);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Dave's halt is held open; Bob's enable reads Alice's halt, prints it, and
    // waits on the row.
    let before = events(&db).await;
    let held = Held::begin(&db.dsn, DISABLE_BY_DAVE).await;
    let o = run_behind(held, &bob_dsn, ENABLE_NEW).await;

    assert_eq!(o.status.code(), Some(2), "refused: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("about to relax: new strategy activations DISABLED -> enabled"),
        "it decided on the halt it read: {}",
        text(&o)
    );
    assert!(err.contains(&alice), "the halt it read: {}", text(&o));
    assert!(
        err.contains("the state moved: NewStrategiesHalt on by ops:dave"),
        "names the change in between: {}",
        text(&o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("enabled again"),
        "{}",
        text(&o)
    );

    let o = safetyctl(&alice_dsn, &["strategies", "show"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        shown.contains("new strategy activations DISABLED"),
        "still disabled: {shown}"
    );
    assert!(shown.contains("ops:dave"), "Dave's halt in force: {shown}");
    assert!(shown.contains("second incident"), "{shown}");
    let o = safetyctl(&alice_dsn, &["strategies", "show", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["new_strategies_disabled"], true, "{json}");
    assert_eq!(json["updated_by"], "ops:dave", "{json}");
    assert_eq!(events(&db).await, before + 1, "one event more: Dave's");
}
