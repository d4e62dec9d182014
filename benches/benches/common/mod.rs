//! What several benches share: included with `#[path]` (a bench target cannot use
//! the benches package's library, which has no dev-dependencies). Each bench uses a
//! part of it.
#![allow(dead_code)]

use killswitch::{
    Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore,
    PostgresKillSwitchStore, Trading,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A kill-switch handle over the in-memory store, loaded and allowing trading: what
/// the hot-path benches measure.
pub(crate) fn ready_memory_switch(runtime: &tokio::runtime::Runtime) -> KillSwitch {
    runtime.block_on(async {
        let switch = KillSwitch::spawn(
            Arc::new(MemoryKillSwitchStore::new()),
            KillSwitchConfig::default(),
        );
        assert!(switch.ready(Duration::from_secs(5)).await);
        assert_eq!(switch.trading(), Trading::Allowed);
        switch
    })
}

/// The polling baseline's reader: the same store with push switched off.
#[derive(Debug)]
pub(crate) struct PollOnly(pub(crate) PostgresKillSwitchStore);
#[async_trait::async_trait]
impl KillSwitchStore for PollOnly {
    async fn load(&self) -> Result<killswitch::KillSwitchState, killswitch::Error> {
        self.0.load().await
    }
    async fn engage(
        &self,
        a: &Audit,
    ) -> Result<killswitch::Applied<killswitch::KillSwitchState>, killswitch::Error> {
        self.0.engage(a).await
    }
    async fn disengage(
        &self,
        a: &Audit,
    ) -> Result<killswitch::Applied<killswitch::KillSwitchState>, killswitch::Error> {
        self.0.disengage(a).await
    }
    async fn history(
        &self,
        n: usize,
    ) -> Result<Vec<killswitch::KillSwitchEvent>, killswitch::Error> {
        self.0.history(n).await
    }
}

#[async_trait::async_trait]
impl killswitch::FeedSource for PollOnly {
    type Item = killswitch::KillSwitchState;
    type Error = killswitch::Error;
    async fn contains(&self, p: killswitch::Position) -> Result<bool, killswitch::Error> {
        self.0.contains(p).await
    }
    async fn subscribe(&self) -> Result<killswitch::Subscription, killswitch::Error> {
        Err(killswitch::Error::Closed)
    }
}

/// The `p` quantile (0..=1) of sorted samples; zero when there are none.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Milliseconds with two decimals.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Backends in `db` on `node` (without the counting connection itself), and how many
/// of them are push (`*_listen`) connections.
pub(crate) async fn connections(node: &tradepulse_testkit::Node, db: &str) -> (usize, usize) {
    let rows = node
        .query(
            "postgres",
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE application_name LIKE '%\\_listen') \
                 FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ),
        )
        .await
        .expect("pg_stat_activity");
    let get = |i: usize| {
        rows[0][i]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get(0), get(1))
}

/// Wall-clock nanoseconds since the epoch: how observation times cross processes.
pub(crate) fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}
