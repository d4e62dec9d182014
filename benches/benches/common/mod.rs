//! What several benches share: included with `#[path]` (a bench target cannot use
//! the benches package's library, which has no dev-dependencies). Each bench uses a
//! part of it.
#![allow(dead_code)]

use killswitch::{
    Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore,
    PostgresKillSwitchStore, Trading,
};
use std::sync::Arc;
use std::time::Duration;

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
