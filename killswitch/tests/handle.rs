//! The hot-path handle's fail-closed rules, with tokio's paused clock. The store is
//! the in-memory one behind a switch that makes it unreachable, like a dead database.

use failover_core::{ComponentStatus, DbError, DbErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tradepulse_killswitch::{
    Applied, Audit, Error, FeedSource, Halt, KillSwitch, KillSwitchConfig, KillSwitchEvent,
    KillSwitchState, KillSwitchStore, MemoryKillSwitchStore, Position, Subscription, Trading,
};

#[derive(Debug, Default)]
struct Unreachable {
    inner: MemoryKillSwitchStore,
    down: AtomicBool,
}

impl Unreachable {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            let source = DbError::new(
                DbErrorKind::Unavailable,
                "kill_switch.load",
                None,
                "error connecting to server: Connection refused (os error 111)".into(),
            );
            return Err(Error::Unavailable { source });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl KillSwitchStore for Unreachable {
    async fn load(&self) -> Result<KillSwitchState, Error> {
        self.check()?;
        self.inner.load().await
    }
    async fn engage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.check()?;
        self.inner.engage(audit).await
    }
    async fn disengage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.check()?;
        self.inner.disengage(audit).await
    }
    async fn history(&self, limit: usize) -> Result<Vec<KillSwitchEvent>, Error> {
        self.check()?;
        self.inner.history(limit).await
    }
}

#[async_trait::async_trait]
impl FeedSource for Unreachable {
    type Item = KillSwitchState;
    type Error = Error;
    async fn contains(&self, position: Position) -> Result<bool, Error> {
        self.check()?;
        self.inner.contains(position).await
    }
    async fn subscribe(&self) -> Result<Subscription, Error> {
        self.check()?;
        self.inner.subscribe().await
    }
    fn unreachable(&self) -> Option<String> {
        self.down
            .load(Ordering::SeqCst)
            .then(|| "connection refused: 127.0.0.1:5432".to_owned())
    }
}

#[tokio::test(start_paused = true)]
async fn halts_before_the_first_successful_load() {
    let store = Arc::new(Unreachable::default());
    store.down.store(true, Ordering::SeqCst);
    let switch = KillSwitch::spawn(store.clone(), KillSwitchConfig::default());
    assert_eq!(switch.check(), Err(Halt::NotLoaded));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(switch.check(), Err(Halt::NotLoaded));
    let health = switch.health();
    assert_eq!(health.status, ComponentStatus::Failed);
    assert!(health.details.unwrap().contains("connection refused"));
    store.down.store(false, Ordering::SeqCst);
    assert!(switch.ready(Duration::from_secs(5)).await);
    assert_eq!(switch.trading(), Trading::Allowed);
    assert_eq!(switch.health().status, ComponentStatus::Operational);
}

#[tokio::test(start_paused = true)]
async fn engagement_is_pushed_without_waiting_for_the_poll() {
    let store = Arc::new(MemoryKillSwitchStore::new());
    let switch = KillSwitch::spawn(
        store.clone(),
        KillSwitchConfig::default().with_poll_interval(Duration::from_secs(3600)),
    );
    assert!(switch.ready(Duration::from_secs(1)).await);
    assert_eq!(switch.trading(), Trading::Allowed);
    let mut pushed = switch.subscribe();
    store.engage(&Audit::new("ops", "halt now")).await.unwrap();
    tokio::time::timeout(
        Duration::from_millis(50),
        pushed.wait_for(|t| t.is_halted()),
    )
    .await
    .expect("pushed long before the next poll")
    .unwrap();
    assert_eq!(switch.check(), Err(Halt::Engaged));
    assert_eq!(switch.status().state.unwrap().reason, "halt now");
}

