//! Four eyes through the admin API, with the tokens of two supervisors, on real
//! PostgreSQL: a required relaxation answers 202 with the pending request and
//! changes nothing; the requester's own approval is 403 `self_approval`; the other
//! supervisor's applies it; a tightening in between makes the approval 409
//! `stale_request`; the service's sweep closes an overdue request as expired and its
//! approval is 409 `expired`; break-glass applies at once,
//! is counted, and stays in the review until the other supervisor acknowledges it;
//! waiving the policy takes two supervisors too.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;
use tradepulse_testkit::shared_primary;

const DISENGAGE: &str = "/admin/kill-switch/disengage";
const KILL: &str = "/admin/kill-switch";

async fn engaged(api: &Api) -> bool {
    let (status, body) = api.get(KILL).await;
    assert_eq!(status, 200, "{body}");
    body["state"]["engaged"].as_bool().unwrap()
}

async fn engage(api: &Api) {
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/kill-switch/engage",
            r#"{"reason":"runaway algo"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A disengage by the first supervisor that must wait: 202 and the request id.
async fn pending_disengage(api: &Api) -> String {
    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            DISENGAGE,
            r#"{"reason":"feed fixed","ticket":"INC-7"}"#,
            KILL,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let request = &body["pending_approval"];
    assert_eq!(request["action"], "kill-switch.disengage", "{body}");
    assert!(request["expires_at"].is_string(), "{body}");
    assert!(
        request["what"].as_str().unwrap().contains("disengage"),
        "{body}"
    );
    request["id"].as_str().unwrap().to_owned()
}

fn approve(id: &str) -> String {
    format!("/admin/approvals/{id}/approve")
}

fn break_glass_count(scrape: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with("approvals_break_glass_total{action=\"kill-switch.disengage\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_through_the_admin_api() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let api = &s.api;

    // Requiring approval tightens: the operator may.
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["kill-switch.disengage"],"reason":"four eyes"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    engage(api).await;

    // Pending: nothing changed; listed.
    let id = pending_disengage(api).await;
    assert!(engaged(api).await);
    let (_, list) = api.get("/admin/approvals").await;
    assert!(list.to_string().contains(&id), "{list}");

    // The requester cannot approve; the other supervisor applies it.
    let refused = api.post(SUPERVISOR, &approve(&id), "{}").await;
    assert_refused(&refused, 403, "self_approval", "different person");
    assert!(engaged(api).await);
    let (status, body) = api.post(SUPERVISOR_2, &approve(&id), "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approved"]["requested_by"], "ops:bob", "{body}");
    assert!(!engaged(api).await, "the approval disengaged the switch");
    let (_, history) = api.get("/admin/kill-switch/history?limit=1").await;
    assert_eq!(
        history["events"][0]["approval_id"],
        Value::from(id.clone()),
        "{history}"
    );
    assert_eq!(history["events"][0]["actor"], "ops:bob", "{history}");
    let (_, trail) = api.get(&format!("/admin/approvals/{id}/events")).await;
    let actors: Vec<(String, String)> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actors,
        [
            ("approved".to_owned(), "ops:erin".to_owned()),
            ("requested".to_owned(), "ops:bob".to_owned())
        ]
    );

    // A tightening in between: applied at once, and the approval is stale.
    engage(api).await;
    let id = pending_disengage(api).await;
    engage(api).await;
    let stale = api.post(SUPERVISOR_2, &approve(&id), "{}").await;
    assert_refused(&stale, 409, "stale_request", "engage by ops:alice");
    assert!(engaged(api).await);

    // An operator may not approve; a rejected request cannot be approved.
    let id = pending_disengage(api).await;
    let (status, _) = api.post(OPERATOR, &approve(&id), "{}").await;
    assert_eq!(status, 403);
    let (status, body) = api
        .post(
            OPERATOR,
            &format!("/admin/approvals/{id}/reject"),
            r#"{"reason":"feed is not fixed"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let closed = api.post(SUPERVISOR_2, &approve(&id), "{}").await;
    assert_refused(&closed, 409, "not_pending", "rejected");

    // Expiry.
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["kill-switch.disengage"],"reason":"faster","expiry_secs":1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = pending_disengage(api).await;
    // Nobody lists or approves: the service's sweep closes it as expired, an entry
    // of the trail in the service's name.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !self::trail(api, &id)
        .await
        .contains(&("expired".to_owned(), "admin-service".to_owned()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overdue request was not closed by the sweep within 5 s: {:?}",
            self::trail(api, &id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = api.post(SUPERVISOR_2, &approve(&id), "{}").await;
    assert_refused(&expired, 409, "expired", "expired");
    assert!(engaged(api).await);

    // Break-glass: applied at once, counted, reviewed until the other acknowledges.
    let before = break_glass_count(&api.text("/metrics").await);
    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            DISENGAGE,
            r#"{"reason":"market open","ticket":"INC-8","break_glass":true}"#,
            KILL,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!engaged(api).await);
    assert!(break_glass_count(&api.text("/metrics").await) >= before + 1.0);
    let (_, review) = api.get("/admin/approvals/review").await;
    let glass = review["break_glass"].as_array().unwrap();
    assert_eq!(glass.len(), 1, "{review}");
    let id = glass[0]["id"].as_str().unwrap().to_owned();
    let ack = format!("/admin/approvals/{id}/acknowledge");
    let own = api.post(SUPERVISOR, &ack, "{}").await;
    assert_refused(&own, 403, "self_approval", "second supervisor");
    let (status, body) = api.post(SUPERVISOR_2, &ack, "{}").await;
    assert_eq!(status, 200, "{body}");
    let (_, review) = api.get("/admin/approvals/review").await;
    assert_eq!(
        review["break_glass"].as_array().unwrap().len(),
        0,
        "{review}"
    );

    // Waiving the policy while it is required takes two supervisors.
    let waive = r#"{"actions":["kill-switch.disengage"],"reason":"drill over","ticket":"CHG-1"}"#;
    let (status, body) = api.post(SUPERVISOR, "/admin/approvals/waive", waive).await;
    assert_eq!(status, 202, "{body}");
    let id = body["pending_approval"]["id"].as_str().unwrap().to_owned();
    let (status, body) = api.post(SUPERVISOR_2, &approve(&id), "{}").await;
    assert_eq!(status, 200, "{body}");
    let (_, policy) = api.get("/admin/approvals/policy").await;
    let entry = policy["policy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action"] == "kill-switch.disengage")
        .cloned()
        .unwrap();
    assert_eq!(entry["required"], false, "{policy}");
    engage(api).await;
    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            DISENGAGE,
            r#"{"reason":"feed fixed","ticket":"INC-9"}"#,
            KILL,
        )
        .await;
    assert_eq!(status, 200, "no longer required: applied at once: {body}");
}

/// The trail of a request, newest first: (event, actor).
async fn trail(api: &Api, id: &str) -> Vec<(String, String)> {
    let (status, body) = api.get(&format!("/admin/approvals/{id}/events")).await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Supervisor B's approval over HTTP races an engage by another actor held open in
/// its own transaction: the approval waits on the switch's row (seen waiting in
/// `pg_stat_activity`, not guessed with a sleep). When the engage commits first the
/// approval is 409 `stale_request` naming it, and nothing else changes; when the
/// engage rolls back the approval applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_approval_racing_a_held_change_waits_then_is_stale_or_applies() {
    use tradepulse_testkit::Held;
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    // Migrated first under the default (patient) settings: the harness's fast
    // settings bound each call under a second, which a migration beside another
    // test's on a loaded machine can exceed.
    let settings = failover_core::postgres::PgSettings::builder()
        .with_dsn(&dsn)
        .build()
        .unwrap();
    killswitch::PostgresKillSwitchStore::new(settings.clone())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    symbol_mode::PostgresSymbolModeStore::new(settings.clone())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    fencing::PostgresLeaseFencer::new(settings)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let api = std::sync::Arc::new(s.api);
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["kill-switch.disengage"],"reason":"four eyes"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    engage(&api).await;
    const ENGAGE_BY_DAVE: &str = "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'engage', \
                                  'second incident', 'ops:dave', NULL)";
    let approving = |id: String| {
        let api = api.clone();
        tokio::spawn(async move { api.post(SUPERVISOR_2, &approve(&id), "{}").await })
    };

    // The competing engage commits first: the approval is stale, nothing applied.
    let id = pending_disengage(&api).await;
    let (_, before) = api.get("/admin/kill-switch/history?limit=100").await;
    let held = Held::begin(&dsn, ENGAGE_BY_DAVE).await;
    let answer = approving(id.clone());
    held.until_waited_on(Duration::from_secs(10)).await;
    assert!(
        !answer.is_finished(),
        "the approval waits for the held engage"
    );
    held.commit().await;
    let stale = answer.await.unwrap();
    assert_refused(&stale, 409, "stale_request", "engage by ops:dave");
    assert!(engaged(&api).await);
    let (_, state) = api.get(KILL).await;
    assert_eq!(state["state"]["reason"], "second incident", "{state}");
    let (_, after) = api.get("/admin/kill-switch/history?limit=100").await;
    let (before, after) = (
        before["events"].as_array().unwrap(),
        after["events"].as_array().unwrap(),
    );
    assert_eq!(
        after.len(),
        before.len() + 1,
        "only dave's engage: {after:?}"
    );
    assert_eq!(after[0]["actor"], "ops:dave", "{after:?}");
    // The engage, a tightening, closed the request it beat (superseded, naming
    // itself); the approval added nothing.
    assert_eq!(
        trail(&api, &id).await,
        [
            ("superseded".to_owned(), "ops:dave".to_owned()),
            ("requested".to_owned(), "ops:bob".to_owned())
        ]
    );

    // The competing engage rolls back: the approval applies.
    let id = pending_disengage(&api).await;
    let held = Held::begin(&dsn, ENGAGE_BY_DAVE).await;
    let answer = approving(id.clone());
    held.until_waited_on(Duration::from_secs(10)).await;
    assert!(
        !answer.is_finished(),
        "the approval waits for the held engage"
    );
    held.rollback().await;
    let (status, body) = answer.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approved"]["requested_by"], "ops:bob", "{body}");
    assert!(!engaged(&api).await, "the approval disengaged the switch");
    let (_, history) = api.get("/admin/kill-switch/history?limit=1").await;
    assert_eq!(history["events"][0]["approval_id"], Value::from(id.clone()));
    assert_eq!(history["events"][0]["action"], "disengage", "{history}");
    assert_eq!(
        trail(&api, &id).await[0],
        ("approved".to_owned(), "ops:erin".to_owned())
    );
}
