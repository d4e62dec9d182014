//! The admin API harness the HTTP tests share: a server on a loopback port over real
//! PostgreSQL stores, three principals (viewer, operator, supervisor), and a client.
#![allow(dead_code, unreachable_pub)]

pub mod authority;

use failover_core::http::auth::token_sha256_hex;
use failover_core::http::Authenticator;
use failover_core::postgres::PgSettings;
use failover_core::HealthRegistry;
use fencing::LeaseFencer;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use symbol_mode::{PostgresSymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tradepulse_examples::admin_http::{prometheus, router, AdminState};

pub const VIEWER: &str = "viewer-token-1";
pub const OPERATOR: &str = "operator-token-1";
pub const SUPERVISOR: &str = "supervisor-token-1";
/// A second supervisor, for four eyes.
pub const SUPERVISOR_2: &str = "supervisor-token-2";

pub fn principals() -> String {
    format!(
        "# role actor sha256\nviewer ops:carol {}\noperator ops:alice {}\nsupervisor ops:bob sha256:{}\noperator ops:alice-cert cn:alice.ops.example\nsupervisor ops:erin {}\n",
        token_sha256_hex(VIEWER),
        token_sha256_hex(OPERATOR),
        token_sha256_hex(SUPERVISOR),
        token_sha256_hex(SUPERVISOR_2)
    )
}

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub tokens_file: PathBuf,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

impl Api {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, Some(VIEWER))
            .await
    }
    pub async fn get_open(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, None).await
    }
    pub async fn post(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body), Some(token))
            .await
    }
    pub async fn put(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body), Some(token))
            .await
    }
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    /// A request with extra headers; the answer's status, headers and JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: &str,
        headers: &[(&str, String)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        for (name, value) in headers {
            r = r.header(*name, value);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// A relaxing request: `If-Match` carries the `ETag` of `seen` (the GET the
    /// decision is made on), read just before.
    pub async fn matching(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: &str,
        seen: &str,
    ) -> (u16, Value) {
        let etag = self.etag(seen).await;
        let (status, _, body) = self
            .request(method, path, Some(body), token, &[("if-match", etag)])
            .await;
        (status, body)
    }

    /// A relaxing POST, like [`matching`](Self::matching).
    pub async fn post_matching(
        &self,
        token: &str,
        path: &str,
        body: &str,
        seen: &str,
    ) -> (u16, Value) {
        self.matching(reqwest::Method::POST, token, path, body, seen)
            .await
    }

    /// A relaxing PUT, like [`matching`](Self::matching).
    pub async fn put_matching(
        &self,
        token: &str,
        path: &str,
        body: &str,
        seen: &str,
    ) -> (u16, Value) {
        self.matching(reqwest::Method::PUT, token, path, body, seen)
            .await
    }

    /// The `ETag` of a GET, as sent back in `If-Match`.
    pub async fn etag(&self, path: &str) -> String {
        let (status, headers, body) = self
            .request(reqwest::Method::GET, path, None, VIEWER, &[])
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        headers
            .get("etag")
            .unwrap_or_else(|| panic!("{path} answers an ETag"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    pub async fn text(&self, path: &str) -> String {
        let r = self.client.get(format!("{}{path}", self.base));
        r.send().await.unwrap().text().await.unwrap()
    }
}

pub struct Setup {
    pub app: axum::Router,
    pub kill: Arc<PostgresKillSwitchStore>,
    pub modes: Arc<PostgresSymbolModeStore>,
    pub tokens_file: PathBuf,
    pub dir: tempfile::TempDir,
}

pub async fn setup(dsn: &str, window: Duration) -> Setup {
    let prometheus = prometheus();
    let settings = PgSettings::builder()
        .with_dsn(dsn)
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_millis(700))
        .with_retry_budget(Duration::from_millis(600))
        .build()
        .unwrap();
    // Migrating is setup, not under test: it runs with the default retry budget, so
    // that a loaded machine does not fail it; the stores under test keep the tight
    // settings above (the outage tests need them to fail fast).
    let defaults = PgSettings::builder().with_dsn(dsn).build().unwrap();
    PostgresKillSwitchStore::new(defaults.clone())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    PostgresSymbolModeStore::new(defaults.clone())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    fencing::PostgresLeaseFencer::new(defaults)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let kill = Arc::new(PostgresKillSwitchStore::new(settings.clone()).unwrap());
    let modes_store = Arc::new(PostgresSymbolModeStore::new(settings.clone()).unwrap());
    let fencer = Arc::new(fencing::PostgresLeaseFencer::new(settings).unwrap());
    let mode_store: Arc<dyn SymbolModeStore> = modes_store.clone();
    let modes = SymbolModes::spawn(
        mode_store.clone(),
        SymbolModesConfig::default()
            .with_staleness_window(window)
            .with_poll_interval(Duration::from_millis(200)),
    );
    modes.ready(Duration::from_secs(5)).await;
    let kill_store: Arc<dyn KillSwitchStore> = kill.clone();
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
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("admin-tokens");
    std::fs::write(&tokens_file, principals()).unwrap();
    let dyn_fencer: Arc<dyn LeaseFencer> = fencer.clone();
    let app = router(AdminState {
        kill_store,
        kill_switch,
        mode_store,
        modes,
        leases: Some((dyn_fencer, Some(fencer.clone()))),
        health,
        prometheus,
        auth: Authenticator::from_file(&tokens_file),
        pools: vec![
            ("kill_switch", kill.pool().clone()),
            ("symbol_mode", modes_store.pool().clone()),
            ("fencing", fencer.pool().clone()),
        ],
        expiry_sweep: Duration::from_millis(200),
    });
    Setup {
        app,
        kill,
        modes: modes_store,
        tokens_file,
        dir,
    }
}

/// A server over fresh stores of `dsn`, and the stores.
pub struct Started {
    /// The client side.
    pub api: Api,
    /// The kill switch store the routes use.
    pub kill: Arc<PostgresKillSwitchStore>,
    /// The symbol-mode store the routes use.
    pub modes: Arc<PostgresSymbolModeStore>,
}

pub async fn start_all(dsn: &str, window: Duration) -> Started {
    let s = setup(dsn, window).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = s.app;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Started {
        api: Api {
            base,
            client,
            tokens_file: s.tokens_file,
            _dir: s.dir,
            _server: server,
        },
        kill: s.kill,
        modes: s.modes,
    }
}

pub async fn start(dsn: &str, window: Duration) -> (Api, Arc<PostgresKillSwitchStore>) {
    let s = start_all(dsn, window).await;
    (s.api, s.kill)
}

pub async fn eventually(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a refusal: its status, its error code, and that its message names `mentions`.
pub fn assert_refused(answer: &(u16, Value), status: u16, code: &str, mentions: &str) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "expected {mentions:?} in: {body}"
    );
}
