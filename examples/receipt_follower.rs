//! An engine's smallest shape for the receipt: one kill switch handle that reports the
//! position it applies, and nothing else. `safetyctl kill-switch engage --wait` counts
//! every such process.
//!
//! ```text
//! TRADEPULSE_KILL_SWITCH_POSTGRES__DSN='host=… dbname=…' \
//!     cargo run --example receipt-follower -- [--name NAME]
//! ```
//!
//! Prints `ready <process id> <pid>` once the handle loaded the state and its first
//! receipt is written, then `trading <Allowed|Halted(..)> at <position>` whenever what its
//! hot path answers changes. It ends
//! when its standard input closes (so a parent that dies takes it along), or on Ctrl-C.

use failover_core::Receipts;
use killswitch::{KillSwitch, KillSwitchConfig, PostgresKillSwitchStore};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tradepulse_examples::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .position(|a| a == "--name")
        .and_then(|i| args.get(i + 1).cloned());
    let store = PostgresKillSwitchStore::from_env()?;
    let mut builder = Receipts::builder();
    if let Some(name) = name {
        builder = builder.process_name(name);
    }
    let receipts = builder.postgres(store.pool().clone());
    let handle =
        KillSwitch::spawn(Arc::new(store), KillSwitchConfig::default()).with_receipts(&receipts);
    if !handle.ready(Duration::from_secs(10)).await {
        return Err("the kill switch state did not load within 10 s: is the DSN right and the schema migrated (safetyctl migrate)?".into());
    }
    receipts.flush_now().await?;
    println!(
        "ready {} {}",
        receipts.identity().process_id,
        std::process::id()
    );

    // Standard input closing means the parent is gone.
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let mut trading = handle.subscribe();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = tokio::signal::ctrl_c() => break,
            changed = trading.changed() => {
                if changed.is_err() {
                    break;
                }
                let position = handle.status().state.map(|s| s.position).unwrap_or_default();
                println!("trading {:?} at {position}", handle.trading());
            }
        }
    }
    Ok(())
}
