//! The admin HTTP API for operators: `/healthz`, `/admin/kill-switch`, `/metrics`.
//!
//! In memory (default):   cargo run --example admin-http
//! On PostgreSQL:         TRADEPULSE_KILL_SWITCH_POSTGRES__DSN='host=… dbname=…' \
//!                        TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN='host=… dbname=…' \
//!                        cargo run --example admin-http -- --postgres
//! Listen address:        ADMIN_ADDR (default 127.0.0.1:8080)

use failover_core::postgres::PgStore;
use failover_core::HealthRegistry;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore};
use std::sync::Arc;
use symbol_mode::{MemorySymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tradepulse_examples::admin_http::{prometheus, router, AdminState};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let prometheus = prometheus();
    let (kill_store, mode_store): (Arc<dyn KillSwitchStore>, Arc<dyn SymbolModeStore>) =
        if std::env::args().any(|a| a == "--postgres") {
            let kill = killswitch::PostgresKillSwitchStore::from_env()?;
            kill.migrate().await?;
            let modes = symbol_mode::PostgresSymbolModeStore::from_env()?;
            modes.migrate().await?;
            (Arc::new(kill), Arc::new(modes))
        } else {
            (
                Arc::new(MemoryKillSwitchStore::new()),
                Arc::new(MemorySymbolModeStore::new()),
            )
        };
    let kill_switch = KillSwitch::spawn(kill_store.clone(), KillSwitchConfig::default());
    let health = HealthRegistry::new();
    health.register("kill_switch", kill_switch.health_source());
    let modes = SymbolModes::spawn(mode_store.clone(), SymbolModesConfig::default());
    health.register("symbol_mode", modes.health_source());
    let addr = std::env::var("ADMIN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("admin API on http://{addr}  (GET /healthz, GET /admin/kill-switch, GET /admin/symbols/BTC-USD/mode, GET /metrics)");
    let app = router(AdminState {
        kill_store,
        kill_switch,
        mode_store,
        modes,
        health,
        prometheus,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
