//! `--wait` end to end: ten real engine processes (the `receipt-follower` example, one
//! kill switch handle each, logged in as a plain viewer) report what they applied;
//! `safetyctl kill-switch engage --wait` counts them, names a stopped one and lists a
//! dead one apart.

use followers::{
    assert_all_confirmed, assert_only_the_stopped_one_is_named, follower_binary, run, stdout,
    Followers,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

mod followers;
mod support;
use support::{as_login, login, text};

const FOLLOWERS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engage_wait_counts_every_live_engine_names_a_stopped_one_and_lists_a_dead_one_apart() {
    let binary = tokio::task::spawn_blocking(follower_binary).await.unwrap();
    let db = support::db().await;
    // The engines log in as plain viewers: reading the controls is all they may do,
    // and reporting what they applied.
    let engine = login(&db, "engine", "tradepulse_viewer").await;
    let mut followers = Followers::spawn(&binary, &as_login(&db.dsn, &engine), FOLLOWERS, &[]);
    followers.ready().await;

    // Every engine confirms.
    let (o, took) = run(
        &db.dsn,
        &[
            "--reason",
            "receipt drill",
            "kill-switch",
            "engage",
            "--wait",
        ],
    )
    .await;
    let out = assert_all_confirmed(&o, FOLLOWERS);
    assert!(!out.contains("aged out"), "{out}");
    println!("engage --wait, {FOLLOWERS} engines, command took {took:?}: {out}");
    assert!(
        took < Duration::from_secs(5),
        "confirmed well within the timeout: {took:?}"
    );

    // A stopped engine cannot apply the next change: named, and exit 6 after the timeout.
    let (o, _) = run(
        &db.dsn,
        &[
            "--reason",
            "drill",
            "--ticket",
            "T-1",
            "kill-switch",
            "disengage",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stopped = followers.pid(3);
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    let (o, took) = run(
        &db.dsn,
        &[
            "--reason",
            "receipt drill",
            "kill-switch",
            "engage",
            "--wait",
            "--timeout",
            "2s",
        ],
    )
    .await;
    kill(Pid::from_raw(stopped), Signal::SIGCONT).unwrap();
    assert_only_the_stopped_one_is_named(&o, took, FOLLOWERS, stopped);

    // A dead engine ages out: listed apart, not counted, and the others confirm.
    let dead = followers.pid(5);
    kill(Pid::from_raw(dead), Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (o, _) = run(
        &db.dsn,
        &[
            "--reason",
            "drill",
            "--ticket",
            "T-2",
            "kill-switch",
            "disengage",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (o, _) = run(
        &db.dsn,
        &[
            "--reason",
            "receipt drill",
            "--json",
            "kill-switch",
            "engage",
            "--wait",
            "--live-within",
            "2s",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let receipt: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("receipt").cloned())
        .unwrap_or_else(|| panic!("no receipt in {out}"));
    assert_eq!(receipt["complete"], true, "{receipt}");
    assert_eq!(
        receipt["confirmed"].as_array().unwrap().len(),
        FOLLOWERS - 1,
        "{receipt}"
    );
    assert_eq!(receipt["pending"].as_array().unwrap().len(), 0, "{receipt}");
    let aged_out = receipt["aged_out"].as_array().unwrap();
    assert_eq!(aged_out.len(), 1, "{receipt}");
    assert_eq!(aged_out[0]["pid"], dead, "{receipt}");
    assert_eq!(aged_out[0]["process_name"], "follower-5", "{receipt}");

    // The table is written through the function only: a viewer cannot forge a row.
    let engine_session = support::session(&as_login(&db.dsn, &engine)).await;
    let forged = engine_session
        .execute(
            "UPDATE handle_receipts SET applied_position = applied_position + 1000",
            &[],
        )
        .await;
    assert!(forged.is_err(), "a viewer updated handle_receipts directly");
    drop(followers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_set_wait_counts_a_symbol_modes_handle_built_with_receipts() {
    let db = support::db().await;
    let lookup = |k: &str| k.ends_with("__DSN").then(|| db.dsn.clone());
    let store = symbol_mode::PostgresSymbolModeStore::from_lookup(lookup).unwrap();
    let receipts = failover_core::Receipts::builder()
        .process_name("modes-engine")
        .postgres(store.pool().clone());
    let modes = symbol_mode::SymbolModes::spawn(
        std::sync::Arc::new(store),
        symbol_mode::SymbolModesConfig::default(),
    )
    .with_receipts(&receipts);
    assert!(modes.ready(Duration::from_secs(10)).await);
    let (o, _) = run(
        &db.dsn,
        &["symbols", "add", "BTC-USD", "--reason", "listing"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let (o, took) = run(
        &db.dsn,
        &[
            "--reason",
            "receipt drill",
            "--json",
            "mode",
            "set",
            "BTC-USD",
            "HARD_HALT",
            "--wait",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let receipt = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("receipt").cloned())
        .unwrap_or_else(|| panic!("no receipt in {out}"));
    let confirmed = receipt["confirmed"].as_array().unwrap();
    assert_eq!(confirmed.len(), 1, "{receipt}");
    assert_eq!(confirmed[0]["process_name"], "modes-engine", "{receipt}");
    assert_eq!(confirmed[0]["pid"], std::process::id(), "{receipt}");
    assert_eq!(
        modes.mode("BTC-USD"),
        symbol_mode::SymbolMode::HardHalt,
        "confirmed means applied"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}
