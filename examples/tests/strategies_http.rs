//! Halting new strategy activations through the admin API, on real PostgreSQL, as
//! the runbook says it: `POST /admin/strategies/disable-new` with an operator's
//! token halts them (and this process's hot path answers no at once); enabling them
//! again is a supervisor's, with a ticket (422 without) and the `ETag` of
//! `GET /admin/strategies`; while `strategies.enable-new` requires approval the
//! supervisor's request answers 202 and waits for a second supervisor.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;
use tradepulse_testkit::shared_primary;

const STRATEGIES: &str = "/admin/strategies";
const DISABLE: &str = "/admin/strategies/disable-new";
const ENABLE: &str = "/admin/strategies/enable-new";

async fn shown(api: &Api) -> Value {
    let (status, body) = api.get(STRATEGIES).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_halts_new_strategies_and_a_supervisor_with_a_ticket_enables_them() {
    let (cluster, db) = shared_primary().await.unwrap();
    let s = start_all(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let api = &s.api;

    let before = shown(api).await;
    assert_eq!(before["new_strategies_disabled"], false, "{before}");
    assert_eq!(before["updated_by"], Value::Null, "{before}");

    // The runbook's call, verbatim, with an operator's token.
    let (status, body) = api
        .post(OPERATOR, DISABLE, r#"{"reason":"runaway strategies"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"]["command"], "NewStrategiesHalt", "{body}");
    assert_eq!(body["command"]["on"], true, "{body}");
    assert_eq!(body["actor"], "ops:alice", "{body}");
    let halted = shown(api).await;
    assert_eq!(halted["new_strategies_disabled"], true, "{halted}");
    assert_eq!(halted["updated_by"], "ops:alice", "{halted}");
    assert_eq!(halted["reason"], "runaway strategies", "{halted}");
    assert_eq!(halted["position"], body["position"], "{halted}");
    eventually(
        "the hot path answers no",
        Duration::from_secs(5),
        async || shown(api).await["hot_path"]["may_activate_strategy"] == false,
    )
    .await;
    let metrics = api.text("/metrics").await;
    assert!(
        metrics.contains("symbol_mode_new_strategies_disabled 1"),
        "{metrics}"
    );

    // A viewer may not halt; an operator may not enable them again.
    let viewer = api.post(VIEWER, DISABLE, r#"{"reason":"x"}"#).await;
    assert_eq!(viewer.0, 403, "{}", viewer.1);
    let operator = api
        .post_matching(
            OPERATOR,
            ENABLE,
            r#"{"reason":"fixed","ticket":"INC-7"}"#,
            STRATEGIES,
        )
        .await;
    assert_refused(&operator, 403, "forbidden", "supervisor");
    // A supervisor without a ticket: 422, naming it.
    let no_ticket = api
        .post_matching(SUPERVISOR, ENABLE, r#"{"reason":"fixed"}"#, STRATEGIES)
        .await;
    assert_refused(&no_ticket, 422, "ticket_required", "ticket");
    // Without If-Match: 428.
    let (status, body) = api
        .post(SUPERVISOR, ENABLE, r#"{"reason":"fixed","ticket":"INC-7"}"#)
        .await;
    assert_eq!(status, 428, "{body}");
    assert_eq!(shown(api).await["new_strategies_disabled"], true);

    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            ENABLE,
            r#"{"reason":"fixed","ticket":"INC-7"}"#,
            STRATEGIES,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"]["on"], false, "{body}");
    assert_eq!(body["ticket"], "INC-7", "{body}");
    let enabled = shown(api).await;
    assert_eq!(enabled["new_strategies_disabled"], false, "{enabled}");
    assert_eq!(enabled["updated_by"], "ops:bob", "{enabled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_new_strategies_waits_for_a_second_supervisor_when_required() {
    let (cluster, db) = shared_primary().await.unwrap();
    let s = start_all(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let api = &s.api;
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["strategies.enable-new"],"reason":"four eyes"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(OPERATOR, DISABLE, r#"{"reason":"runaway strategies"}"#)
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            ENABLE,
            r#"{"reason":"fixed","ticket":"INC-7"}"#,
            STRATEGIES,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let request = &body["pending_approval"];
    assert_eq!(request["action"], "strategies.enable-new", "{body}");
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(shown(api).await["new_strategies_disabled"], true, "waits");

    let (status, body) = api
        .post(
            SUPERVISOR_2,
            &format!("/admin/approvals/{id}/approve"),
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shown(api).await["new_strategies_disabled"], false);
    let (_, history) = api.get("/admin/symbol-modes/history?limit=1").await;
    let event = &history["events"][0];
    assert_eq!(
        event["command"]["command"], "NewStrategiesHalt",
        "{history}"
    );
    assert_eq!(event["approval_id"], Value::from(id), "{history}");
    assert_eq!(event["break_glass"], false, "{history}");
    assert_eq!(event["actor"], "ops:bob", "{history}");
}
