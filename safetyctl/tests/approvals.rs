//! Four eyes before a safety control is relaxed, through the CLI against real
//! PostgreSQL: a required relaxation waits (exit 4) and changes nothing, a second
//! supervisor (another login and another actor) applies it inside the approving
//! transaction, the requester cannot approve it, a request made against a state
//! that moved or that expired applies nothing, a tightening never waits and closes
//! what was pending, break-glass applies at once and waits for acknowledgement, and
//! waiving the policy itself takes two people. Competing approvals are held open in
//! another transaction.

mod support;

use failover_core::approvals::{ApprovalStore, PostgresApprovals};
use failover_core::{Audit, Authority};
use killswitch::KillSwitchStore;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;
use tradepulse_testkit::Held;

async fn engaged(db: &Db) -> bool {
    db.runbook_row().await[0].as_deref() == Some("t")
}

struct People {
    /// An operator: tightens and requires approvals.
    op: String,
    /// Two supervisors.
    a: String,
    b: String,
}

async fn people(db: &Db) -> People {
    People {
        op: as_login(&db.dsn, &login(db, "op", "tradepulse_operator").await),
        a: as_login(&db.dsn, &login(db, "supa", "tradepulse_supervisor").await),
        b: as_login(&db.dsn, &login(db, "supb", "tradepulse_supervisor").await),
    }
}

