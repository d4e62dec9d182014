//! A store of one positioned value with its history, for the unit tests of what
//! follows a store (the watcher, the handle kit).

use crate::feed::{ChangeFeed, FeedSource, FeedSubscription};
use crate::position::Position;
use crate::watcher::WatchConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The settings the unit tests follow a store with: stale after 10 s, polled every 1 s.
pub(crate) fn config() -> WatchConfig {
    WatchConfig::default()
        .with_staleness_window(Duration::from_secs(10))
        .with_poll_interval(Duration::from_secs(1))
}

/// The value, every value it held (its history), and its feed of positions.
#[derive(Default)]
pub(crate) struct OneValue {
    /// Reachable; reads fail while false.
    pub(crate) up: AtomicBool,
    /// The value and its history.
    pub(crate) value: Mutex<(Position, Vec<Position>)>,
    /// What subscribers are told.
    pub(crate) feed: ChangeFeed<Position>,
    /// The history check fails (the new primary is still starting up, say).
    pub(crate) history_down: AtomicBool,
    /// The store's retry budget, when it has one.
    pub(crate) retry_budget: Option<Duration>,
}

impl OneValue {
    /// Reachable, holding `p`.
    pub(crate) fn up_at(&self, p: Position) {
        self.up.store(true, Ordering::SeqCst);
        self.write(p);
    }

    /// Writes `p` and tells subscribers.
    pub(crate) fn write(&self, p: Position) {
        let mut v = self.value.lock().unwrap();
        v.0 = p;
        v.1.push(p);
        drop(v);
        self.feed.publish(p);
    }

    /// Reads the value, or fails as an unreachable store does.
    pub(crate) fn read(&self) -> Result<Position, String> {
        if self.up.load(Ordering::SeqCst) {
            Ok(self.value.lock().unwrap().0)
        } else {
            Err("connection refused".into())
        }
    }
}

#[async_trait::async_trait]
impl FeedSource for OneValue {
    type Item = Position;
    type Error = String;

    async fn subscribe(&self) -> Result<FeedSubscription<Position>, String> {
        Ok(self.feed.subscribe())
    }

    async fn contains(&self, p: Position) -> Result<bool, String> {
        if self.history_down.load(Ordering::SeqCst) {
            return Err("the database system is starting up".into());
        }
        Ok(self.value.lock().unwrap().1.contains(&p))
    }

    fn unreachable(&self) -> Option<String> {
        (!self.up.load(Ordering::SeqCst)).then(|| "connection refused".into())
    }

    fn retry_budget(&self) -> Option<Duration> {
        self.retry_budget
    }
}
