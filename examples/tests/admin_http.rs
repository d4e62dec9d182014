//! The admin API on a loopback port against a real PostgreSQL, driven by a real HTTP
//! client — including the runbook's check that `/healthz` shows `kill_switch` `failed`
//! with the cause while the database is down and `operational` after it returns.

use failover_core::postgres::PgSettings;
use failover_core::postgres::PgStore;
use failover_core::testkit::Cluster;
use failover_core::HealthRegistry;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use symbol_mode::{PostgresSymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tradepulse_examples::admin_http::{prometheus, router, AdminState};

struct Api {
    base: String,
    client: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }
    async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }
    async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn start(dsn: &str, window: Duration) -> (Api, Arc<PostgresKillSwitchStore>) {
    let settings = PgSettings::builder()
        .with_dsn(dsn)
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_millis(700))
        .with_retry_budget(Duration::from_millis(600))
        .build()
        .unwrap();
    let store = Arc::new(PostgresKillSwitchStore::new(settings.clone()).unwrap());
    let mode_store = PostgresSymbolModeStore::new(settings).unwrap();
    mode_store.migrate().await.unwrap();
    let mode_store: Arc<dyn SymbolModeStore> = Arc::new(mode_store);
    let modes = SymbolModes::spawn(
        mode_store.clone(),
        SymbolModesConfig::default()
            .with_staleness_window(window)
            .with_poll_interval(Duration::from_millis(200)),
    );
    modes.ready(Duration::from_secs(5)).await;
    store.migrate().await.unwrap();
    let kill_store: Arc<dyn KillSwitchStore> = store.clone();
    let kill_switch = KillSwitch::spawn(
        kill_store.clone(),
        KillSwitchConfig::default()
            .with_staleness_window(window)
            .with_poll_interval(Duration::from_millis(200)),
    );
    kill_switch.ready(Duration::from_secs(5)).await;
    let health = HealthRegistry::new();
    health.register("kill_switch", kill_switch.health_source());
    health.register("symbol_mode", modes.health_source());
    let app = router(AdminState {
        kill_store,
        kill_switch,
        mode_store,
        modes,
        health,
        prometheus: prometheus(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (
        Api {
            base,
            client,
            _server: server,
        },
        store,
    )
}

async fn eventually(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_shows_kill_switch_failed_with_the_cause_while_the_database_is_down() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (api, _store) = start(&cluster.primary().dsn(&db), Duration::from_secs(2)).await;

    // `operational` once reads and push both work (push connects right after start).
    eventually("operational", Duration::from_secs(5), async || {
        api.get("/healthz").await.1["components"][0]["status"] == "operational"
    })
    .await;
    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"][0]["name"], "kill_switch");

    cluster.primary().stop_immediate().await.unwrap();
    let mut last = Value::Null;
    eventually(
        "kill_switch failed in /healthz",
        Duration::from_secs(10),
        async || {
            let (status, body) = api.get("/healthz").await;
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
    let (status, body) = api.get("/admin/kill-switch").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");

    cluster.primary().start().await.unwrap();
    eventually(
        "kill_switch operational again",
        Duration::from_secs(10),
        async || {
            let (status, body) = api.get("/healthz").await;
            status == 200 && body["components"][0]["status"] == "operational"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engage_and_disengage_through_the_api_are_audited_and_bad_requests_change_nothing() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (api, store) = start(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;

    let (status, body) = api
        .post(
            "/admin/kill-switch/engage",
            r#"{"actor":"ops:alice","reason":"runaway algo"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engaged"], true);
    assert_eq!(body["version"], 1);

    let (status, body) = api.get("/admin/kill-switch").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"]["engaged"], true);
    assert_eq!(body["state"]["reason"], "runaway algo");

    // Bad requests: 4xx with a JSON error that names the problem; nothing changes.
    let bad = [
        (
            r#"{"actor":"ops:alice","reason":"fixed"}"#,
            422,
            "ticket_required",
        ),
        (
            r#"{"actor":"ops:alice","reason":"","ticket":"INC-1"}"#,
            422,
            "invalid_audit",
        ),
        (r#"{"actor":"ops:alice""#, 400, "bad_request"),
        (
            r#"{"actor":"ops:alice","reason":"x","ticket":"INC-1","colour":"red"}"#,
            400,
            "bad_request",
        ),
    ];
    for (payload, want_status, want_code) in bad {
        let (status, body) = api.post("/admin/kill-switch/disengage", payload).await;
        assert_eq!(status, want_status, "{payload}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{payload}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        store.load().await.unwrap().engaged,
        "refused requests changed nothing"
    );
    assert_eq!(store.history(10).await.unwrap().len(), 1);

    let request_id = uuid::Uuid::new_v4();
    let payload =
        json!({"actor":"ops:bob","reason":"fixed","ticket":"INC-7","request_id":request_id})
            .to_string();
    for _ in 0..2 {
        let (status, body) = api.post("/admin/kill-switch/disengage", &payload).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 2, "a resent request is applied once");
    }
    let history = store.history(10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].ticket.as_deref(), Some("INC-7"));

    let text = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("failover_pg_attempts_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbol_modes_cancel_all_and_withdrawals_through_the_api() {
    let cluster = Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let (api, _store) = start(&cluster.primary().dsn(&db), Duration::from_secs(300)).await;

    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"][1]["name"], "symbol_mode");
    assert_eq!(body["components"][1]["status"], "operational");

    let (status, body) = api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(
        (status, body["mode"].as_str()),
        (200, Some("NORMAL")),
        "{body}"
    );

    let (status, body) = api
        .put(
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"HARD_HALT","actor":"ops:alice","reason":"bad prints"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = api.get("/admin/symbols/BTC-USD/mode").await;
    assert_eq!(body["mode"], "HARD_HALT");
    assert_eq!(body["effective"], "HARD_HALT");

    // The runbook's resume order: HARD_HALT -> NORMAL is refused, via CANCEL_ONLY it works.
    let bad = [
        (
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"NORMAL","actor":"ops","reason":"resume","ticket":"INC-1"}"#,
            409,
            "transition_forbidden",
        ),
        (
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"CANCEL_ONLY","actor":"ops","reason":"resume"}"#,
            422,
            "ticket_required",
        ),
        (
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"HALTED","actor":"ops","reason":"x"}"#,
            400,
            "bad_request",
        ),
        (
            "/admin/symbols/BTC-USD/mode",
            r#"{"mode":"SOFT_HALT","actor":"ops","reason":"x","colour":"red"}"#,
            400,
            "bad_request",
        ),
        (
            "/admin/symbols/BTC%20USD/mode",
            r#"{"mode":"SOFT_HALT","actor":"ops","reason":"x"}"#,
            400,
            "invalid_symbol",
        ),
    ];
    for (path, payload, want_status, want_code) in bad {
        let (status, body) = api.put(path, payload).await;
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
        let payload =
            json!({"mode": mode, "actor": "ops", "reason": "resume", "ticket": ticket}).to_string();
        let (status, body) = api.put("/admin/symbols/BTC-USD/mode", &payload).await;
        assert_eq!(status, 200, "{body}");
    }

    let (status, body) = api
        .post(
            "/admin/symbols/SOL-USD/cancel-all",
            r#"{"actor":"ops:alice","reason":"settlement issue"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["symbol"], "SOL-USD");

    let (status, _) = api
        .post(
            "/admin/withdrawals/halt",
            r#"{"on":true,"actor":"ops:alice","reason":"wallet anomaly"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = api
        .post(
            "/admin/withdrawals/halt",
            r#"{"on":false,"actor":"ops:alice","reason":"fixed"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("ticket_required")),
        "{body}"
    );
    let (status, _) = api
        .post(
            "/admin/withdrawals/halt",
            r#"{"on":false,"actor":"ops:alice","reason":"fixed","ticket":"INC-3"}"#,
        )
        .await;
    assert_eq!(status, 200);
}
