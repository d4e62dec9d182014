//! An engine's smallest shape for the receipt: one kill switch handle that reports the
//! position it applies, and — with `--scope-leaves` — the scoped controls too.
//! `safetyctl kill-switch engage --wait` and `safetyctl scope set … --wait` count every
//! such process.
//!
//! ```text
//! TRADEPULSE_KILL_SWITCH_POSTGRES__DSN='host=… dbname=…' \
//!     cargo run --example receipt-follower -- [--name NAME] \
//!         [--scope-leaves PREFIX [--leaves N]]
//! ```
//!
//! * Without `--scope-leaves` (the kill switch mode): one kill switch handle built
//!   with receipts.
//! * With `--scope-leaves PREFIX` (the scope mode): the same kill switch handle, and a
//!   `ScopeModes` handle built with receipts over the scopes in the kill switch's
//!   database, rooted in that kill switch handle, holding one leaf gate for each of
//!   `PREFIX0` … `PREFIX{N-1}` (`--leaves`, default 100; e.g. `--scope-leaves
//!   acme/eq/mm-1/acct-` gates `acme/eq/mm-1/acct-0` … `acct-99`). Those scopes must
//!   exist (`safetyctl scope create`).
//!
//! Prints `ready <process id> <pid>` once the handles loaded the state, the gates are
//! held and the first receipts are written. Then `trading <Allowed|Halted(..)> at
//! <position>` whenever what the kill switch handle's hot path answers changes, and in
//! the scope mode `gates <MODE>=<count>… at <position>` (e.g. `gates HALTED=100 at
//! 1/17`) at start and whenever the effective modes the leaf gates answer change,
//! `<position>` being the scope position the handle holds then. It ends when its
//! standard input closes (so a parent that dies takes it along), or on Ctrl-C.

use failover_core::Receipts;
use killswitch::scope::{ScopeGate, ScopeMode, ScopeModes, ScopeModesConfig};
use killswitch::{KillSwitch, KillSwitchConfig, PostgresKillSwitchStore, PostgresScopeStore};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How many leaf gates the scope mode holds unless `--leaves` says otherwise.
const DEFAULT_LEAVES: usize = 100;

/// The value after `flag`, if given.
fn flag(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `<MODE>=<count>` for every mode some gate answers, least strict first.
fn gate_modes(gates: &[ScopeGate]) -> String {
    ScopeMode::ALL
        .iter()
        .filter_map(|&mode| {
            let count = gates.iter().filter(|g| g.mode() == mode).count();
            (count > 0).then(|| format!("{}={count}", mode.as_str()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tradepulse_examples::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let name = flag(&args, "--name");
    let scope_prefix = flag(&args, "--scope-leaves");
    let leaves = match flag(&args, "--leaves") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|e| format!("--leaves {n}: {e}; give a count, e.g. --leaves 100"))?,
        None => DEFAULT_LEAVES,
    };
    let store = PostgresKillSwitchStore::from_env()?;
    let pool = store.pool().clone();
    let mut builder = Receipts::builder();
    if let Some(name) = name {
        builder = builder.process_name(name);
    }
    let receipts = builder.postgres(pool.clone());
    let handle =
        KillSwitch::spawn(Arc::new(store), KillSwitchConfig::default()).with_receipts(&receipts);
    if !handle.ready(Duration::from_secs(10)).await {
        return Err("the kill switch state did not load within 10 s: is the DSN right and the schema migrated (safetyctl migrate)?".into());
    }

    // The scope mode: one gate per leaf, as an order path holds them.
    let mut gates = Vec::new();
    let scopes = match &scope_prefix {
        Some(prefix) => {
            // The scopes live in the kill switch's database: one pool for both.
            let scopes = ScopeModes::spawn(
                Arc::new(PostgresScopeStore::from_pool(pool)),
                handle.clone(),
                ScopeModesConfig::default(),
            )
            .with_receipts(&receipts);
            if !scopes.ready(Duration::from_secs(10)).await {
                return Err("the scopes did not load within 10 s: is the DSN right and the schema migrated (safetyctl migrate)?".into());
            }
            for i in 0..leaves {
                let leaf = format!("{prefix}{i}");
                let gate = scopes.gate(&[&leaf]).map_err(|e| {
                    format!("no gate for {leaf}: {e}; create the leaves first (safetyctl scope create {leaf})")
                })?;
                gates.push(gate);
            }
            Some(scopes)
        }
        None => None,
    };
    receipts.flush_now().await?;
    println!(
        "ready {} {}",
        receipts.identity().process_id,
        std::process::id()
    );

    // Any gate's change wakes the loop, which prints the gates' modes when they moved.
    let gates_changed = Arc::new(Notify::new());
    for gate in &gates {
        let mut told = gate.subscribe();
        let wake = gates_changed.clone();
        tokio::spawn(async move {
            while told.changed().await.is_ok() {
                wake.notify_one();
            }
        });
    }
    let position = |scopes: &ScopeModes| scopes.status().position;
    let mut shown = String::new();
    if let Some(scopes) = &scopes {
        shown = gate_modes(&gates);
        println!("gates {shown} at {}", position(scopes));
    }

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
            () = gates_changed.notified() => {
                let now = gate_modes(&gates);
                if let Some(scopes) = scopes.as_ref().filter(|_| now != shown) {
                    println!("gates {now} at {}", position(scopes));
                    shown = now;
                }
            }
        }
    }
    Ok(())
}
