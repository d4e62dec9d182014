//! `safetyctl throttle`: a limit set by an operator reaches a running handle in
//! another process (its own pool, polling at 1 h) by push, which then admits the
//! burst and refuses the next order; clearing it is a relaxation (a supervisor and a
//! ticket); the audit trail holds every change with who made it. Real PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::*;
use symbol_mode::{SymbolModes, SymbolModesConfig, Throttle};
use tradepulse_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_set_by_the_cli_throttles_a_running_handle_and_clearing_needs_a_supervisor_and_a_ticket(
) {
    let db = db().await;
    let alice = login(&db, "alice", "tradepulse_operator").await;
    let alice_dsn = as_login(&db.dsn, &alice);
    let bob = login(&db, "bob", "tradepulse_supervisor").await;
    let bob_dsn = as_login(&db.dsn, &bob);
    let o = safetyctl(
        &alice_dsn,
        &["symbols", "add", "BTC-USD", "--reason", "listing"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

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
    for _ in 0..20 {
        assert_eq!(modes.admit("BTC-USD"), Ok(()), "no limit yet");
    }

    let o = safetyctl(
        &alice_dsn,
        &[
            "throttle",
            "set",
            "BTC-USD",
            "5/s",
            "--burst",
            "5",
            "--reason",
            "settlement lag",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "an operator may throttle: {}",
        text(&o)
    );
    assert!(text(&o).contains("5/s burst 5"), "{}", text(&o));
    let limit = Throttle::new(5, 5).unwrap();
    wait_until("the limit arrives by push", Duration::from_secs(2), || {
        modes.snapshot().throttle("BTC-USD") == Some(limit)
    })
    .await;
    for i in 0..5 {
        assert_eq!(modes.admit("BTC-USD"), Ok(()), "order {i} of the burst");
    }
    let refused = modes
        .admit("BTC-USD")
        .expect_err("the sixth order is throttled");
    assert!(
        refused.retry_after <= Duration::from_millis(200),
        "{refused:?}"
    );
    assert_eq!(
        modes.admit("ETH-USD"),
        Ok(()),
        "other symbols are not throttled"
    );

    let o = safetyctl(&alice_dsn, &["throttle", "show", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown[0]["limit"]["per_second"], 5, "{shown}");
    assert_eq!(shown[0]["updated_by"], alice.as_str(), "{shown}");

    // Clearing relaxes: an operator is refused, a supervisor needs a ticket.
    let o = safetyctl(
        &alice_dsn,
        &[
            "throttle", "clear", "BTC-USD", "--reason", "lag gone", "--ticket", "CHG-7",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("supervisor"), "{}", text(&o));
    let o = safetyctl(
        &bob_dsn,
        &["throttle", "clear", "BTC-USD", "--reason", "lag gone"],
    );
    assert_eq!(o.status.code(), Some(2), "no ticket: {}", text(&o));
    assert!(text(&o).contains("ticket"), "{}", text(&o));
    assert_eq!(
        modes.snapshot().throttle("BTC-USD"),
        Some(limit),
        "nothing changed"
    );
    let o = safetyctl(
        &bob_dsn,
        &[
            "throttle", "clear", "BTC-USD", "--reason", "lag gone", "--ticket", "CHG-7",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("about to relax: throttle of BTC-USD 5/s burst 5 -> none"),
        "{}",
        text(&o)
    );
    wait_until("the clear arrives by push", Duration::from_secs(2), || {
        modes.snapshot().throttle("BTC-USD").is_none()
    })
    .await;
    for _ in 0..50 {
        assert_eq!(modes.admit("BTC-USD"), Ok(()), "cleared");
    }
    assert_eq!(modes.throttle_refusals(), vec![("BTC-USD".to_owned(), 1)]);

    // The audit trail holds both changes, with who, which login and which authority.
    let admin = session(&db.dsn).await;
    let rows = admin
        .query(
            "SELECT actor, login, authority, to_rate, to_burst, ticket FROM symbol_mode_events \
             WHERE command = 'SetThrottle' ORDER BY position",
            &[],
        )
        .await
        .unwrap();
    // actor, login, authority, rate and burst after, ticket: as text, one line each.
    let trail: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {:?} {:?} {:?}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<i32>>(3),
                r.get::<_, Option<i32>>(4),
                r.get::<_, Option<String>>(5)
            )
        })
        .collect();
    assert_eq!(
        trail,
        vec![
            format!("{alice} {alice} operator Some(5) Some(5) None"),
            format!("{bob} {bob} supervisor None None Some(\"CHG-7\")"),
        ]
    );
}

/// `throttle clear` started while another actor's lowering of the same throttle is
/// held open in its transaction: the command prints the limit it read, waits on the
/// row, and when the competitor commits refuses (exit 2) naming that change; the
/// lowered limit stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_refuses_when_a_competing_change_moved_the_throttle_after_it_was_printed() {
    let db = db().await;
    for args in [
        &["symbols", "add", "BTC-USD", "--reason", "listing"][..],
        &[
            "throttle", "set", "BTC-USD", "5/s", "--burst", "5", "--reason", "lag",
        ][..],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let held = tradepulse_testkit::Held::begin(
        &db.dsn,
        "SELECT * FROM symbol_mode_apply(gen_random_uuid(), 'SetThrottle', 'BTC-USD', NULL, \
         NULL, FALSE, 'tighter', 'ops:dave', NULL, p_per_second => 2, p_burst => 5)",
    )
    .await;
    let o = run_behind(
        held,
        &db.dsn,
        &[
            "throttle", "clear", "BTC-USD", "--reason", "lag gone", "--ticket", "CHG-8",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("about to relax: throttle of BTC-USD 5/s burst 5 -> none"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("SetThrottle BTC-USD 5/s burst 5 -> 2/s burst 5 by ops:dave"),
        "{}",
        text(&o)
    );
    let row = session(&db.dsn)
        .await
        .query_one(
            "SELECT per_second FROM symbol_throttles WHERE symbol = 'BTC-USD'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<i32>>(0),
        Some(2),
        "the lowered limit stays"
    );
}
