//! The admin API on a loopback port against a real PostgreSQL, driven by a real HTTP
//! client: authentication and roles (bearer tokens from a file rotated without a
//! restart, mTLS client certificates), the runbook's probes (`/healthz`, `/health`,
//! `/ready` answer 503 with `kill_switch` `failed` and the cause while the database is
//! down), `/metrics`, and every control's routes.

use failover_core::http::tls::{serve_tls, server_config, ClientAuth};
use failover_core::postgres::PgSettings;
use fencing::LeaseFencer;
use killswitch::KillSwitchStore;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tradepulse_testkit::{shared_primary, Cluster};

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_503_with_kill_switch_failed_and_the_cause_while_the_database_is_down() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (api, _store) = start(&cluster.primary().dsn(&db), Duration::from_secs(2)).await;

    // `operational` once reads and push both work (push connects right after start).
    eventually("operational", Duration::from_secs(5), async || {
        api.get_open("/healthz").await.1["components"][0]["status"] == "operational"
    })
    .await;
    for probe in ["/healthz", "/health", "/ready"] {
        let (status, body) = api.get_open(probe).await;
        assert_eq!(status, 200, "{probe}: {body}");
        assert_eq!(body["components"][0]["name"], "kill_switch");
        assert_eq!(body["components"][0]["status"], "operational");
    }
    assert_eq!(api.get_open("/livez").await.0, 200);

    cluster.primary().stop_immediate().await.unwrap();
    let mut last = Value::Null;
    eventually(
        "kill_switch failed in /healthz",
        Duration::from_secs(10),
        async || {
            let (status, body) = api.get_open("/healthz").await;
            last = body.clone();
            status == 503 && body["components"][0]["status"] == "failed"
        },
    )
    .await;
    let details = last["components"][0]["details"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(details.contains("connection refused"), "{last}");
    for probe in ["/health", "/ready"] {
        assert_eq!(api.get_open(probe).await.0, 503, "{probe}");
    }
    assert_eq!(
        api.get_open("/livez").await.0,
        200,
        "the process still lives"
    );
    let metrics = api.text("/metrics").await;
    assert!(
        metrics.contains("health_status{component=\"kill_switch\"} 2"),
        "{metrics}"
    );
    let (status, body) = api.get("/admin/kill-switch").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");

    cluster.primary().start().await.unwrap();
    eventually(
        "kill_switch operational again",
        Duration::from_secs(10),
        async || {
            let (status, body) = api.get_open("/ready").await;
            status == 200 && body["components"][0]["status"] == "operational"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_callers_with_the_right_role_change_anything() {
    let (_cluster, db) = shared_primary().await.unwrap();
    let (api, store) = start(&_cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let engage = r#"{"reason":"runaway algo"}"#;

    // No credentials, a wrong token, a malformed header: 401, nothing changed.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/admin/kill-switch/engage",
            Some(engage),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert_eq!(
        api.post("nope", "/admin/kill-switch/engage", engage)
            .await
            .0,
        401
    );
    assert_eq!(
        api.send(reqwest::Method::GET, "/admin/kill-switch", None, None)
            .await
            .0,
        401,
        "reads need a viewer"
    );
    // A viewer reads but may not engage.
    let (status, body) = api.post(VIEWER, "/admin/kill-switch/engage", engage).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(
        !store.load().await.unwrap().engaged,
        "refusals changed nothing"
    );
    assert!(store.history(10).await.unwrap().is_empty());

    // A body actor is refused: the actor is the caller.
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/kill-switch/engage",
            r#"{"actor":"anyone:mallory","reason":"x"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("actor_not_accepted")),
        "{body}"
    );

    // An operator engages; the audit actor is the token's identity.
    let (status, body) = api
        .post(OPERATOR, "/admin/kill-switch/engage", engage)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["updated_by"], "ops:alice");
    let history = store.history(10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].actor, "ops:alice");

    // The operator may not relax; the supervisor needs a ticket.
    let relax = r#"{"reason":"fixed","ticket":"INC-7"}"#;
    let (status, body) = api
        .post(OPERATOR, "/admin/kill-switch/disengage", relax)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = api
        .post(
            SUPERVISOR,
            "/admin/kill-switch/disengage",
            r#"{"reason":"fixed"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("ticket_required")),
        "{body}"
    );
    assert!(
        store.load().await.unwrap().engaged,
        "refusals changed nothing"
    );
    let (status, body) = api
        .post(SUPERVISOR, "/admin/kill-switch/disengage", relax)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (428, Some("precondition_required")),
        "a relaxation names the state it relaxes: {body}"
    );
    let (status, body) = api
        .post_matching(
            SUPERVISOR,
            "/admin/kill-switch/disengage",
            relax,
            "/admin/kill-switch",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["updated_by"], "ops:bob");
    assert_eq!(body["engaged"], false);

    // The state route shows which server answered and the hot path's age.
    let (status, body) = api.get("/admin/kill-switch").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["answered_by"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", _cluster.primary().port())),
        "{body}"
    );
    assert!(
        body["hot_path"]["last_read_age_seconds"].as_f64().unwrap() < 60.0,
        "{body}"
    );

    // History with a cursor: newest first, pages do not overlap.
    let (_, page1) = api.get("/admin/kill-switch/history?limit=1").await;
    assert_eq!(page1["events"][0]["action"], "disengage", "{page1}");
    let next = page1["next"].as_u64().expect("a next cursor");
    let (_, page2) = api
        .get(&format!("/admin/kill-switch/history?limit=1&before={next}"))
        .await;
    assert_eq!(page2["events"][0]["action"], "engage", "{page2}");
    assert_eq!(page2["next"], Value::Null);

    // Rotation without restart: the operator's line removed from the file → 401.
    let without_operator: String = principals()
        .lines()
        .filter(|l| !l.starts_with("operator ops:alice "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&api.tokens_file, without_operator).unwrap();
    let (status, body) = api
        .post(OPERATOR, "/admin/kill-switch/engage", engage)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert!(!store.load().await.unwrap().engaged);
    assert_eq!(
        api.get("/admin/kill-switch").await.0,
        200,
        "other tokens still work"
    );

    // Refusals are counted; every metric has # HELP; pool gauges per store.
    let metrics = api.text("/metrics").await;
    for needle in [
        "admin_auth_refusals_total{reason=\"forbidden\"}",
        "admin_auth_refusals_total{reason=\"unknown_token\"}",
        "pg_pool_size{store=\"kill_switch\"}",
        "pg_pool_available{store=\"symbol_mode\"}",
        "pg_pool_waiting{store=\"kill_switch\"}",
        "pg_pool_max{store=\"fencing\"} 8",
        "failover_pg_operation_seconds_bucket{",
        "kill_switch_engaged 0",
        "kill_switch_state_age_seconds",
        "scope_nodes 0",
        "scope_root_halted 0",
        "scope_state_age_seconds",
        "symbol_mode_effective_symbols{mode=\"NORMAL\"}",
        "failover_pg_attempts_total{component=\"kill_switch\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains("component=\"killswitch\""),
        "one label spelling"
    );
    assert!(!metrics.contains(OPERATOR) && !metrics.contains(SUPERVISOR));
    let helped: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| helped.contains(b)))
            .unwrap_or(name);
        assert!(helped.contains(base), "no # HELP for {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing_and_a_resent_request_is_applied_once() {
    let (cluster, db) = shared_primary().await.unwrap();
    let (api, store) = start(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/kill-switch/engage",
            r#"{"reason":"runaway algo"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bad = [
        (r#"{"reason":"","ticket":"INC-1"}"#, 422, "invalid_audit"),
        (r#"{"reason":"x""#, 400, "bad_request"),
        (
            r#"{"reason":"x","ticket":"INC-1","colour":"red"}"#,
            400,
            "bad_request",
        ),
    ];
    for (payload, want_status, want_code) in bad {
        let (status, body) = api
            .post(SUPERVISOR, "/admin/kill-switch/disengage", payload)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{payload}: {body}"
        );
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        store.load().await.unwrap().engaged,
        "refused requests changed nothing"
    );
    assert_eq!(store.history(10).await.unwrap().len(), 1);
    let request_id = uuid::Uuid::new_v4();
    let payload = json!({"reason":"fixed","ticket":"INC-7","request_id":request_id}).to_string();
    let mut versions = Vec::new();
    let seen = api.etag("/admin/kill-switch").await;
    for _ in 0..2 {
        let (status, _, body) = api
            .request(
                reqwest::Method::POST,
                "/admin/kill-switch/disengage",
                Some(&payload),
                SUPERVISOR,
                &[("if-match", seen.clone())],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        versions.push(body["version"].as_u64().unwrap());
    }
    assert_eq!(versions[0], versions[1], "a resent request is applied once");
    assert_eq!(store.history(10).await.unwrap().len(), 2);
}

/// A throttle through the API: an operator sets and lowers it; raising or clearing
/// is a supervisor's, with a ticket and `If-Match` on the throttle's `ETag`; the
/// admin's own handle enforces it, and bad limits change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_through_the_api() {
    let (cluster, db) = shared_primary().await.unwrap();
    let s = support::start_all(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let api = &s.api;
    let engine = symbol_mode::SymbolModes::spawn(s.modes.clone(), Default::default());
    assert!(engine.ready(Duration::from_secs(5)).await);
    let (status, body) = api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let path = "/admin/symbols/BTC-USD/throttle";
    let (status, body) = api.get(path).await;
    assert_eq!((status, &body["limit"]), (200, &json!(null)), "{body}");

    for (payload, code) in [
        (r#"{"per_second":0,"reason":"x"}"#, "invalid_throttle"),
        (r#"{"per_second":2000000,"reason":"x"}"#, "invalid_throttle"),
    ] {
        assert_refused(
            &api.put(OPERATOR, path, payload).await,
            422,
            code,
            "throttle",
        );
    }
    // A body without per_second is not read as "clear"; a burst needs a rate.
    let (status, body) = api
        .put(
            SUPERVISOR,
            path,
            r#"{"burst":200,"reason":"x","ticket":"T"}"#,
        )
        .await;
    assert!(
        (400..500).contains(&status) && body.to_string().contains("per_second"),
        "{status} {body}"
    );
    assert_refused(
        &api.put(
            SUPERVISOR,
            path,
            r#"{"per_second":null,"burst":200,"reason":"x","ticket":"T"}"#,
        )
        .await,
        422,
        "invalid_throttle",
        "a burst without a rate",
    );
    let (status, body) = api.get("/admin/symbols/btc-usd/throttle").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_symbol")),
        "{body}"
    );
    assert_refused(
        &api.put(
            OPERATOR,
            "/admin/symbols/btc-usd/throttle",
            r#"{"per_second":5,"reason":"x"}"#,
        )
        .await,
        404,
        "unknown_symbol",
        "BTC-USD",
    );
    let (status, body) = api
        .put(
            OPERATOR,
            path,
            r#"{"per_second":5,"burst":5,"reason":"settlement lag"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["command"]["to"],
        json!({"per_second": 5, "burst": 5}),
        "{body}"
    );
    eventually(
        "the admin's handle has the limit",
        Duration::from_secs(5),
        async || engine.snapshot().throttle("BTC-USD").is_some(),
    )
    .await;
    let admitted = (0..6).filter(|_| engine.admit("BTC-USD").is_ok()).count();
    assert_eq!(admitted, 5);

    // Clearing relaxes.
    let clear = r#"{"per_second":null,"reason":"lag gone","ticket":"CHG-7"}"#;
    assert_refused(
        &api.put(OPERATOR, path, clear).await,
        403,
        "forbidden",
        "supervisor",
    );
    assert_refused(
        &api.put(SUPERVISOR, path, clear).await,
        428,
        "precondition_required",
        "If-Match",
    );
    let (status, body) = api
        .put_matching(
            SUPERVISOR,
            path,
            r#"{"per_second":null,"reason":"lag gone"}"#,
            path,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("ticket_required")),
        "{body}"
    );
    let (status, body) = api.put_matching(SUPERVISOR, path, clear, path).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = api.get("/admin/throttles").await;
    assert_eq!(body["throttles"][0]["limit"], json!(null), "{body}");
    assert_eq!(body["throttles"][0]["ticket"], "CHG-7", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbol_modes_global_mode_cancel_all_withdrawals_and_leases_through_the_api() {
    let (cluster, db) = shared_primary().await.unwrap();
    let (api, _store) = start(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;

    let (status, body) = api.get_open("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"][1]["name"], "symbol_mode");
    for symbol in ["BTC-USD", "SOL-USD"] {
        let (status, body) = api
            .put(
                OPERATOR,
                &format!("/admin/symbols/{symbol}"),
                r#"{"reason":"listing"}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(
        (status, body["mode"].as_str()),
        (200, Some("NORMAL")),
        "{body}"
    );

    let (status, body) = api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"HARD_HALT","reason":"bad prints"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["actor"], "ops:alice", "{body}");
    let (_, body) = api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(
        (body["mode"].as_str(), body["effective"].as_str()),
        (Some("HARD_HALT"), Some("HARD_HALT"))
    );

    let bad = [
        (
            OPERATOR,
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"CANCEL_ONLY","reason":"resume","ticket":"INC-1"}"#,
            403,
            "forbidden",
        ),
        (
            SUPERVISOR,
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"NORMAL","reason":"resume","ticket":"INC-1"}"#,
            409,
            "transition_forbidden",
        ),
        (
            SUPERVISOR,
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"CANCEL_ONLY","reason":"resume"}"#,
            422,
            "ticket_required",
        ),
        (
            OPERATOR,
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"HALTED","reason":"x"}"#,
            400,
            "bad_request",
        ),
        (
            OPERATOR,
            "/admin/symbols/BTC%20USD/mode",
            r#"{"mode":"SOFT_HALT","reason":"x"}"#,
            400,
            "invalid_symbol",
        ),
        (
            VIEWER,
            "/admin/symbols/ETH-USD/mode",
            r#"{"mode":"SOFT_HALT","reason":"x"}"#,
            403,
            "forbidden",
        ),
    ];
    for (token, path, payload, want_status, want_code) in bad {
        let (status, body) = api.put(token, path, payload).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{payload}: {body}"
        );
    }
    let (_, body) = api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(
        body["mode"], "HARD_HALT",
        "refused requests changed nothing"
    );
    for (mode, ticket) in [("CANCEL_ONLY", "INC-1"), ("NORMAL", "INC-2")] {
        let payload = json!({"mode": mode, "reason": "resume", "ticket": ticket}).to_string();
        let (status, body) = api
            .put_matching(
                SUPERVISOR,
                "/admin/symbols/BTC-USD/mode",
                &payload,
                "/admin/symbols/BTC-USD/mode",
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // Global mode: an operator tightens, only a supervisor relaxes.
    let (status, body) = api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"CANCEL_ONLY","reason":"ledger check"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"NORMAL","reason":"ok","ticket":"INC-4"}"#,
        )
        .await;
    assert_eq!(status, 403);
    let (_, body) = api.get("/admin/global-mode").await;
    assert_eq!(body["global"], "CANCEL_ONLY", "{body}");
    let (status, _) = api
        .put_matching(
            SUPERVISOR,
            "/admin/global-mode",
            r#"{"mode":"NORMAL","reason":"ok","ticket":"INC-4"}"#,
            "/admin/global-mode",
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = api
        .post(
            OPERATOR,
            "/admin/symbols/SOL-USD/cancel-all",
            r#"{"reason":"settlement issue"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["symbol"].as_str(), body["actor"].as_str()),
        (Some("SOL-USD"), Some("ops:alice"))
    );

    let (status, _) = api
        .post(
            OPERATOR,
            "/admin/withdrawals/halt",
            r#"{"on":true,"reason":"wallet anomaly"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = api
        .post(
            OPERATOR,
            "/admin/withdrawals/halt",
            r#"{"on":false,"reason":"fixed","ticket":"INC-3"}"#,
        )
        .await;
    assert_eq!(status, 403, "lifting a halt relaxes: supervisor only");
    let (status, body) = api
        .post(
            SUPERVISOR,
            "/admin/withdrawals/halt",
            r#"{"on":false,"reason":"fixed"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("ticket_required")),
        "{body}"
    );
    let (status, _) = api
        .post_matching(
            SUPERVISOR,
            "/admin/withdrawals/halt",
            r#"{"on":false,"reason":"fixed","ticket":"INC-3"}"#,
            "/admin/withdrawals",
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = api.get("/admin/symbol-modes/history?limit=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    assert!(body["next"].is_u64(), "{body}");

    // Leases: free, then held, with its trail.
    let (status, body) = api.get("/admin/leases/btc-book").await;
    assert_eq!((status, &body["lease"]), (200, &Value::Null), "{body}");
    let fencer = fencing::PostgresLeaseFencer::new(
        PgSettings::builder()
            .with_dsn(cluster.primary().dsn(&db))
            .build()
            .unwrap(),
    )
    .unwrap();
    let lease = fencer
        .acquire("btc-book", "engine-a", Duration::from_secs(30))
        .await
        .unwrap();
    let (_, body) = api.get("/admin/leases/btc-book").await;
    assert_eq!(body["lease"]["holder"], "engine-a", "{body}");
    assert_eq!(body["lease"]["token"], lease.token());
    let (_, body) = api.get("/admin/leases/btc-book/history").await;
    assert_eq!(body["events"][0]["event"], "acquire", "{body}");
}

/// A CA, and certificates it signs, as PEM files in `dir`.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        Self { ca, ca_key }
    }

    fn issue(&self, cn: &str, server: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = if server {
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
        } else {
            vec![]
        };
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert, key)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends one raw HTTP/1.1 request over mTLS; `Err` when the TLS layer refuses.
async fn mtls_request(
    addr: std::net::SocketAddr,
    server_ca: &rcgen::Certificate,
    client: &(rcgen::Certificate, rcgen::KeyPair),
    request: &str,
) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der().clone()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(client.1.serialize_der().into());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client.0.der().clone()], key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificates_map_to_actors_and_an_unknown_ca_is_refused() {
    let (cluster, db) = shared_primary().await.unwrap();
    let s = setup(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;
    let trusted = Pki::new("ops-ca");
    let stranger = Pki::new("mallory-ca");
    let server = trusted.issue("localhost", true);
    let dir = s.dir.path();
    let config = server_config(
        &write(dir, "server.pem", &server.0.pem()),
        &write(dir, "server.key", &server.1.serialize_pem()),
        Some(&write(dir, "ca.pem", &trusted.ca.pem())),
        ClientAuth::Required,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = s.app.clone();
    let _server = tokio::spawn(async move { serve_tls(listener, config, app).await });

    let body = r#"{"reason":"mtls engage"}"#;
    let engage = format!(
        "POST /admin/kill-switch/engage HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A certificate from another CA with the listed common name: refused by TLS.
    let forged = stranger.issue("alice.ops.example", false);
    let answer = mtls_request(addr, &trusted.ca, &forged, &engage).await;
    assert!(
        answer
            .as_ref()
            .map_or(true, |a| !a.starts_with("HTTP/1.1 200")),
        "an unknown CA must be refused: {answer:?}"
    );
    assert!(
        s.kill.history(10).await.unwrap().is_empty(),
        "nothing changed"
    );

    // A trusted certificate whose CN is not listed: authenticated by TLS, refused 401.
    let unlisted = trusted.issue("eve.ops.example", false);
    let answer = mtls_request(addr, &trusted.ca, &unlisted, &engage)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The listed CN acts as its actor.
    let alice = trusted.issue("alice.ops.example", false);
    let answer = mtls_request(addr, &trusted.ca, &alice, &engage)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let history = s.kill.history(10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].actor, "ops:alice-cert");
    let _ = &s.tokens_file;
}
