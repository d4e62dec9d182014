//! The freshness heartbeat (opt-in): what makes an operator's freshness check
//! (`SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;` and the
//! age of `updated_at`) meaningful.
//!
//! `kill_switch_state.updated_at` means **the last time the primary confirmed this
//! row**: set by every change and, when a heartbeat runs, refreshed every interval
//! *without* a version bump, an audit row or a NOTIFY. The heartbeat's write is
//! replicated like any other, so on a promoted replica
//!
//! ```sql
//! SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;
//! ```
//!
//! tells how fresh its copy is: `now() - updated_at` at most the interval plus the
//! replication lag. When the switch last *changed* is in the audit trail
//! (`kill_switch_events.at`, `safetyctl kill-switch history`). Without a heartbeat,
//! `updated_at` is the time of the last change, which says nothing about freshness.

use crate::postgres::PostgresKillSwitchStore;
use crate::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A sensible heartbeat interval: well inside the 5-minute staleness window.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

impl PostgresKillSwitchStore {
    /// Refreshes `updated_at` of the state row to the primary's clock (no version
    /// bump, no audit row, no NOTIFY) and returns it.
    pub async fn heartbeat(&self) -> Result<SystemTime, Error> {
        let at = self
            .pool()
            .query_one(
                "kill_switch.heartbeat",
                "SELECT kill_switch_heartbeat()",
                &[],
            )
            .await?
            .get::<_, Option<SystemTime>>(0);
        at.ok_or_else(|| Error::SchemaMissing {
            source: failover_core::DbError::new(
                failover_core::DbErrorKind::SchemaMissing,
                "kill_switch.heartbeat",
                None,
                "kill_switch_state has no row id = 1".into(),
            ),
        })
    }

    /// Runs [`heartbeat`](Self::heartbeat) every `every` until the task is aborted; a
    /// failure is logged and retried at the next tick.
    pub fn spawn_heartbeat(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.heartbeat().await {
                    tracing::warn!(error = %e, "kill switch heartbeat failed; updated_at will look stale until it succeeds");
                }
            }
        })
    }
}
