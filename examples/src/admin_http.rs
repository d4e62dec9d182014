//! The admin HTTP API an operator uses during an incident: a thin composition of the
//! routes the crates offer behind their `http` feature.
//!
//! | route | role | from |
//! |---|---|---|
//! | `GET /healthz`, `/health`, `/ready` | open | readiness of every component (`kill_switch` …): 200 when ready, 503 when any component failed |
//! | `GET /livez`, `GET /metrics` | open | liveness; Prometheus text |
//! | `GET /admin/kill-switch`, `…/history` | viewer | [`killswitch::http`] |
//! | `POST /admin/kill-switch/engage` / `…/disengage` | operator / supervisor | body `{"reason", "ticket"?, "request_id"?}` |
//! | `GET`/`PUT /admin/symbols/{symbol}/mode`, `POST …/cancel-all`, `GET`/`PUT /admin/global-mode`, `POST /admin/withdrawals/halt`, `GET /admin/symbol-modes/history` | viewer / operator (tighten) / supervisor (relax) | [`symbol_mode::http`] |
//! | `GET /admin/scopes?under=`, `PUT /admin/scopes/{path…}`, `GET`/`PUT /admin/scope-modes/{path…}`, `GET /admin/scope-history/{path…}` | viewer / operator (create, tighten) / supervisor (relax) | [`killswitch::scope::http`], mounted with a PostgreSQL kill switch (the scopes' root) |
//! | `GET /admin/leases/{resource}`, `…/history` | viewer | [`fencing::http`] |
//! | `GET /admin/approvals`, `…/review`, `…/policy`; `POST /admin/approvals/{id}/approve` / `…/reject` / `…/acknowledge`, `POST /admin/approvals/require` / `…/waive` | viewer / supervisor (not the requester) / operator / supervisor | [`failover_core::http::approvals`], mounted with a PostgreSQL kill switch or symbol-mode pool |
//!
//! The audit actor is the authenticated caller (bearer token or client
//! certificate); a body `actor` is refused with 400 `actor_not_accepted`. A bad
//! request gets a 4xx with `{"error": {"code", "message"}}` naming the problem and
//! changes nothing. A store that cannot be reached gives 503.
//!
//! Serve the router with [`failover_core::http::serve`] (or
//! [`failover_core::http::tls::serve_tls`]), which bounds request headers (10 s) and
//! bodies (30 s, then 408) and gives each request its client address; the
//! authenticator throttles failed authentication per address (429 `auth_throttled`
//! with `Retry-After`). Admin bodies are at most 64 KiB (413 `payload_too_large`) and
//! must be `application/json` (415 `unsupported_media_type`).

use axum::Router;
use failover_core::http::metrics::pool_gauges;
use failover_core::http::{Authenticator, Ops, Role};
use failover_core::postgres::PgPool;
use failover_core::HealthRegistry;
use fencing::LeaseFencer;
use killswitch::{KillSwitch, KillSwitchStore};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use symbol_mode::{SymbolModeStore, SymbolModes};

/// The lease store and, for PostgreSQL, the same store for its trail.
pub type Leases = (
    Arc<dyn LeaseFencer>,
    Option<Arc<fencing::PostgresLeaseFencer>>,
);

