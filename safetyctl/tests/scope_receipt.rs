//! `scope set --wait` at the size of a firm's engines: ten real engine processes (the
//! `receipt-follower` example in its scope mode, logged in as plain viewers), each
//! holding 100 leaf gates under `acme`. An operator's `scope set acme HALTED --wait`
//! reports 10/10 confirmed, and every follower's 100 gates answer HALTED at the
//! confirmed position; with one follower stopped, the next tightening names it and
//! exits 6 after the timeout; resumed, it confirms again. Real PostgreSQL.

use followers::{
    assert_all_confirmed, assert_only_the_stopped_one_is_named, follower_binary, run, Followers,
};
use killswitch::scope::{ScopePath, ScopeStore};
use killswitch::{Audit, Authority, PostgresScopeStore};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

mod followers;
mod support;
use support::{as_login, login};

const FOLLOWERS: usize = 10;
const LEAVES: usize = 100;
const LEAF_PREFIX: &str = "acme/eq/mm-1/acct-";

/// The position `scope set … --wait` confirmed: `scopes position <P>: …`.
fn confirmed_position(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("scopes position "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no receipt line in {out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_set_wait_counts_ten_engines_of_a_hundred_leaf_gates_and_names_a_stopped_one() {
    let binary = tokio::task::spawn_blocking(follower_binary).await.unwrap();
    let db = support::db().await;

    // The desk's tree, created through the store (one round trip a scope).
    let lookup = |k: &str| k.ends_with("__DSN").then(|| db.dsn.clone());
    let store = PostgresScopeStore::from_lookup(lookup).unwrap();
    let paths = ["acme", "acme/eq", "acme/eq/mm-1"]
        .map(str::to_owned)
        .into_iter()
        .chain((0..LEAVES).map(|i| format!("{LEAF_PREFIX}{i}")));
    for path in paths {
        store
            .create_scope(
                &ScopePath::parse(&path).unwrap(),
                &Audit::new("ops:registrar", "org chart").with_authority(Authority::Operator),
            )
            .await
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
    }

    // The engines log in as plain viewers: reading the controls is all they may do,
    // and reporting what they applied.
    let engine = login(&db, "engine", "tradepulse_viewer").await;
    let leaves = LEAVES.to_string();
    let mut followers = Followers::spawn(
        &binary,
        &as_login(&db.dsn, &engine),
        FOLLOWERS,
        &["--scope-leaves", LEAF_PREFIX, "--leaves", &leaves],
    );
    followers.ready().await;
    let every_gate = |mode: &str| format!("gates {mode}={LEAVES} at ");
    followers
        .each_says("every gate NORMAL", Duration::from_secs(10), |l| {
            l.starts_with(&every_gate("NORMAL"))
        })
        .await;
    let alice = as_login(&db.dsn, &login(&db, "alice", "tradepulse_operator").await);

    // The firm's acceptance: every engine confirms the desk's halt.
    let (o, took) = run(
        &alice,
        &[
            "scope",
            "set",
            "acme",
            "HALTED",
            "--reason",
            "receipt drill",
            "--wait",
        ],
    )
    .await;
    let out = assert_all_confirmed(&o, FOLLOWERS);
    assert!(!out.contains("aged out"), "{out}");
    println!(
        "scope set acme HALTED --wait, {FOLLOWERS} engines x {LEAVES} gates, command took {took:?}: {out}"
    );
    assert!(
        took < Duration::from_secs(5),
        "confirmed well within the timeout: {took:?}"
    );

    // Confirmed means obeyed: each engine's 100 leaf gates answer HALTED at the very
    // position the receipt confirmed (the handle reports only after re-deriving them).
    let position = confirmed_position(&out);
    let halted = format!("{}{position}", every_gate("HALTED"));
    followers
        .each_says("every gate HALTED", Duration::from_secs(2), |l| l == halted)
        .await;

    // A stopped engine cannot apply the next tightening: named, and exit 6 after the
    // timeout, while the nine others confirm.
    let stopped = followers.pid(3);
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    let (o, took) = run(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq",
            "HALTED",
            "--reason",
            "receipt drill",
            "--wait",
            "--timeout",
            "2s",
        ],
    )
    .await;
    kill(Pid::from_raw(stopped), Signal::SIGCONT).unwrap();
    assert_only_the_stopped_one_is_named(&o, took, FOLLOWERS, stopped);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("had not applied scopes position"),
        "{stderr}"
    );

    // Resumed, it catches up: the next change is confirmed by all ten again.
    let (o, took) = run(
        &alice,
        &[
            "scope",
            "set",
            "acme/eq/mm-1",
            "HALTED",
            "--reason",
            "receipt drill",
            "--wait",
        ],
    )
    .await;
    let out = assert_all_confirmed(&o, FOLLOWERS);
    println!("after SIGCONT, command took {took:?}: {out}");
    drop(followers);
}
