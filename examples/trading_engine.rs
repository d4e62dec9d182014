//! An order gateway and a tiny matching engine playing a scripted incident: every
//! order gated by the kill switch and the effective symbol mode, fills fenced by the
//! leading engine's token.
//!
//! In memory (default):   cargo run --example trading-engine
//! On PostgreSQL:         cargo run --example trading-engine -- --postgres 'host=… dbname=…'
//!   or, with each store's env settings (TRADEPULSE_KILL_SWITCH_POSTGRES__DSN,
//!   TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN, TRADEPULSE_FENCING_POSTGRES__DSN):
//!                        cargo run --example trading-engine -- --postgres

use failover_core::postgres::PgSettings;
use tradepulse_examples::trading_engine::{run, Stores};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tradepulse_examples::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stores = match args.iter().position(|a| a == "--postgres") {
        None => {
            println!("stores: in memory (pass --postgres [DSN] for PostgreSQL)");
            Stores::memory()
        }
        Some(i) => match args.get(i + 1) {
            Some(dsn) => {
                let settings = PgSettings::builder().with_dsn(dsn).build()?;
                println!("stores: PostgreSQL {settings}");
                Stores::postgres(settings).await?
            }
            None => {
                println!("stores: PostgreSQL from TRADEPULSE_*_POSTGRES__* settings");
                Stores::postgres_from_env().await?
            }
        },
    };
    let summary = run(stores, |line| println!("{line}")).await?;
    println!();
    println!("summary:");
    println!(
        "  orders accepted                      {}",
        summary.accepted
    );
    println!(
        "  refused by the kill switch           {}",
        summary.refused_by_kill_switch
    );
    println!(
        "  refused by the effective symbol mode {}",
        summary.refused_by_mode
    );
    println!("  trader cancels                       {}", summary.cancels);
    println!(
        "  cancelled by CancelAll(symbol)       {}",
        summary.cancelled_by_cancel_all
    );
    println!(
        "  cancelled when the kill switch fired {}",
        summary.cancelled_by_kill_switch
    );
    for (engine, n) in &summary.fills_by_engine {
        println!("  fills written by {engine:<19} {n}");
    }
    println!(
        "  stale fills refused (FENCING_TOKEN)  {}",
        summary.stale_fills_refused
    );
    println!(
        "  audit events                         {}",
        summary.audit_events
    );
    Ok(())
}
