//! The admin HTTP API for operators: `/healthz`, `/health`, `/ready`, `/livez`,
//! `/metrics` (open) and the authenticated `/admin/…` routes of every control.
//!
//! In memory (default):   cargo run --example admin-http
//! On PostgreSQL:         TRADEPULSE_KILL_SWITCH_POSTGRES__DSN='host=… dbname=…' \
//!                        TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN='host=… dbname=…' \
//!                        TRADEPULSE_FENCING_POSTGRES__DSN='host=… dbname=…' (optional) \
//!                        cargo run --example admin-http -- --postgres [--heartbeat]
//! Listen address:        ADMIN_ADDR (default 127.0.0.1:8080)
//! Who may call:          ADMIN_TOKENS_FILE (lines `ROLE ACTOR SHA256HEX` or `ROLE ACTOR cn:NAME`,
//!                        re-read when it changes) or ADMIN_TOKENS; without either the
//!                        example prints a development token and listens on loopback only.
//! mTLS:                  ADMIN_TLS_CERT_FILE, ADMIN_TLS_KEY_FILE, ADMIN_TLS_CLIENT_CA_FILE
//! Logs:                  RUST_LOG, LOG_FORMAT=json
//! Abuse bounds:          20 failed authentications a minute per client address (then 429),
//!                        request headers within 10 s, bodies within 30 s and at most 64 KiB

use failover_core::http::tls::{serve_tls_with_shutdown, server_config, ClientAuth};
use failover_core::http::{serve_with_shutdown, ServeLimits};
use failover_core::HealthRegistry;
use fencing::LeaseFencer;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use symbol_mode::{MemorySymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tradepulse_examples::admin_http::{auth_setup, prometheus, router, AdminState, EXPIRY_SWEEP};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tradepulse_examples::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = std::env::var("ADMIN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| format!("ADMIN_ADDR: {e}; give an address like 127.0.0.1:8080"))?;
    let tls_file = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let tls = match (
        tls_file("ADMIN_TLS_CERT_FILE"),
        tls_file("ADMIN_TLS_KEY_FILE"),
    ) {
        (Some(cert), Some(key)) => {
            let ca = tls_file("ADMIN_TLS_CLIENT_CA_FILE");
            let policy = if ca.is_some() {
                ClientAuth::Optional
            } else {
                ClientAuth::None
            };
            Some(server_config(&cert, &key, ca.as_deref(), policy)?)
        }
        (None, None) => None,
        _ => return Err("set both ADMIN_TLS_CERT_FILE and ADMIN_TLS_KEY_FILE, or neither".into()),
    };
    let setup = auth_setup(addr, false)?;
    let prometheus = prometheus();
    let mut pools = Vec::new();
    let mut leases = None;
    let mut heartbeat = None;
    let (kill_store, mode_store): (Arc<dyn KillSwitchStore>, Arc<dyn SymbolModeStore>) =
        if args.iter().any(|a| a == "--postgres") {
            let kill = Arc::new(killswitch::PostgresKillSwitchStateStore::from_env()?);
            kill.migrate().await?;
            pools.push((killswitch::HEALTH_COMPONENT, kill.pool().clone()));
            if args.iter().any(|a| a == "--heartbeat") {
                heartbeat = Some(
                    kill.clone()
                        .spawn_heartbeat(killswitch::heartbeat::DEFAULT_HEARTBEAT),
                );
            }
            let modes = symbol_mode::PostgresSymbolModeStore::from_env()?;
            modes.migrate().await?;
            pools.push((symbol_mode::HEALTH_COMPONENT, modes.pool().clone()));
            if std::env::var_os("TRADEPULSE_FENCING_POSTGRES__DSN").is_some() {
                let fencer = Arc::new(fencing::PostgresLeaseFencer::from_env()?);
                fencer.migrate().await?;
                pools.push(("fencing", fencer.pool().clone()));
                let dyn_fencer: Arc<dyn LeaseFencer> = fencer.clone();
                leases = Some((dyn_fencer, Some(fencer)));
            }
            (kill, Arc::new(modes))
        } else {
            let fencer: Arc<dyn LeaseFencer> = Arc::new(fencing::MemoryLeaseFencer::new());
            leases = Some((fencer, None));
            (
                Arc::new(MemoryKillSwitchStore::new()),
                Arc::new(MemorySymbolModeStore::new()),
            )
        };
    let kill_switch = KillSwitch::spawn(kill_store.clone(), KillSwitchConfig::default());
    let health = HealthRegistry::new();
    health.register(killswitch::HEALTH_COMPONENT, kill_switch.health_source());
    let modes = SymbolModes::spawn(mode_store.clone(), SymbolModesConfig::default());
    health.register(symbol_mode::HEALTH_COMPONENT, modes.health_source());
    let app = router(AdminState {
        kill_store,
        kill_switch,
        mode_store,
        modes,
        leases,
        health,
        prometheus,
        auth: setup.auth,
        pools,
        expiry_sweep: EXPIRY_SWEEP,
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("admin API on {scheme}://{addr}  (GET /healthz, GET /admin/kill-switch, GET /admin/symbols/BTC-USD/mode, GET /metrics)");
    if let Some(token) = &setup.development_token {
        println!("development token (supervisor; loopback only, valid until exit):\n  export ADMIN_TOKEN={token}\n  curl -H \"Authorization: Bearer $ADMIN_TOKEN\" {scheme}://{addr}/admin/kill-switch");
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Headers within 10 s, bodies within 30 s; failed authentication is throttled per
    // client address by the authenticator.
    let limits = ServeLimits::default();
    match tls {
        Some(config) => serve_tls_with_shutdown(listener, config, app, limits, shutdown).await?,
        None => serve_with_shutdown(listener, app, limits, shutdown).await?,
    }
    if let Some(task) = heartbeat {
        task.abort();
    }
    Ok(())
}