/// What the routes need.
#[derive(Clone)]
pub struct AdminState {
    /// The kill switch store (source of truth).
    pub kill_store: Arc<dyn KillSwitchStore>,
    /// The hot-path handle, for what the order path answers now.
    pub kill_switch: KillSwitch,
    /// The symbol mode store (source of truth).
    pub mode_store: Arc<dyn SymbolModeStore>,
    /// The hot-path symbol mode snapshot.
    pub modes: SymbolModes,
    /// The lease store and, for PostgreSQL, its trail.
    pub leases: Option<Leases>,
    /// Every component's health.
    pub health: HealthRegistry,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
    /// Who may call the admin routes.
    pub auth: Authenticator,
    /// PostgreSQL pools by health component name (`kill_switch`, `symbol_mode`,
    /// `fencing`), for the `pg_pool_*` gauges and "which server answered".
    pub pools: Vec<(&'static str, PgPool)>,
    /// How often overdue approval requests are closed as `expired` (with a
    /// PostgreSQL pool; [`EXPIRY_SWEEP`] unless a test wants it sooner).
    pub expiry_sweep: std::time::Duration,
}

/// How often the service closes overdue approval requests, by default.
pub const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// The router with every route: admin routes behind authentication, probes and
/// metrics open.
pub fn router(state: AdminState) -> Router {
    let pool_of = |name: &str| {
        state
            .pools
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
    };
    let mut kill = killswitch::http::KillSwitchRoutes::new(state.kill_store.clone())
        .with_handle(state.kill_switch.clone());
    if let Some(pool) = pool_of(killswitch::HEALTH_COMPONENT) {
        kill = kill.with_pool(pool);
    }
    let mut admin = Router::new().merge(kill.router()).merge(
        symbol_mode::http::SymbolModeRoutes::new(state.mode_store.clone())
            .with_handle(state.modes.clone())
            .router(),
    );
    // Four eyes live beside the controls in PostgreSQL; memory stores have none.
    if let Some(pool) =
        pool_of(killswitch::HEALTH_COMPONENT).or_else(|| pool_of(symbol_mode::HEALTH_COMPONENT))
    {
        let approvals = Arc::new(failover_core::approvals::PostgresApprovals::new(pool));
        // Overdue requests close as `expired`, each an entry of the audit log, even
        // when nobody lists or approves them; the sweep ends with the runtime.
        tokio::spawn(failover_core::approvals::run_expiry_sweep(
            approvals.clone(),
            state.expiry_sweep,
            "admin-service",
        ));
        admin =
            admin.merge(failover_core::http::approvals::ApprovalRoutes::new(approvals).router());
    }
    // Scopes live beside the kill switch, their root, in its database. The service
    // also holds a scope handle, as an engine would, for its gauges.
    let mut scope_handle = None;
    if let Some(pool) = pool_of(killswitch::HEALTH_COMPONENT) {
        let scopes = Arc::new(killswitch::PostgresScopeStore::from_pool(pool));
        scope_handle = Some(killswitch::scope::ScopeModes::spawn(
            scopes.clone(),
            state.kill_switch.clone(),
            killswitch::scope::ScopeModesConfig::default(),
        ));
        admin = admin.merge(
            killswitch::scope::http::ScopeRoutes::new(scopes, state.kill_store.clone()).router(),
        );
    }
    if let Some((fencer, trail)) = &state.leases {
        let mut routes = fencing::http::LeaseRoutes::new(fencer.clone());
        if let Some(trail) = trail {
            routes = routes.with_history(trail.clone());
        }
        admin = admin.merge(routes.router());
    }
    let mut ops = Ops::new(state.health.clone())
        .with_prometheus(state.prometheus.clone())
        .with_collector(killswitch::http::gauges(state.kill_switch.clone()))
        .with_collector(symbol_mode::http::gauges(state.modes.clone()));
    if let Some(handle) = scope_handle {
        ops = ops.with_collector(killswitch::scope::http::gauges(handle));
    }
    for (name, pool) in &state.pools {
        ops = ops.with_collector(pool_gauges(name, pool.clone()));
    }
    state.auth.clone().protect(admin).merge(ops.router())
}

/// Installs the process-wide Prometheus recorder once (histograms in seconds, `# HELP`
/// for every metric); later calls return the same handle.
pub fn prometheus() -> Option<PrometheusHandle> {
    let handle = failover_core::http::metrics::install_prometheus();
    killswitch::http::describe_metrics();
    symbol_mode::http::describe_metrics();
    describe_fencing_metrics();
    handle
}

fn describe_fencing_metrics() {
    metrics::describe_counter!(
        "fencing_writes_refused_total",
        "Fenced writes refused with FENCING_TOKEN (a stale leader)"
    );
    metrics::describe_counter!(
        "fencing_split_brain_anomalies_total",
        "Split-brain anomalies flagged by the detector"
    );
    metrics::describe_counter!(
        "fencing_elector_transitions_total",
        "Leader elector transitions, by target state"
    );
    metrics::counter!("fencing_writes_refused_total").absolute(0);
    metrics::counter!("fencing_split_brain_anomalies_total").absolute(0);
}

/// How the example authenticates callers, decided from the environment.
#[derive(Debug)]
pub struct AuthSetup {
    /// The authenticator.
    pub auth: Authenticator,
    /// A development token generated for a loopback address (print it once).
    pub development_token: Option<String>,
}

/// Principals from `ADMIN_TOKENS_FILE` / `ADMIN_TOKENS`; when neither is set and
/// `tls_client_certs` is false, a loopback `addr` gets a generated development token
/// (supervisor, actor `dev:<user>`) and any other address is refused with an error
/// saying what to configure.
pub fn auth_setup(addr: SocketAddr, tls_client_certs: bool) -> Result<AuthSetup, String> {
    if let Some(auth) = Authenticator::from_env() {
        return Ok(AuthSetup {
            auth,
            development_token: None,
        });
    }
    if tls_client_certs {
        return Err(
            "client certificates map to identities through `cn:` lines of the principals file: set ADMIN_TOKENS_FILE".into(),
        );
    }
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without authentication: set ADMIN_TOKENS_FILE (lines `ROLE ACTOR SHA256HEX`, ROLE viewer|operator|supervisor) or ADMIN_TOKENS, or listen on 127.0.0.1"
        ));
    }
    let (auth, token) = Authenticator::development(
        Role::Supervisor,
        &format!(
            "dev:{}",
            whoami::username().unwrap_or_else(|_| "local".into())
        ),
    );
    Ok(AuthSetup {
        auth,
        development_token: Some(token),
    })
}
