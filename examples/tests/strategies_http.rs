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

use serde_json::Value;
use std::time::Duration;
use support::authority::{Call, Control, Refused, Replay};
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

/// The flag as a control under test: its state and its event table.
async fn flag<'a>(api: &'a Api, dsn: &str) -> Control<'a> {
    Control::new(api, dsn, STRATEGIES, "symbol_mode_events").await
}

/// An operator's `disable-new`, made by another session in a transaction left open
/// (as another admin process would make it).
const DISABLE_BY_DAVE: &str = "SELECT * FROM symbol_mode_apply(gen_random_uuid(), \
     'NewStrategiesHalt', NULL, NULL, TRUE, FALSE, 'second incident', 'ops:dave', NULL, \
     'operator')";

/// Dave's halt racing the supervisor's enable: refused naming Dave's halt.
const REFUSED_NAMING_DAVE: Refused<'static> = Refused {
    status: 412,
    code: "precondition_failed",
    names: "NewStrategiesHalt on by ops:dave",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_new_strategies_waits_for_a_held_disable_then_refuses_naming_it() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let flag = flag(&s.api, &dsn).await;
    let (status, body) = s
        .api
        .post(OPERATOR, DISABLE, r#"{"reason":"runaway strategies"}"#)
        .await;
    assert_eq!(status, 200, "{body}");

    // The supervisor decides on Alice's halt; Dave's halt commits while the
    // enable waits on the row.
    flag.relaxation_racing_held_is_refused(
        DISABLE_BY_DAVE,
        Call::post(ENABLE, r#"{"reason":"fixed","ticket":"INC-7"}"#),
        REFUSED_NAMING_DAVE,
    )
    .await;
    let halted = shown(&s.api).await;
    assert_eq!(
        halted["new_strategies_disabled"], true,
        "still halted: {halted}"
    );
    assert_eq!(halted["updated_by"], "ops:dave", "{halted}");
    assert_eq!(halted["reason"], "second incident", "{halted}");
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
    flag.relaxation_racing_held_is_refused(
        DISABLE_BY_DAVE,
        Call::post(
            ENABLE,
            r#"{"reason":"fixed","ticket":"INC-8","break_glass":true}"#,
        ),
        REFUSED_NAMING_DAVE,
    )
    .await;
    assert_eq!(shown(&s.api).await["new_strategies_disabled"], true);

    // Decided again on Dave's halt, a break-glass enable goes through.
    let (status, body) = s
        .api
        .post_matching(
            SUPERVISOR,
            ENABLE,
            r#"{"reason":"fixed","ticket":"INC-8","break_glass":true}"#,
            STRATEGIES,
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
    let disabled = async || shown(&s.api).await["new_strategies_disabled"].clone();
    flag(&s.api, &dsn)
        .await
        .replay_answers_the_original_only_while_in_force(
            Replay {
                tighten: Call::post(DISABLE, r#"{"reason":"runaway strategies"}"#),
                // A change of another control does not supersede the halt.
                unrelated: Call::put(
                    "/admin/global-mode",
                    r#"{"mode":"CANCEL_ONLY","reason":"widen spreads"}"#,
                ),
                relax: Call::post(ENABLE, r#"{"reason":"fixed","ticket":"INC-7"}"#),
                relax_supersedes: "NewStrategiesHalt off by ops:bob",
                tighten_again: Call::post(DISABLE, r#"{"reason":"again"}"#),
                tighten_supersedes: "NewStrategiesHalt on by ops:alice",
            },
            async || assert_eq!(disabled().await, false, "not reported halted"),
            async || assert_eq!(disabled().await, true, "still halted"),
        )
        .await;
}
