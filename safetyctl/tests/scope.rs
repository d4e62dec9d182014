//! `safetyctl scope`: a desk halted by an operator reaches a running leaf gate in
//! another process (its own pool, polling at 1 h) by push; a child's own mode never
//! relaxes what an ancestor holds; an unknown or mis-spelled path changes nothing and
//! exits 2; relaxing is a supervisor's, with a ticket, one step at a time from
//! HALTED; engaging the kill switch halts every scope and the runbook's row says
//! `t`; `--wait` counts the engines that applied the change. Real PostgreSQL.

mod support;

use killswitch::scope::{ScopeMode, ScopeModes, ScopeModesConfig};
use killswitch::{KillSwitch, KillSwitchConfig};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tradepulse_testkit::wait_until;

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_halted_by_the_cli_halts_its_leaves_by_push_and_only_its_leaves() {
    let db = db().await;
    let alice = as_login(&db.dsn, &login(&db, "alice", "tradepulse_operator").await);
    let bob = as_login(&db.dsn, &login(&db, "bob", "tradepulse_supervisor").await);
    for path in [
        "acme",
        "acme/eq",
        "acme/eq/mm-1",
        "acme/eq/mm-1/acct-42",
        "acme/eq/mm-2",
        "acme/fx",
    ] {
        let o = safetyctl(&alice, &["scope", "create", path, "--reason", "org chart"]);
        assert_eq!(o.status.code(), Some(0), "create {path}: {}", text(&o));
    }

    // The engine: its own pools, push only.
    let lookup = |k: &str| k.ends_with("__DSN").then(|| db.dsn.clone());
    let root_store = Arc::new(killswitch::PostgresKillSwitchStore::from_lookup(lookup).unwrap());
    let root = KillSwitch::spawn(
        root_store,
        KillSwitchConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    );
    let store = Arc::new(killswitch::PostgresScopeStore::from_lookup(lookup).unwrap());
    let receipts = failover_core::Receipts::postgres(store.pool().clone());
    let scopes = ScopeModes::spawn(
        store,
        root.clone(),
        ScopeModesConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    )
    .with_receipts(&receipts);
    assert!(root.ready(Duration::from_secs(10)).await);
    assert!(scopes.ready(Duration::from_secs(10)).await);
    wait_until("push connected", Duration::from_secs(10), || {
        scopes.health().status == failover_core::ComponentStatus::Operational
    })
    .await;
    let leaf = scopes.gate(&["acme/eq/mm-1/acct-42"]).unwrap();
    let fx = scopes.gate(&["acme/fx"]).unwrap();
    let mut told = leaf.subscribe();
    assert_eq!(leaf.mode(), ScopeMode::Normal);

    let o = safetyctl(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq",
            "HALTED",
            "--reason",
            "runaway desk",
            "--wait",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "an operator halts: {}", text(&o));
    assert!(
        text(&o).contains("1/1"),
        "the receipt counts this engine: {}",
        text(&o)
    );
    wait_until("the halt arrives by push", Duration::from_secs(2), || {
        leaf.mode() == ScopeMode::Halted
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(2),
        told.wait_for(|m| *m == ScopeMode::Halted),
    )
    .await
    .expect("subscribers are told to cancel")
    .unwrap();
    assert_eq!(fx.mode(), ScopeMode::Normal, "another desk keeps trading");

    // A child's own mode cannot relax what its ancestor holds.
    let o = safetyctl(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq/mm-1",
            "CANCEL_ONLY",
            "--reason",
            "narrow it",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&alice, &["scope", "show", "acme/eq/mm-1/acct-42", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = json(&o);
    assert_eq!(shown["effective"], "HALTED", "{shown}");
    assert_eq!(shown["decided_by"]["path"], "acme/eq", "{shown}");
    assert_eq!(leaf.mode(), ScopeMode::Halted);

    // Unknown, mis-spelled and non-canonical paths change nothing.
    let o = safetyctl(
        &alice,
        &["scope", "set", "nope/x", "HALTED", "--reason", "typo"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nope/x"), "{}", text(&o));
    let o = safetyctl(
        &alice,
        &["scope", "set", "acme/eq/mm_2", "HALTED", "--reason", "typo"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("acme/eq/mm-2"),
        "names the known path: {}",
        text(&o)
    );
    let o = safetyctl(
        &alice,
        &["scope", "set", "ACME/FX", "HALTED", "--reason", "caps"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(fx.mode(), ScopeMode::Normal);

    // Relaxing: not an operator's; a supervisor's with a ticket, HALTED first to
    // CANCEL_ONLY.
    let o = safetyctl(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq",
            "CANCEL_ONLY",
            "--reason",
            "fixed",
            "--ticket",
            "INC-1",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "an operator may not relax: {}",
        text(&o)
    );
    let o = safetyctl(
        &bob,
        &[
            "scope",
            "set",
            "acme/eq",
            "CANCEL_ONLY",
            "--reason",
            "fixed",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "no ticket: {}", text(&o));
    assert!(text(&o).contains("ticket"), "{}", text(&o));
    let o = safetyctl(
        &bob,
        &[
            "scope", "set", "acme/eq", "NORMAL", "--reason", "fixed", "--ticket", "INC-1",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "one step at a time: {}", text(&o));
    assert!(text(&o).contains("CANCEL_ONLY"), "{}", text(&o));
    assert_eq!(leaf.mode(), ScopeMode::Halted);
    let o = safetyctl(
        &bob,
        &[
            "scope",
            "set",
            "acme/eq",
            "CANCEL_ONLY",
            "--reason",
            "fixed",
            "--ticket",
            "INC-1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_until("the relaxation arrives", Duration::from_secs(2), || {
        leaf.mode() == ScopeMode::CancelOnly
    })
    .await;

    // The root: the kill switch halts every scope; its row says t.
    let o = safetyctl(
        &alice,
        &["kill-switch", "engage", "--reason", "firm-wide stop"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_until("the root halts every leaf", Duration::from_secs(2), || {
        leaf.mode() == ScopeMode::Halted && fx.mode() == ScopeMode::Halted
    })
    .await;
    assert_eq!(db.runbook_row().await[0].as_deref(), Some("t"));
    let o = safetyctl(&alice, &["scope", "tree", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let tree = json(&o);
    assert_eq!(tree["kill_switch_engaged"], true, "{tree}");
    let scopes_json = tree["scopes"].as_array().unwrap();
    assert_eq!(scopes_json.len(), 6, "{tree}");
    assert!(
        scopes_json.iter().all(|s| s["effective"] == "HALTED"),
        "{tree}"
    );
    let o = safetyctl(&alice, &["scope", "show", "acme/fx"]);
    assert!(text(&o).contains("the kill switch"), "{}", text(&o));

    // The history names who did what.
    let o = safetyctl(&alice, &["scope", "history", "acme/eq", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let events = json(&o);
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["fixed", "runaway desk", "org chart"], "{events}");

    // The audit export carries the scope events like every control's: the CSV
    // (events alone) and the whole log.
    let dir = tempfile::tempdir().unwrap();
    for format in ["csv", "jsonl"] {
        let out = dir.path().join(format!("audit.{format}"));
        let o = export(&alice, format, &out, &["--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let summary = json(&o);
        assert!(
            summary["controls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "scope"),
            "{summary}"
        );
        let content = std::fs::read_to_string(&out).unwrap();
        let halt = content
            .lines()
            .find(|l| l.contains("scope") && l.contains("runaway desk"))
            .unwrap_or_else(|| {
                panic!("the desk's halt is missing from the {format} export:\n{content}")
            });
        assert!(
            halt.contains("acme/eq") && halt.contains("HALTED"),
            "{halt}"
        );
    }
}

/// A supervisor's `scope set` relaxation racing a tightening held open in another
/// transaction waits for it, then refuses naming it (exit 2) and relaxes nothing; a
/// request sent again answers its change while it is in force and is refused as
/// superseded after a later change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_relaxation_racing_a_held_tightening_is_refused_and_a_stale_replay_too() {
    let db = db().await;
    let alice = as_login(&db.dsn, &login(&db, "alice", "tradepulse_operator").await);
    let bob = as_login(&db.dsn, &login(&db, "bob", "tradepulse_supervisor").await);
    for path in ["acme", "acme/eq"] {
        let o = safetyctl(&alice, &["scope", "create", path, "--reason", "org chart"]);
        assert_eq!(o.status.code(), Some(0), "create {path}: {}", text(&o));
    }
    let o = safetyctl(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq",
            "CANCEL_ONLY",
            "--reason",
            "desk stop",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Dave re-asserts the stop in a transaction left open; Bob's relaxation, made
    // against the state before it, must wait and then be refused.
    let stop_by_dave = "SELECT * FROM scope_apply(gen_random_uuid(), 'set_mode', 'acme/eq', \
                        'CANCEL_ONLY', 'second incident', 'ops:dave', NULL)";
    let mut relax = command(
        &bob,
        &[
            "scope", "set", "acme/eq", "NORMAL", "--reason", "resume", "--ticket", "CHG-1",
        ],
    );
    let o = tradepulse_testkit::Held::begin(&db.dsn, stop_by_dave)
        .await
        .race(async move {
            tokio::task::spawn_blocking(move || relax.output().unwrap())
                .await
                .unwrap()
        })
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("ops:dave"),
        "names the change: {}",
        text(&o)
    );
    let o = safetyctl(&alice, &["scope", "show", "acme/eq", "--json"]);
    let shown = json(&o);
    assert_eq!(
        shown["effective"], "CANCEL_ONLY",
        "nothing relaxed: {shown}"
    );
    assert_eq!(shown["decision"]["actor"], "ops:dave", "{shown}");

    // A replay answers its change while in force; after a later change it is refused.
    let id = uuid::Uuid::new_v4().to_string();
    let halt = [
        "scope",
        "set",
        "acme/eq",
        "HALTED",
        "--reason",
        "halt",
        "--request-id",
        &id,
    ];
    let o = safetyctl(&alice, &halt);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&alice, &halt);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the replay in force: {}",
        text(&o)
    );
    let o = safetyctl(
        &bob,
        &[
            "scope",
            "set",
            "acme/eq",
            "CANCEL_ONLY",
            "--reason",
            "fixed",
            "--ticket",
            "CHG-2",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = safetyctl(&alice, &halt);
    assert_eq!(o.status.code(), Some(2), "a stale replay: {}", text(&o));
    assert!(text(&o).contains("superseded"), "{}", text(&o));
    let o = safetyctl(&alice, &["scope", "show", "acme/eq", "--json"]);
    assert_eq!(
        json(&o)["effective"],
        "CANCEL_ONLY",
        "the replay halted nothing"
    );
}