fn ok(dsn: &str, args: &[&str]) -> String {
    let o = safetyctl(dsn, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(dsn: &str, args: &[&str], mentions: &str) -> String {
    let o = safetyctl(dsn, args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    assert!(
        stderr.contains(mentions),
        "{args:?} should mention {mentions:?}: {}",
        text(&o)
    );
    stderr
}

/// Runs a relaxation that must wait: exit 4, and the request id it names.
fn pending(dsn: &str, args: &[&str]) -> String {
    let o = safetyctl(dsn, args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(4), "{args:?}: {}", text(&o));
    assert!(
        stderr.contains("pending approval: request ")
            && stderr.contains("(approve with: safetyctl approvals approve "),
        "{}",
        text(&o)
    );
    let id = stderr
        .split("safetyctl approvals approve ")
        .nth(1)
        .and_then(|rest| rest.get(..36))
        .unwrap_or_else(|| panic!("no request id in {stderr}"));
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
    id.to_owned()
}

fn disengage(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "kill-switch",
        "disengage",
        "--reason",
        "feed fixed",
        "--ticket",
        "INC-7",
    ];
    args.extend_from_slice(extra);
    args
}

const ENGAGE: &[&str] = &["kill-switch", "engage", "--reason", "runaway algo"];

async fn request_status(db: &Db, id: &str) -> (String, Option<String>) {
    let row = session(&db.dsn)
        .await
        .query_one(
            "SELECT status, decision FROM approval_requests WHERE id = $1::TEXT::UUID",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn login_of(dsn: &str) -> String {
    dsn.split("user=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_disengage_waits_for_a_second_supervisor_who_applies_it() {
    let db = db().await;
    let p = people(&db).await;
    // Requiring approval tightens: an operator may.
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);

    let id = pending(&p.a, &disengage(&[]));
    assert!(engaged(&db).await, "a pending relaxation changes nothing");
    let listed = ok(&p.b, &["approvals", "list", "--json"]);
    assert!(listed.contains(&id), "{listed}");

    refused(&p.a, &["approvals", "approve", &id], "a different person");
    refused(
        &p.a,
        &["approvals", "approve", &id, "--actor", "someone-else"],
        "own name",
    );
    assert!(engaged(&db).await, "self-approval changed nothing");

    let out = ok(&p.b, &["approvals", "approve", &id]);
    assert!(out.contains("approved and applied"), "{out}");
    assert!(!engaged(&db).await, "the approval disengaged the switch");

    // The trail: the request by A, the approval by B, the disengage in A's name
    // written by B's login and naming the request.
    let admin = session(&db.dsn).await;
    let (a, b) = (login_of(&p.a), login_of(&p.b));
    let events: Vec<(String, String, String)> = admin
        .query(
            "SELECT event, actor, login FROM approval_events WHERE request_id = $1::TEXT::UUID ORDER BY position",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        events,
        vec![
            ("requested".into(), a.clone(), a.clone()),
            ("approved".into(), b.clone(), b.clone()),
        ]
    );
    let row = admin
        .query_one(
            "SELECT action, actor, login, approval_id::TEXT, break_glass FROM kill_switch_events ORDER BY position DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "disengage");
    assert_eq!(row.get::<_, String>(1), a, "the command is the requester's");
    assert_eq!(
        row.get::<_, String>(2),
        b,
        "written by the approver's login"
    );
    assert_eq!(row.get::<_, String>(3), id);
    assert!(!row.get::<_, bool>(4));
    assert_eq!(request_status(&db, &id).await.0, "applied");
    refused(&p.b, &["approvals", "approve", &id], "is applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightening_never_waits_closes_the_pending_request_and_its_approval_is_stale() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));

    // The operator's engage applies at once, whatever is pending.
    let started = Instant::now();
    ok(
        &p.op,
        &["kill-switch", "engage", "--reason", "second runaway"],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, decision) = request_status(&db, &id).await;
    assert_eq!(status, "superseded");
    assert!(
        decision.as_deref().unwrap_or("").contains("engage by"),
        "{decision:?}"
    );

    let stderr = refused(&p.b, &["approvals", "approve", &id], "the state moved");
    assert!(
        stderr.contains("engage by"),
        "names the change in between: {stderr}"
    );
    assert!(engaged(&db).await, "the stale request applied nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_against_a_state_that_moved_closes_the_request_as_stale() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));
    // A change that bypasses the gate's bookkeeping (written by hand by a DBA, as
    // a restore would): the approval still checks the position it was asked against.
    let admin = session(&db.dsn).await;
    admin
        .batch_execute(
            "UPDATE kill_switch_state SET version = version + 1, position = position + 1, reason = 'restored' WHERE id = 1",
        )
        .await
        .unwrap();
    admin
        .batch_execute(
            "INSERT INTO kill_switch_events (version, position, request_id, action, engaged, reason, actor, ticket, at, login, authority) \
             SELECT version, position, gen_random_uuid(), 'engage', TRUE, 'restored', 'dba', NULL, now(), 'postgres', 'operator' FROM kill_switch_state",
        )
        .await
        .unwrap();
    let stderr = refused(&p.b, &["approvals", "approve", &id], "the state moved");
    assert!(stderr.contains("engage by dba"), "{stderr}");
    assert_eq!(request_status(&db, &id).await.0, "stale");
    assert!(engaged(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_cannot_be_approved() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--expiry",
            "1s",
            "--reason",
            "four eyes, fast",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    refused(&p.b, &["approvals", "approve", &id], "expired");
    assert!(engaged(&db).await);
    assert_eq!(request_status(&db, &id).await.0, "expired");
    let expired: i64 = session(&db.dsn)
        .await
        .query_one(
            "SELECT count(*) FROM approval_events WHERE request_id = $1::TEXT::UUID AND event = 'expired'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 1, "the expiry is audited when observed");
}

/// Waits until the server's clock passes the request's expiry (polling the database,
/// bounded).
async fn until_past_expiry(db: &Db, id: &str) {
    let s = session(&db.dsn).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let past: bool = s
            .query_one(
                "SELECT expires_at <= now() FROM approval_requests WHERE id = $1::TEXT::UUID",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        if past {
            return;
        }
        assert!(Instant::now() < deadline, "request {id} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_is_closed_by_list_as_an_entry_of_the_audit_log_and_cannot_be_approved() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--expiry",
            "1s",
            "--reason",
            "four eyes, fast",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));
    until_past_expiry(&db, &id).await;
    // Nobody has touched it since: the table still says pending.
    assert_eq!(request_status(&db, &id).await.0, "pending");

    // `list` closes it first, and says so.
    let out = ok(&p.op, &["approvals", "list"]);
    assert!(out.contains(&format!("closed now: {id}  expired")), "{out}");
    assert!(out.contains("no pending approval requests"), "{out}");
    let (status, decision) = request_status(&db, &id).await;
    assert_eq!(status, "expired");
    assert!(
        decision.as_deref().unwrap_or("").starts_with("expired at "),
        "{decision:?}"
    );
    let all = ok(&p.op, &["approvals", "list", "--all"]);
    let line = all
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {all}"));
    assert!(line.contains("  expired "), "{line}");

    // The expiry is an event of the approvals trail and an entry of the audit log,
    // recorded as closed by the operator who listed.
    let in_log = |actor: String| {
        let dsn = db.dsn.clone();
        let id = id.clone();
        async move {
            session(&dsn)
                .await
                .query_one(
                    "SELECT count(*) FROM audit_log l JOIN approval_events e                      ON l.control = 'approvals' AND l.position = e.position                      WHERE e.request_id = $1::TEXT::UUID AND e.event = 'expired' AND e.actor = $2",
                    &[&id, &actor],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(in_log(login_of(&p.op)).await, 1);

    // It cannot be approved: refused as expired (exit 2), nothing applied, nothing
    // more written.
    refused(&p.b, &["approvals", "approve", &id], "expired");
    assert!(engaged(&db).await);
    let expired: i64 = session(&db.dsn)
        .await
        .query_one(
            "SELECT count(*) FROM approval_events WHERE request_id = $1::TEXT::UUID AND event = 'expired'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 1, "one expiry, one event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_sweep_closes_what_is_due_and_leaves_what_is_open() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--expiry",
            "1s",
            "--reason",
            "four eyes, fast",
        ],
    );
    ok(&p.op, ENGAGE);
    let due = pending(&p.a, &disengage(&[]));
    until_past_expiry(&db, &due).await;
    // A request made now stays open for 15 minutes.
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "mode.relax",
            "--expiry",
            "15m",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, &["symbols", "add", "BTC-USD", "--reason", "listing"]);
    ok(
        &p.op,
        &["mode", "set", "BTC-USD", "SOFT_HALT", "--reason", "halt"],
    );
    let open = pending(
        &p.a,
        &[
            "mode",
            "set",
            "BTC-USD",
            "CANCEL_ONLY",
            "--reason",
            "resume",
            "--ticket",
            "T-4",
        ],
    );

    // What a service runs on a schedule.
    let approvals = PostgresApprovals::new(
        killswitch::PostgresKillSwitchStore::from_lookup(|k: &str| {
            k.ends_with("__DSN").then(|| db.dsn.clone())
        })
        .unwrap()
        .pool()
        .clone(),
    );
    let closed = approvals.expire_due("orders-gateway").await.unwrap();
    let ids: Vec<String> = closed.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, [due]);
    assert_eq!(closed[0].status, "expired");
    assert_eq!(closed[0].decided_by.as_deref(), Some("orders-gateway"));
    assert_eq!(request_status(&db, &open).await.0, "pending");
    // Nothing more is due: a second sweep closes nothing.
    assert!(approvals
        .expire_due("orders-gateway")
        .await
        .unwrap()
        .is_empty());
    let err = approvals.expire_due(" ").await.unwrap_err();
    assert!(err.to_string().contains("needs an actor"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_applies_at_once_and_stays_in_review_until_a_second_supervisor_acknowledges() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);
    ok(&p.a, &disengage(&["--break-glass"]));
    assert!(!engaged(&db).await, "break-glass applies at once");
    let admin = session(&db.dsn).await;
    let row = admin
        .query_one(
            "SELECT break_glass, request_id::TEXT FROM kill_switch_events ORDER BY position DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "marked in the audit event");
    let id: String = row.get(1);

    let review = ok(&p.b, &["approvals", "review", "--json"]);
    assert!(review.contains(&id), "{review}");
    refused(
        &p.a,
        &["approvals", "acknowledge", &id],
        "second supervisor",
    );
    assert!(ok(&p.b, &["approvals", "review"]).contains(&id));
    ok(&p.b, &["approvals", "acknowledge", &id]);
    let review = ok(&p.b, &["approvals", "review"]);
    assert!(!review.contains(&id), "{review}");
    let events: Vec<String> = admin
        .query(
            "SELECT event FROM approval_events WHERE request_id = $1::TEXT::UUID ORDER BY position",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["break_glass", "acknowledged"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiving_a_required_action_needs_a_second_person() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    refused(
        &p.op,
        &[
            "approvals",
            "waive",
            "kill-switch.disengage",
            "--reason",
            "x",
            "--ticket",
            "CHG-1",
        ],
        "supervisor",
    );
    let waive = [
        "approvals",
        "waive",
        "kill-switch.disengage",
        "--reason",
        "drill over",
        "--ticket",
        "CHG-1",
    ];
    let id = pending(&p.a, &waive);
    let policy = ok(&p.a, &["approvals", "policy"]);
    assert!(
        policy
            .lines()
            .any(|l| l.starts_with("kill-switch.disengage") && l.contains("REQUIRED")),
        "{policy}"
    );
    refused(&p.a, &["approvals", "approve", &id], "a different person");
    ok(&p.b, &["approvals", "approve", &id]);
    let policy = ok(&p.a, &["approvals", "policy"]);
    assert!(
        policy
            .lines()
            .any(|l| l.starts_with("kill-switch.disengage") && l.contains("not required")),
        "{policy}"
    );
    // No longer required: a supervisor's disengage applies at once.
    ok(&p.op, ENGAGE);
    ok(&p.a, &disengage(&[]));
    assert!(!engaged(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_cannot_be_approved() {
    let db = db().await;
    let p = people(&db).await;
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));
    ok(
        &p.op,
        &["approvals", "reject", &id, "--reason", "feed is not fixed"],
    );
    refused(&p.b, &["approvals", "approve", &id], "is rejected");
    assert!(engaged(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_approving_at_once_apply_exactly_once() {
    let db = db().await;
    let p = people(&db).await;
    let c = as_login(&db.dsn, &login(&db, "supc", "tradepulse_supervisor").await);
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ],
    );
    ok(&p.op, ENGAGE);
    let id = pending(&p.a, &disengage(&[]));

    // B's approval applied, its transaction held open; C's approval waits on the
    // switch's row and then finds the request applied.
    let b = login_of(&p.b);
    let held = Held::begin(
        &p.b,
        &format!("SELECT o_status FROM tradepulse_approve('{id}', '{b}', 'supervisor')"),
    )
    .await;
    let competing = command(&c, &["approvals", "approve", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    held.until_waited_on(Duration::from_secs(10)).await;
    held.commit().await;
    let o = competing.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is applied"),
        "{}",
        text(&o)
    );
    assert!(!engaged(&db).await);
    let disengages: i64 = session(&db.dsn)
        .await
        .query_one(
            "SELECT count(*) FROM kill_switch_events WHERE action = 'disengage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(disengages, 1, "exactly one approval applied");
    let approved: i64 = session(&db.dsn)
        .await
        .query_one(
            "SELECT count(*) FROM approval_events WHERE event = 'approved'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(approved, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbol_mode_relaxations_wait_too_and_their_approval_applies_the_exact_command() {
    let db = db().await;
    let p = people(&db).await;
    ok(&p.op, &["symbols", "add", "BTC-USD", "--reason", "listing"]);
    ok(
        &p.op,
        &[
            "approvals",
            "require",
            "global-mode.relax",
            "mode.relax",
            "withdrawals.lift",
            "throttle.relax",
            "--reason",
            "four eyes",
        ],
    );
    ok(
        &p.op,
        &["global-mode", "set", "HARD_HALT", "--reason", "venue down"],
    );
    ok(
        &p.op,
        &["mode", "set", "BTC-USD", "SOFT_HALT", "--reason", "x"],
    );
    ok(&p.op, &["withdrawals", "halt", "--reason", "x"]);
    ok(
        &p.op,
        &["throttle", "set", "BTC-USD", "5/s", "--reason", "x"],
    );
    let relax = |args: &[&'static str]| {
        let mut v = args.to_vec();
        v.extend_from_slice(&["--reason", "recovered", "--ticket", "INC-9"]);
        v
    };
    let global = pending(&p.a, &relax(&["global-mode", "set", "CANCEL_ONLY"]));
    let mode = pending(&p.a, &relax(&["mode", "set", "BTC-USD", "CANCEL_ONLY"]));
    let lift = pending(&p.a, &relax(&["withdrawals", "lift"]));
    let throttle = pending(&p.a, &relax(&["throttle", "set", "BTC-USD", "50/s"]));
    let shown = ok(&p.a, &["global-mode", "show"]);
    assert!(
        shown.contains("HARD_HALT") && shown.contains("HALTED"),
        "{shown}"
    );

    for id in [&global, &mode, &lift, &throttle] {
        ok(&p.b, &["approvals", "approve", id]);
    }
    let shown = ok(&p.a, &["global-mode", "show"]);
    assert!(
        shown.contains("global mode CANCEL_ONLY") && shown.contains("allowed"),
        "{shown}"
    );
    let shown = ok(&p.a, &["mode", "show", "BTC-USD"]);
    assert!(shown.contains("mode CANCEL_ONLY"), "{shown}");
    let shown = ok(&p.a, &["throttle", "show", "BTC-USD"]);
    assert!(shown.contains("50/s"), "{shown}");
    let approved: i64 = session(&db.dsn)
        .await
        .query_one(
            "SELECT count(*) FROM symbol_mode_events WHERE approval_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(approved, 4);
}

/// Latency of the two round trips four eyes adds, on loopback: the request (a
/// disengage that creates it) and the approval that applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_approve_latency_on_loopback() {
    let db = db().await;
    let p = people(&db).await;
    let store = |dsn: String| {
        killswitch::PostgresKillSwitchStore::from_lookup(move |k: &str| {
            k.ends_with("__DSN").then(|| dsn.clone())
        })
        .unwrap()
    };
    let (op, a, b) = (store(p.op.clone()), store(p.a.clone()), store(p.b.clone()));
    let approvals = PostgresApprovals::new(b.pool().clone());
    let (op_login, a_login, b_login) = (login_of(&p.op), login_of(&p.a), login_of(&p.b));
    PostgresApprovals::new(op.pool().clone())
        .require(
            &["kill-switch.disengage".to_owned()],
            None,
            &Audit::new(&op_login, "four eyes"),
        )
        .await
        .unwrap();
    let mut request = Vec::new();
    let mut approve = Vec::new();
    for i in 0..200 {
        op.engage(&Audit::new(&op_login, "bench")).await.unwrap();
        let audit = Audit::new(&a_login, "bench")
            .with_ticket(format!("B-{i}"))
            .with_authority(Authority::Supervisor);
        let t = Instant::now();
        let id = match a.disengage(&audit).await {
            Err(killswitch::Error::PendingApproval(p)) => p.id,
            other => panic!("expected a pending request, got {other:?}"),
        };
        request.push(t.elapsed());
        let t = Instant::now();
        approvals
            .approve(id, &b_login, Authority::Supervisor)
            .await
            .unwrap();
        approve.push(t.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q).ceil() as usize).saturating_sub(1)]
    };
    println!(
        "four eyes on loopback, 200 rounds: request p50 {:?} p99 {:?}; approve-and-apply p50 {:?} p99 {:?}",
        pct(&mut request, 0.5),
        pct(&mut request, 0.99),
        pct(&mut approve, 0.5),
        pct(&mut approve, 0.99)
    );
    assert!(!engaged(&db).await);
}
