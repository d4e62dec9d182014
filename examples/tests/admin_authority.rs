//! Every operator action does exactly what it names, with exactly the caller's
//! authority — through the admin API on real PostgreSQL, with the competing change
//! held open in another transaction (deterministic: the request is seen waiting on
//! the row lock before the competitor commits), replays, and registered symbols.

mod support;

use failover_core::postgres::tokio_postgres::{self, Client, NoTls};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;
use support::*;
use tradepulse_testkit::{shared_primary, Held};

/// A session of its own, as a DBA's psql or another service would hold one.
async fn session(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

const GLOBAL_HARD_HALT_BY_DAVE: &str = "SELECT * FROM symbol_mode_apply(gen_random_uuid(), \
     'SetGlobalMode', NULL, 'HARD_HALT', NULL, FALSE, 'split brain', 'ops:dave', NULL)";

async fn events(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs `request` while another session keeps `sql`'s change open, and commits it
/// once the request waits on its lock.
async fn race<F, Fut>(dsn: &str, sql: &str, request: F) -> (u16, Value)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    Held::begin(dsn, sql).await.race(request()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_relax_a_halt_that_landed_while_its_request_waited() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = std::sync::Arc::new(start_all(&dsn, Duration::from_secs(300)).await);
    let observer = session(&dsn).await;
    let (status, _) = s
        .api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    assert_eq!(status, 201);

    // The global mode: NORMAL when the operator decided to tighten to CANCEL_ONLY;
    // another actor's HARD_HALT commits while the request waits on the row.
    let before = events(&observer, "symbol_mode_events").await;
    let api = s.clone();
    let (status, body) = race(&dsn, GLOBAL_HARD_HALT_BY_DAVE, move || async move {
        api.api
            .put(
                OPERATOR,
                "/admin/global-mode",
                r#"{"mode":"CANCEL_ONLY","reason":"widen spreads","ticket":"ANY-1"}"#,
            )
            .await
    })
    .await;
    assert_refused(&(status, body), 403, "forbidden", "supervisor");
    let (_, venue) = s.api.get("/admin/global-mode").await;
    assert_eq!(venue["global"], "HARD_HALT", "the halt stands");
    assert_eq!(
        events(&observer, "symbol_mode_events").await,
        before + 1,
        "one audit event: the halt"
    );

    // A symbol: the same interleaving.
    let api = s.clone();
    let (status, body) = race(
        &dsn,
        "SELECT * FROM symbol_mode_apply(gen_random_uuid(), 'SetSymbolMode', 'BTC-USD', \
         'HARD_HALT', NULL, FALSE, 'bad prints', 'ops:dave', NULL)",
        move || async move {
            api.api
                .put(
                    OPERATOR,
                    "/admin/symbols/BTC-USD/mode",
                    r#"{"mode":"CANCEL_ONLY","reason":"wind down"}"#,
                )
                .await
        },
    )
    .await;
    assert_refused(&(status, body.clone()), 403, "forbidden", "");
    let (_, symbol) = s.api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(symbol["mode"], "HARD_HALT");

    // The kill switch: a supervisor's disengage decided on engaged-at-P; another
    // engage commits while it waits: refused, naming it.
    let (status, _) = s
        .api
        .post(
            OPERATOR,
            "/admin/kill-switch/engage",
            r#"{"reason":"first"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let etag = s.api.etag("/admin/kill-switch").await;
    let api = s.clone();
    let (status, body) = race(
        &dsn,
        "SELECT * FROM kill_switch_apply(gen_random_uuid(), 'engage', 'second incident', \
         'ops:dave', NULL)",
        move || async move {
            let (status, _, body) = api
                .api
                .request(
                    Method::POST,
                    "/admin/kill-switch/disengage",
                    Some(r#"{"reason":"resolved","ticket":"INC-1"}"#),
                    SUPERVISOR,
                    &[("if-match", etag)],
                )
                .await;
            (status, body)
        },
    )
    .await;
    assert_refused(
        &(status, body),
        412,
        "precondition_failed",
        "engage by ops:dave",
    );
    let (_, state) = s.api.get("/admin/kill-switch").await;
    assert_eq!(state["state"]["engaged"], true);
    assert_eq!(state["state"]["reason"], "second incident");

    // WithdrawalsHalt: the same for a lift.
    let (status, _) = s
        .api
        .post(
            OPERATOR,
            "/admin/withdrawals/halt",
            r#"{"on":true,"reason":"custody"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let etag = s.api.etag("/admin/withdrawals").await;
    let api = s.clone();
    let (status, body) = race(
        &dsn,
        "SELECT * FROM symbol_mode_apply(gen_random_uuid(), 'WithdrawalsHalt', NULL, NULL, TRUE, \
         FALSE, 'wallet drained', 'ops:dave', NULL)",
        move || async move {
            let (status, _, body) = api
                .api
                .request(
                    Method::POST,
                    "/admin/withdrawals/halt",
                    Some(r#"{"on":false,"reason":"reconciled","ticket":"INC-2"}"#),
                    SUPERVISOR,
                    &[("if-match", etag)],
                )
                .await;
            (status, body)
        },
    )
    .await;
    assert_refused(
        &(status, body),
        412,
        "precondition_failed",
        "WithdrawalsHalt on by ops:dave",
    );
    let (_, withdrawals) = s.api.get("/admin/withdrawals").await;
    assert_eq!(withdrawals["withdrawals_halted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxation_names_the_state_it_relaxes() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let put = |etag: Option<String>, body: &'static str| {
        let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("if-match", e)).collect();
        let api = &s.api;
        async move {
            let (status, _, body) = api
                .request(
                    Method::PUT,
                    "/admin/global-mode",
                    Some(body),
                    SUPERVISOR,
                    &headers,
                )
                .await;
            (status, body)
        }
    };
    let (status, _) = put(None, r#"{"mode":"SOFT_HALT","reason":"lag"}"#).await;
    assert_eq!(status, 200, "a tightening needs no If-Match");
    let seen = s.api.etag("/admin/global-mode").await;
    let observer = session(&dsn).await;
    observer
        .batch_execute(GLOBAL_HARD_HALT_BY_DAVE)
        .await
        .unwrap();

    let (status, body) = put(
        None,
        r#"{"mode":"CANCEL_ONLY","reason":"resume","ticket":"INC-1"}"#,
    )
    .await;
    assert_refused(&(status, body), 428, "precondition_required", "If-Match");
    let (status, body) = put(
        Some(seen.clone()),
        r#"{"mode":"CANCEL_ONLY","reason":"resume","ticket":"INC-1"}"#,
    )
    .await;
    assert_refused(&(status, body.clone()), 412, "precondition_failed", "");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("SetGlobalMode SOFT_HALT -> HARD_HALT by ops:dave"),
        "{message}"
    );
    let (_, venue) = s.api.get("/admin/global-mode").await;
    assert_eq!(venue["global"], "HARD_HALT");

    let now = s.api.etag("/admin/global-mode").await;
    assert_ne!(now, seen);
    let (status, body) = put(
        Some(now),
        r#"{"mode":"CANCEL_ONLY","reason":"resume","ticket":"INC-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"]["to"], "CANCEL_ONLY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resetting_in_a_loop_never_relaxes_another_operators_halt() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = std::sync::Arc::new(start_all(&dsn, Duration::from_secs(300)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spammer = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, body) = s
                    .api
                    .put(
                        OPERATOR,
                        "/admin/global-mode",
                        r#"{"mode":"NORMAL","reason":"reset","ticket":"ANY-9"}"#,
                    )
                    .await;
                assert!(status == 200 || status == 403, "{status} {body}");
                sent += 1;
            }
            sent
        })
    };
    for round in 0..20 {
        let (status, body) = s
            .api
            .put(
                OPERATOR,
                "/admin/global-mode",
                r#"{"mode":"SOFT_HALT","reason":"halt"}"#,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // Let the other operator's loop send a few more while SOFT_HALT is in force.
        for _ in 0..5 {
            let (_, venue) = s.api.get("/admin/global-mode").await;
            assert_eq!(
                venue["global"], "SOFT_HALT",
                "round {round}: relaxed by an operator"
            );
        }
        let etag = s.api.etag("/admin/global-mode").await;
        let (status, _, body) = s
            .api
            .request(
                Method::PUT,
                "/admin/global-mode",
                Some(r#"{"mode":"NORMAL","reason":"next round","ticket":"INC-5"}"#),
                SUPERVISOR,
                &[("if-match", etag)],
            )
            .await;
        assert_eq!(status, 200, "the supervisor resets: {body}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(spammer.await.unwrap() > 0);
    let observer = session(&dsn).await;
    let relaxed_by_operator: i64 = observer
        .query_one(
            "SELECT count(*) FROM symbol_mode_events WHERE relaxes AND actor = 'ops:alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        relaxed_by_operator, 0,
        "0 of 20 halts relaxed by the operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_answers_the_original_only_while_it_is_in_force() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let id = uuid::Uuid::new_v4();
    let engage = format!(r#"{{"reason":"runaway","request_id":"{id}"}}"#);
    let send = |token: &'static str, path: &'static str, body: String| {
        let api = &s.api;
        async move {
            api.request(Method::POST, path, Some(&body), token, &[])
                .await
        }
    };
    let (status, _, first) = send(OPERATOR, "/admin/kill-switch/engage", engage.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"], false);
    let (status, headers, again) =
        send(OPERATOR, "/admin/kill-switch/engage", engage.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], true);
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again["position"], first["position"]);
    let (status, _, body) = send(SUPERVISOR, "/admin/kill-switch/engage", engage.clone()).await;
    assert_refused(&(status, body.clone()), 409, "request_reused", "");

    let etag = s.api.etag("/admin/kill-switch").await;
    let (status, _, body) = s
        .api
        .request(
            Method::POST,
            "/admin/kill-switch/disengage",
            Some(r#"{"reason":"fixed","ticket":"INC-1"}"#),
            SUPERVISOR,
            &[("if-match", etag)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = send(OPERATOR, "/admin/kill-switch/engage", engage).await;
    assert_refused(&(status, body.clone()), 409, "superseded", "");
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disengage by ops:bob"),
        "{body}"
    );
    let (_, state) = s.api.get("/admin/kill-switch").await;
    assert_eq!(
        state["state"]["engaged"], false,
        "the replay did not re-engage"
    );

    // The global mode and a symbol likewise.
    s.api
        .put(
            OPERATOR,
            "/admin/symbols/ETH-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    for path in ["/admin/global-mode", "/admin/symbols/ETH-USD/mode"] {
        let id = uuid::Uuid::new_v4();
        let halt = format!(r#"{{"mode":"HARD_HALT","reason":"halt","request_id":"{id}"}}"#);
        let (status, _, _) = s
            .api
            .request(Method::PUT, path, Some(&halt), OPERATOR, &[])
            .await;
        assert_eq!(status, 200);
        let (status, headers, body) = s
            .api
            .request(Method::PUT, path, Some(&halt), OPERATOR, &[])
            .await;
        assert_eq!(
            (status, &body["replayed"]),
            (200, &Value::Bool(true)),
            "{path}: {body}"
        );
        assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
        let etag = s.api.etag(path).await;
        let (status, _, body) = s
            .api
            .request(
                Method::PUT,
                path,
                Some(r#"{"mode":"CANCEL_ONLY","reason":"resume","ticket":"INC-2"}"#),
                SUPERVISOR,
                &[("if-match", etag)],
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        let (status, _, body) = s
            .api
            .request(Method::PUT, path, Some(&halt), OPERATOR, &[])
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("superseded")),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("HARD_HALT -> CANCEL_ONLY by ops:bob"),
            "{body}"
        );
    }
    let metrics = s.api.text("/metrics").await;
    for outcome in ["replayed", "superseded", "request_reused"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("replay_detect_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .unwrap_or_else(|| {
                panic!("replay_detect_total{{outcome={outcome}}} missing:\n{metrics}")
            });
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_halts_nothing() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/symbols/ETH-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s
        .api
        .put(OPERATOR, "/admin/symbols/ETH-USD", r#"{"reason":"again"}"#)
        .await;
    assert_eq!(status, 200, "registered already");
    let (status, body) = s
        .api
        .put(OPERATOR, "/admin/symbols/eth-usd", r#"{"reason":"typo"}"#)
        .await;
    assert_refused(&(status, body.clone()), 409, "symbol_conflict", "");
    for (path, near) in [
        ("/admin/symbols/eth-usd/mode", Some("ETH-USD")),
        ("/admin/symbols/ETHUSD/mode", Some("ETH-USD")),
        ("/admin/symbols/NOPE-USD/mode", None),
        ("/admin/symbols/..%2F..%2Fetc%2Fpasswd/mode", None),
    ] {
        let (status, body) = s
            .api
            .put(OPERATOR, path, r#"{"mode":"HARD_HALT","reason":"typo"}"#)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("unknown_symbol")),
            "{path}: {body}"
        );
        if let Some(near) = near {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("did you mean {near}?")),
                "{body}"
            );
        }
    }
    let (status, body) = s
        .api
        .post(
            OPERATOR,
            "/admin/symbols/eth-usd/cancel-all",
            r#"{"reason":"typo"}"#,
        )
        .await;
    assert_refused(&(status, body.clone()), 404, "unknown_symbol", "");
    let (_, list) = s.api.get("/admin/symbols").await;
    assert_eq!(list["symbols"].as_array().unwrap().len(), 1, "{list}");
    let observer = session(&dsn).await;
    let modes: i64 = observer
        .query_one("SELECT count(*) FROM symbol_modes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(modes, 0, "nothing was halted");
    let (status, _) = s
        .api
        .put(
            OPERATOR,
            "/admin/symbols/ETH-USD/mode",
            r#"{"mode":"HARD_HALT","reason":"real"}"#,
        )
        .await;
    assert_eq!(status, 200);
}

/// A session holding the symbol-mode row does not make an operator's halt wait out
/// its budget or look like an outage: 423 `locked` naming the session's pid, for a
/// symbol and for the global mode; once the session ends, the halt succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_in_the_way_answers_423_naming_the_session() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;
    s.api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    let held = Held::begin(
        &dsn,
        "SELECT * FROM symbol_mode_state WHERE id = 1 FOR UPDATE",
    )
    .await;
    let pid = held.pid();
    for path in ["/admin/symbols/BTC-USD/mode", "/admin/global-mode"] {
        let started = std::time::Instant::now();
        let (status, body) = s
            .api
            .put(OPERATOR, path, r#"{"mode":"HARD_HALT","reason":"halt"}"#)
            .await;
        let took = started.elapsed();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (423, Some("locked")),
            "{path}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("pid {pid}")), "{message}");
        assert!(
            message.contains(&format!("pg_terminate_backend({pid})")),
            "{message}"
        );
        assert!(took < Duration::from_secs(1), "{path}: {took:?}");
    }
    held.rollback().await;
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"HARD_HALT","reason":"halt"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
