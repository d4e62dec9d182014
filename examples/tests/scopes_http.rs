//! Scoped controls through the admin API on real PostgreSQL: an operator creates the
//! firm's tree and halts a desk; a path is written with its slashes; an unknown or
//! mis-spelled path answers 404 naming the known one; relaxing is a supervisor's,
//! with `If-Match` and a ticket, one step at a time from HALTED; four eyes hold a
//! required relaxation at 202; engaging the kill switch halts every scope. A
//! relaxation is decided against the scope it locks: a tightening held open in
//! another transaction makes it wait and then refuse, naming that change; a replay
//! answers its original only while it is the scope's latest change; a typo halts
//! nothing.

mod support;

use std::time::Duration;
use support::authority::{Call, Control, Refused, Replay};
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
    // The service's own scope handle follows: its gauges count the four scopes and
    // the one halted desk. (Gauges are process-wide and other tests of this binary
    // scrape too, so the scrape is retried until it shows this service's values.)
    let wanted = [
        "scope_nodes 4",
        "scope_restricted_nodes 1",
        "scope_root_halted 0",
    ];
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = api.text("/metrics").await;
        if wanted.iter().all(|w| metrics.lines().any(|l| l == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in wanted {
        assert!(metrics.lines().any(|l| l == w), "{w} missing:\n{metrics}");
    }
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

/// The desk as a control under test: its state and its event table.
async fn desk_control<'a>(api: &'a Api, dsn: &str) -> Control<'a> {
    Control::new(api, dsn, DESK, "scope_events").await
}

/// The tree `acme`, `acme/eq`, `acme/eq/mm-1`, created by an operator.
async fn tree(api: &Api) {
    for path in ["acme", "acme/eq", "acme/eq/mm-1"] {
        let (status, body) = api
            .put(
                OPERATOR,
                &format!("/admin/scopes/{path}"),
                r#"{"reason":"org chart"}"#,
            )
            .await;
        assert_eq!(status, 201, "{path}: {body}");
    }
}

/// An operator's change of the desk, made by another session in a transaction left
/// open (as another admin process or a DBA's psql would make it).
fn desk_set_by_dave(mode: &str) -> String {
    format!(
        "SELECT * FROM scope_apply(gen_random_uuid(), 'set_mode', 'acme/eq', '{mode}', \
         'second incident', 'ops:dave', NULL, 'operator')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisors_relaxation_waits_for_a_held_tightening_then_refuses_naming_it() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let desk = desk_control(&s.api, &dsn).await;
    tree(&s.api).await;
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            DESK,
            r#"{"mode":"REDUCE_ONLY","reason":"limit breach"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The supervisor decides on REDUCE_ONLY; Dave's CANCEL_ONLY commits while the
    // relaxation waits on the scope's row.
    desk.relaxation_racing_held_is_refused(
        &desk_set_by_dave("CANCEL_ONLY"),
        Call::put(
            DESK,
            r#"{"mode":"NORMAL","reason":"breach cleared","ticket":"INC-1"}"#,
        ),
        Refused {
            status: 412,
            code: "precondition_failed",
            names: "set_mode acme/eq REDUCE_ONLY -> CANCEL_ONLY by ops:dave",
        },
    )
    .await;
    let (_, now) = s.api.get(DESK).await;
    assert_eq!(now["mode"], "CANCEL_ONLY", "nothing was relaxed: {now}");
    assert_eq!(now["last_change"]["updated_by"], "ops:dave", "{now}");
    let (_, leaf) = s.api.get("/admin/scope-modes/acme/eq/mm-1").await;
    assert_eq!(leaf["effective"], "CANCEL_ONLY", "{leaf}");

    // The same from CANCEL_ONLY with Dave halting the desk: still refused and
    // nothing relaxed, and the answer names Dave's halt (the state moved), not the
    // step rule, which speaks of a mode the supervisor never saw.
    desk.relaxation_racing_held_is_refused(
        &desk_set_by_dave("HALTED"),
        Call::put(
            DESK,
            r#"{"mode":"REDUCE_ONLY","reason":"breach cleared","ticket":"INC-1"}"#,
        ),
        Refused {
            status: 412,
            code: "precondition_failed",
            names: "set_mode acme/eq CANCEL_ONLY -> HALTED by ops:dave",
        },
    )
    .await;
    let (_, now) = s.api.get(DESK).await;
    assert_eq!(now["mode"], "HALTED", "nothing was relaxed: {now}");
    let (_, leaf) = s.api.get("/admin/scope-modes/acme/eq/mm-1").await;
    assert_eq!(leaf["effective"], "HALTED", "{leaf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_scope_change_answers_the_original_only_while_it_is_in_force() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let desk = desk_control(&s.api, &dsn).await;
    tree(&s.api).await;
    let mode = async || s.api.get(DESK).await.1["mode"].clone();
    desk.replay_answers_the_original_only_while_in_force(
        Replay {
            tighten: Call::put(DESK, r#"{"mode":"HALTED","reason":"runaway desk"}"#),
            // A change of another scope does not supersede the desk's halt.
            unrelated: Call::put(
                "/admin/scope-modes/acme/eq/mm-1",
                r#"{"mode":"REDUCE_ONLY","reason":"limit breach"}"#,
            ),
            relax: Call::put(
                DESK,
                r#"{"mode":"CANCEL_ONLY","reason":"contained","ticket":"INC-1"}"#,
            ),
            relax_supersedes: "set_mode acme/eq HALTED -> CANCEL_ONLY by ops:bob",
            tighten_again: Call::put(DESK, r#"{"mode":"HALTED","reason":"again"}"#),
            tighten_supersedes: "set_mode acme/eq CANCEL_ONLY -> HALTED by ops:alice",
        },
        async || assert_eq!(mode().await, "CANCEL_ONLY", "the replay halted nothing"),
        async || assert_eq!(mode().await, "HALTED", "still halted"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_a_scope_path_halts_nothing() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let desk = desk_control(&s.api, &dsn).await;
    tree(&s.api).await;
    let events = desk.events().await;

    let halt = r#"{"mode":"HALTED","reason":"runaway desk"}"#;
    for (path, status, code, names) in [
        ("ACME/EQ", 400, "invalid_scope", "write acme/eq"),
        ("acme/EQ", 400, "invalid_scope", "write acme/eq"),
        (
            "acme/eq/mm_1",
            404,
            "unknown_scope",
            "did you mean acme/eq/mm-1?",
        ),
        (
            "acme/eq/mm.1",
            404,
            "unknown_scope",
            "did you mean acme/eq/mm-1?",
        ),
        ("acme/eq/", 400, "invalid_scope", "write acme/eq"),
    ] {
        let refused = s
            .api
            .put(OPERATOR, &format!("/admin/scope-modes/{path}"), halt)
            .await;
        assert_refused(&refused, status, code, names);
    }
    // Creating the near miss instead: refused, naming the scope it reads like.
    let refused = s
        .api
        .put(
            OPERATOR,
            "/admin/scopes/acme/eq/mm_1",
            r#"{"reason":"typo"}"#,
        )
        .await;
    assert_refused(&refused, 409, "near_miss", "acme/eq/mm-1");

    assert_eq!(desk.events().await, events, "no event written");
    let (_, all) = s.api.get("/admin/scopes").await;
    let scopes = all["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 3, "no scope created: {all}");
    assert!(
        scopes.iter().all(|s| s["effective"] == "NORMAL"),
        "nothing halted: {all}"
    );
}
