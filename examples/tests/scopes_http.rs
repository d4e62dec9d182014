//! Scoped controls through the admin API on real PostgreSQL: an operator creates the
//! firm's tree and halts a desk; a path is written with its slashes; an unknown or
//! mis-spelled path answers 404 naming the known one; relaxing is a supervisor's,
//! with `If-Match` and a ticket, one step at a time from HALTED; four eyes hold a
//! required relaxation at 202; engaging the kill switch halts every scope.

mod support;

use std::time::Duration;
use support::*;
use tradepulse_testkit::shared_primary;

const DESK: &str = "/admin/scope-modes/acme/eq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_halts_a_desk_and_a_supervisor_relaxes_it_one_step_at_a_time() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let api = &s.api;

    // The tree: created by an operator, parents first.
    for path in ["acme", "acme/eq", "acme/eq/mm-1", "acme/fx"] {
        let (status, body) = api
            .put(
                OPERATOR,
                &format!("/admin/scopes/{path}"),
                r#"{"reason":"org chart"}"#,
            )
            .await;
        assert_eq!(status, 201, "{path}: {body}");
    }
    let refused = api
        .put(
            VIEWER,
            "/admin/scopes/acme/rates",
            r#"{"reason":"org chart"}"#,
        )
        .await;
    assert_eq!(refused.0, 403, "{}", refused.1);
    let refused = api
        .put(
            OPERATOR,
            "/admin/scopes/acme/rates/desk-1",
            r#"{"reason":"no parent"}"#,
        )
        .await;
    assert_refused(&refused, 404, "parent_missing", "acme/rates");
    let refused = api
        .put(OPERATOR, "/admin/scopes/Acme/EQ", r#"{"reason":"caps"}"#)
        .await;
    assert_refused(&refused, 400, "invalid_scope", "acme/eq");

    // An operator halts the desk: the leaf below it is effectively HALTED, the other
    // desk is not.
    let (status, body) = api
        .put(
            OPERATOR,
            DESK,
            r#"{"mode":"HALTED","reason":"runaway desk"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.get("/admin/scope-modes/acme/eq/mm-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"], "HALTED", "{body}");
    assert_eq!(body["mode"], "NORMAL", "{body}");
    assert_eq!(body["decided_by"]["path"], "acme/eq", "{body}");
    let (_, body) = api.get("/admin/scope-modes/acme/fx").await;
    assert_eq!(body["effective"], "NORMAL", "{body}");

    // Unknown and mis-spelled paths change nothing.
    let refused = api
        .put(
            OPERATOR,
            "/admin/scope-modes/nope/x",
            r#"{"mode":"HALTED","reason":"typo"}"#,
        )
        .await;
    assert_refused(&refused, 404, "unknown_scope", "nope/x");
    let refused = api
        .put(
            OPERATOR,
            "/admin/scope-modes/acme/eq/mm_1",
            r#"{"mode":"HALTED","reason":"typo"}"#,
        )
        .await;
    assert_refused(&refused, 404, "unknown_scope", "acme/eq/mm-1");

    // Relaxing: an operator may not; a supervisor must name the state (If-Match),
    // bring a ticket, and go to CANCEL_ONLY first.
    let relax = r#"{"mode":"CANCEL_ONLY","reason":"fixed","ticket":"INC-1"}"#;
    let refused = api.put_matching(OPERATOR, DESK, relax, DESK).await;
    assert_eq!(refused.0, 403, "{}", refused.1);
    let refused = api.put(SUPERVISOR, DESK, relax).await;
    assert_eq!(refused.0, 428, "{}", refused.1);
    let refused = api
        .put_matching(
            SUPERVISOR,
            DESK,
            r#"{"mode":"NORMAL","reason":"fixed","ticket":"INC-1"}"#,
            DESK,
        )
        .await;
    assert_refused(&refused, 409, "step_too_large", "CANCEL_ONLY");
    let (status, body) = api.put_matching(SUPERVISOR, DESK, relax, DESK).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = api.get(DESK).await;
    assert_eq!(body["effective"], "CANCEL_ONLY", "{body}");

    // Four eyes: with scope.relax required, the supervisor's relaxation waits.
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/approvals/require",
            r#"{"actions":["scope.relax"],"reason":"four eyes"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .put_matching(
            SUPERVISOR,
            DESK,
            r#"{"mode":"NORMAL","reason":"all clear","ticket":"INC-1"}"#,
            DESK,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["pending_approval"]["action"], "scope.relax", "{body}");
    let (_, body) = api.get(DESK).await;
    assert_eq!(
        body["effective"], "CANCEL_ONLY",
        "nothing changed yet: {body}"
    );

    // The root: engaging the kill switch halts every scope.
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/kill-switch/engage",
            r#"{"reason":"firm-wide stop"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, tree) = api.get("/admin/scopes").await;
    assert_eq!(status, 200, "{tree}");
    assert_eq!(tree["kill_switch_engaged"], true, "{tree}");
    let scopes = tree["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 4, "{tree}");
    assert!(scopes.iter().all(|s| s["effective"] == "HALTED"), "{tree}");
    let (_, under) = api.get("/admin/scopes?under=acme/eq").await;
    assert_eq!(under["scopes"].as_array().unwrap().len(), 2, "{under}");

    // The desk's history, newest first, with who did what.
    let (status, history) = api.get("/admin/scope-history/acme/eq").await;
    assert_eq!(status, 200, "{history}");
    let reasons: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["fixed", "runaway desk", "org chart"], "{history}");
}
