//! A small order loop that consults the kill switch on every order.
//!
//! The script: orders flow; an operator engages the kill switch; the engine, told by
//! the handle's push, cancels every working order at once and rejects new ones; the
//! operator disengages with a ticket; orders flow again.

use killswitch::{Audit, Halt, KillSwitch, KillSwitchConfig, KillSwitchStore, Trading};
use std::sync::Arc;
use std::time::Duration;

/// What happened, for the summary line and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Orders accepted while trading was allowed.
    pub accepted: usize,
    /// Orders rejected because the kill switch said halted.
    pub rejected: usize,
    /// Working orders cancelled when the halt was pushed.
    pub cancelled_on_halt: usize,
    /// Audit events recorded by the store, newest first: (version, action, actor, reason).
    pub audit: Vec<(u64, String, String, String)>,
}

/// Runs the script against `store`, printing a timeline through `out`.
pub async fn run(
    store: Arc<dyn KillSwitchStore>,
    orders: usize,
    mut out: impl FnMut(String),
) -> Result<Summary, Box<dyn std::error::Error + Send + Sync>> {
    let switch = KillSwitch::spawn(store.clone(), KillSwitchConfig::default());
    let loaded = switch.ready(Duration::from_secs(10)).await;
    if !loaded || switch.trading() != Trading::Allowed {
        return Err(format!(
            "kill switch not ready: {:?} ({:?})",
            switch.trading(),
            switch.health().details
        )
        .into());
    }
    let mut pushed = switch.subscribe();
    let mut summary = Summary::default();
    let mut working: Vec<usize> = Vec::new();
    let engage_at = orders / 3;
    let resume_at = 2 * orders / 3;

    for id in 1..=orders {
        if id == engage_at {
            out(format!("order {id:>3}: operator engages the kill switch"));
            store
                .engage(&Audit::new("ops:alice", "runaway strategy detected"))
                .await?;
            // The engine reacts to the push, not to the next order.
            pushed.wait_for(|t| t.is_halted()).await?;
            summary.cancelled_on_halt = working.len();
            out(format!(
                "           push received: halted, cancelling {} working orders",
                working.len()
            ));
            working.clear();
        }
        if id == resume_at {
            out(format!(
                "order {id:>3}: operator disengages with ticket INC-2041"
            ));
            store
                .disengage(&Audit::new("ops:alice", "strategy fixed").with_ticket("INC-2041"))
                .await?;
            pushed.wait_for(|t| !t.is_halted()).await?;
            out("           push received: trading allowed".to_string());
        }
        // The hot path: one atomic load per order.
        match switch.check() {
            Ok(()) => {
                summary.accepted += 1;
                working.push(id);
            }
            Err(Halt::Engaged | Halt::Stale | Halt::NotLoaded) => summary.rejected += 1,
        }
    }
    summary.audit = store
        .history(10)
        .await?
        .into_iter()
        .map(|e| (e.version, e.action.to_string(), e.actor, e.reason))
        .collect();
    Ok(summary)
}