#[tokio::test(start_paused = true)]
async fn serves_the_last_state_within_the_window_then_fails_closed_then_recovers() {
    let store = Arc::new(Unreachable::default());
    let switch = KillSwitch::spawn(store.clone(), KillSwitchConfig::default());
    assert!(switch.ready(Duration::from_secs(1)).await);
    assert_eq!(switch.trading(), Trading::Allowed);

    store.down.store(true, Ordering::SeqCst);
    // Health says `failed` at once — the store cannot be reached now — while the hot
    // path keeps serving the last known state.
    let health = switch.health();
    assert_eq!(health.status, ComponentStatus::Failed, "{health:?}");
    assert!(health.details.unwrap().contains("connection refused"));
    tokio::time::sleep(Duration::from_secs(4 * 60)).await;
    assert_eq!(
        switch.check(),
        Ok(()),
        "within the 5-minute window the last state serves"
    );
    let health = switch.health();
    assert_eq!(health.status, ComponentStatus::Failed);
    assert!(health.details.unwrap().contains("connection refused"));

    tokio::time::sleep(Duration::from_secs(61 + 1)).await;
    assert_eq!(
        switch.check(),
        Err(Halt::Stale),
        "past the window it fails closed"
    );
    assert_eq!(switch.health().status, ComponentStatus::Failed);

    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(switch.check(), Ok(()));
    assert_eq!(switch.health().status, ComponentStatus::Operational);
}

#[tokio::test(start_paused = true)]
async fn an_engaged_switch_stays_halted_when_it_goes_stale() {
    let store = Arc::new(Unreachable::default());
    store
        .inner
        .engage(&Audit::new("ops", "stop"))
        .await
        .unwrap();
    let switch = KillSwitch::spawn(store.clone(), KillSwitchConfig::default());
    switch.ready(Duration::from_secs(1)).await;
    assert_eq!(switch.check(), Err(Halt::Engaged));
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    assert_eq!(switch.check(), Err(Halt::Stale));
}

/// Poll at 1 h: only push (and the resync after a reconnect) can tell the handle.
fn push_only() -> KillSwitchConfig {
    KillSwitchConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}

#[tokio::test(start_paused = true)]
async fn a_lost_disengage_halts_the_running_handle_again_at_once() {
    let store = Arc::new(MemoryKillSwitchStore::new());
    store.engage(&Audit::new("ops", "incident")).await.unwrap();
    let switch = KillSwitch::spawn(store.clone(), push_only());
    assert!(switch.ready(Duration::from_secs(1)).await);
    assert_eq!(switch.trading(), Trading::Halted(Halt::Engaged));
    store
        .disengage(&Audit::new("ops", "resolved").with_ticket("INC-1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(switch.check(), Ok(()), "the disengage reached the handle");

    // The primary dies before the disengage replicates: the promoted replica holds
    // the engage. The database of record wins.
    let lost = store.simulate_lossy_failover(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        switch.check(),
        Err(Halt::Engaged),
        "lost relaxation: halted again"
    );
    let health = switch.health();
    assert_eq!(health.status, ComponentStatus::Degraded, "{health:?}");
    let details = health.details.unwrap();
    assert!(
        details.contains("diverged") && details.contains(&lost[0].to_string()),
        "{details}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_engage_on_the_new_timeline_beats_newer_versions_that_were_lost() {
    let store = Arc::new(MemoryKillSwitchStore::new());
    let relax = |n: u32| Audit::new("ops", format!("resume {n}")).with_ticket("INC-2");
    store.engage(&Audit::new("ops", "a")).await.unwrap();
    store.disengage(&relax(1)).await.unwrap();
    let switch = KillSwitch::spawn(store.clone(), push_only());
    assert!(switch.ready(Duration::from_secs(1)).await);
    assert_eq!(switch.trading(), Trading::Allowed);
    store.engage(&Audit::new("ops", "b")).await.unwrap();
    store.disengage(&relax(2)).await.unwrap(); // version 4, will be lost
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(switch.status().state.unwrap().version, 4);

    // Failover back to version 2 (disengaged: nothing to notice), then an engage on
    // the new primary reaches version 3 — below the handle's lost version 4.
    store.simulate_lossy_failover(2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(switch.check(), Ok(()));
    let engaged = store
        .engage(&Audit::new("ops", "halt on the new primary"))
        .await
        .unwrap();
    assert_eq!(engaged.version, 3);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        switch.check(),
        Err(Halt::Engaged),
        "position {} beats the lost version 4",
        engaged.position
    );
    assert_eq!(switch.status().state.unwrap().position, engaged.position);
}
