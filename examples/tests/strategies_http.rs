//! Halting new strategy activations through the admin API, on real PostgreSQL, as
//! the runbook says it: `POST /admin/strategies/disable-new` with an operator's
//! token halts them (and this process's hot path answers no at once); enabling them
//! again is a supervisor's, with a ticket (422 without) and the `ETag` of
//! `GET /admin/strategies`; while `strategies.enable-new` requires approval the
//! supervisor's request answers 202 and waits for a second supervisor. Enabling is
//! decided against the halt it locks: a disable held open in another transaction
//! makes it wait and then refuse, naming that change; a replay answers its original
//! only while it is the halt's latest change.

mod support;

use failover_core::postgres::tokio_postgres::{self, Client, NoTls};
use reqwest::Method;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tradepulse_testkit::{shared_primary, Held};

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

/// A session of its own, as a DBA's psql or another service would hold one.
async fn session(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn events(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM symbol_mode_events", &[])
        .await
        .unwrap()
        .get(0)
}

/// An operator's `disable-new`, made by another session in a transaction left open
/// (as another admin process would make it).
const DISABLE_BY_DAVE: &str = "SELECT * FROM symbol_mode_apply(gen_random_uuid(), \
     'NewStrategiesHalt', NULL, NULL, TRUE, FALSE, 'second incident', 'ops:dave', NULL, \
     'operator')";

/// A supervisor's `enable-new` with `If-Match: etag`: status, headers, body.
async fn enable(api: &Api, etag: String, body: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    api.request(
        Method::POST,
        ENABLE,
        Some(body),
        SUPERVISOR,
        &[("if-match", etag)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_new_strategies_waits_for_a_held_disable_then_refuses_naming_it() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = Arc::new(start_all(&dsn, Duration::from_secs(300)).await);
    let observer = session(&dsn).await;
    let (status, body) = s
        .api
        .post(OPERATOR, DISABLE, r#"{"reason":"runaway strategies"}"#)
        .await;
    assert_eq!(status, 200, "{body}");

    // The supervisor decides on Alice's halt; Dave's halt commits while the
    // enable waits on the row.
    let seen = s.api.etag(STRATEGIES).await;
    let before = events(&observer).await;
    let api = s.clone();
    let (status, _, body) = Held::begin(&dsn, DISABLE_BY_DAVE)
        .await
        .race(async move { enable(&api.api, seen, r#"{"reason":"fixed","ticket":"INC-7"}"#).await })
        .await;
    assert_refused(
        &(status, body),
        412,
        "precondition_failed",
        "NewStrategiesHalt on by ops:dave",
    );
    let halted = shown(&s.api).await;
    assert_eq!(
        halted["new_strategies_disabled"], true,
        "still halted: {halted}"
    );
    assert_eq!(halted["updated_by"], "ops:dave", "{halted}");
    assert_eq!(halted["reason"], "second incident", "{halted}");
    assert_eq!(
        events(&observer).await,
        before + 1,
        "one event more: Dave's"
    );
    eventually(
        "the hot path still answers no",
        Duration::from_secs(5),
        async || shown(&s.api).await["hot_path"]["may_activate_strategy"] == false,
    )
    .await;

    // Breaking the glass skips a second supervisor, never the precondition: with
    // four eyes required, a break-glass enable racing another held disable is
    // refused the same way.
    let (status, body) = s
        .api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["strategies.enable-new"],"reason":"four eyes"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = s.api.etag(STRATEGIES).await;
    let before = events(&observer).await;
    let api = s.clone();
    let (status, _, body) = Held::begin(&dsn, DISABLE_BY_DAVE)
        .await
        .race(async move {
            enable(
                &api.api,
                seen,
                r#"{"reason":"fixed","ticket":"INC-8","break_glass":true}"#,
            )
            .await
        })
        .await;
    assert_refused(
        &(status, body),
        412,
        "precondition_failed",
        "NewStrategiesHalt on by ops:dave",
    );
    assert_eq!(shown(&s.api).await["new_strategies_disabled"], true);
    assert_eq!(
        events(&observer).await,
        before + 1,
        "one event more: Dave's"
    );

    // Decided again on Dave's halt, a break-glass enable goes through.
    let seen = s.api.etag(STRATEGIES).await;
    let (status, _, body) = enable(
        &s.api,
        seen,
        r#"{"reason":"fixed","ticket":"INC-8","break_glass":true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["break_glass"], true, "{body}");
    assert_eq!(shown(&s.api).await["new_strategies_disabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_strategies_command_answers_the_original_only_while_it_is_in_force() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let observer = session(&dsn).await;
    let id = uuid::Uuid::new_v4();
    let disable = format!(r#"{{"reason":"runaway strategies","request_id":"{id}"}}"#);
    let send = |token: &'static str| {
        let (api, disable) = (&s.api, disable.clone());
        async move {
            api.request(Method::POST, DISABLE, Some(&disable), token, &[])
                .await
        }
    };

    let (status, _, first) = send(OPERATOR).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"], false, "{first}");
    // A change of another control does not supersede the halt.
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"CANCEL_ONLY","reason":"widen spreads"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let written = events(&observer).await;
    // While the halt is the latest change of the flag, the replay answers it.
    let (status, headers, again) = send(OPERATOR).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again["position"], first["position"], "{again}");
    let (status, _, body) = send(SUPERVISOR).await;
    assert_refused(&(status, body), 409, "request_reused", "ops:alice");
    assert_eq!(events(&observer).await, written, "nothing written");

    // A supervisor enables them again; the replayed disable is no longer in force.
    let enable_id = uuid::Uuid::new_v4();
    let enable_body =
        format!(r#"{{"reason":"fixed","ticket":"INC-7","request_id":"{enable_id}"}}"#);
    let seen = s.api.etag(STRATEGIES).await;
    let (status, _, enabled) = enable(&s.api, seen.clone(), &enable_body).await;
    assert_eq!(status, 200, "{enabled}");
    let written = events(&observer).await;
    let (status, headers, body) = send(OPERATOR).await;
    assert_refused(
        &(status, body),
        409,
        "superseded",
        "NewStrategiesHalt off by ops:bob",
    );
    assert!(headers.get("idempotent-replayed").is_none());
    let now = shown(&s.api).await;
    assert_eq!(
        now["new_strategies_disabled"], false,
        "not reported halted: {now}"
    );
    assert_eq!(events(&observer).await, written, "nothing written");

    // And the other way: after a later disable, a replayed enable enables nothing.
    let (status, body) = s.api.post(OPERATOR, DISABLE, r#"{"reason":"again"}"#).await;
    assert_eq!(status, 200, "{body}");
    let written = events(&observer).await;
    let (status, headers, body) = enable(&s.api, seen, &enable_body).await;
    assert_refused(
        &(status, body),
        409,
        "superseded",
        "NewStrategiesHalt on by ops:alice",
    );
    assert!(headers.get("idempotent-replayed").is_none());
    let now = shown(&s.api).await;
    assert_eq!(now["new_strategies_disabled"], true, "still halted: {now}");
    assert_eq!(events(&observer).await, written, "nothing written");
}
