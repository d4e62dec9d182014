//! A small order loop gated by the kill switch.
//!
//! In memory (default):   cargo run --example order-loop
//! On PostgreSQL:         TRADEPULSE_KILL_SWITCH_POSTGRES__DSN='host=… dbname=…' \
//!                        cargo run --example order-loop -- --postgres

use killswitch::{KillSwitchStore, MemoryKillSwitchStore};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tradepulse_examples::logging::init();
    let postgres = std::env::args().any(|a| a == "--postgres");
    let store: Arc<dyn KillSwitchStore> = if postgres {
        let store = killswitch::PostgresKillSwitchStore::from_env()?;
        store.migrate().await?;
        println!("store: PostgreSQL {}", store.pool().settings());
        Arc::new(store)
    } else {
        println!("store: in memory (pass --postgres to use TRADEPULSE_KILL_SWITCH_POSTGRES__DSN)");
        Arc::new(MemoryKillSwitchStore::new())
    };
    let summary =
        tradepulse_examples::order_loop::run(store, 90, |line| println!("{line}")).await?;
    println!(
        "summary: {} accepted, {} rejected while halted, {} working orders cancelled on halt",
        summary.accepted, summary.rejected, summary.cancelled_on_halt
    );
    println!("audit trail (newest first):");
    for (version, action, actor, reason) in &summary.audit {
        println!("  v{version}: {action} by {actor}: {reason}");
    }
    Ok(())
}
