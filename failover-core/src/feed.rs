//! The change feed: how a store tells its readers that something changed — written
//! once, used by every store (memory and PostgreSQL) and every hot-path handle.
//!
//! A [`ChangeFeed`] holds the newest item a store has seen (a whole state, or just a
//! [`Position`]) and fans it out to any number of
//! [`FeedSubscription`]s. It orders by position and by nothing else:
//!
//! * [`publish`](ChangeFeed::publish) passes an item on only when its position is
//!   greater than the feed's: a late answer can never roll readers back;
//! * [`resync`](ChangeFeed::resync) passes an item on *whatever its position* and
//!   makes every subscription deliver it — for the moments when the history itself
//!   may have changed: the push connection (re)connected, possibly to a promoted
//!   replica whose history lost the newest positions. Readers then decide with the
//!   store's history (see [`crate::watcher`]) whether what they hold was lost.
//!
//! The feed also carries whether push works ([`PushStatus`]), so that health can say
//! `degraded` when changes only arrive by polling.

use crate::position::{Position, Positioned};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What every store offers its readers, whatever the control: a change feed, a way
/// to tell whether its history still holds a position, and whether it can be reached
/// now. Each store trait of the family (`KillSwitchStore`, `SymbolModeStore`) builds
/// on it, and the [watcher](crate::watcher) needs nothing else from a store.
///
/// # Contract
/// * `subscribe` delivers every newer item (skipping to the newest when behind), and
///   after a reconnect the store's item whatever its position.
/// * `contains(p)` is true when the history holds the change at position `p` — and
///   for [`Position::ZERO`] — and false for a position lost in a failover.
#[async_trait::async_trait]
pub trait FeedSource: Send + Sync {
    /// What the feed carries: a whole state, or a position.
    type Item: Positioned + Clone + Send + Sync + 'static;
    /// The store's error.
    type Error: std::fmt::Display + Send + 'static;

    /// A stream of changes, starting with the store's item at the time of the call.
    async fn subscribe(&self) -> Result<FeedSubscription<Self::Item>, Self::Error>;
    /// Whether the history holds the change at `position` (false: lost in a failover).
    async fn contains(&self, position: Position) -> Result<bool, Self::Error>;
    /// Why the store cannot be reached **now** (its last attempt failed), if so —
    /// e.g. "connection refused: …". Health says `failed` at once with it.
    fn unreachable(&self) -> Option<String> {
        None
    }
    /// The store's retry budget, when it has one: a handle refuses a staleness window
    /// that a single failed read could outlast.
    fn retry_budget(&self) -> Option<Duration> {
        None
    }
}

/// Whether pushed changes reach this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// Push works (or the store needs none: the in-memory stores).
    Working,
    /// Push is not working now; changes arrive only by polling. The text says why,
    /// e.g. "LISTEN connection lost: connection refused".
    Unavailable(String),
}

impl PushStatus {
    /// True when working.
    pub fn is_working(&self) -> bool {
        matches!(self, Self::Working)
    }
}

#[derive(Debug, Clone)]
struct Slot<T> {
    item: Option<T>,
    /// Bumped by every resync.
    epoch: u64,
}

/// The newest item of a store, fanned out to subscriptions. Cheap to clone; clones
/// share the feed.
#[derive(Debug)]
pub struct ChangeFeed<T> {
    tx: watch::Sender<Slot<T>>,
    push: Arc<Mutex<PushStatus>>,
}

impl<T> Clone for ChangeFeed<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            push: self.push.clone(),
        }
    }
}

impl<T: Positioned + Clone + Send + Sync + 'static> Default for ChangeFeed<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Positioned + Clone + Send + Sync + 'static> ChangeFeed<T> {
    /// An empty feed whose push works.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Slot {
            item: None,
            epoch: 0,
        });
        Self {
            tx,
            push: Arc::new(Mutex::new(PushStatus::Working)),
        }
    }

    /// Passes `item` on when its position is greater than the feed's (or the feed is
    /// empty). Returns whether it did.
    pub fn publish(&self, item: T) -> bool {
        self.tx.send_if_modified(|slot| match &slot.item {
            Some(current) if current.position() >= item.position() => false,
            _ => {
                slot.item = Some(item);
                true
            }
        })
    }

    /// Passes `item` on whatever its position, and makes every subscription deliver
    /// it: the history may have changed (a reconnect, possibly to a promoted replica).
    pub fn resync(&self, item: T) {
        self.tx.send_modify(|slot| {
            slot.item = Some(item);
            slot.epoch += 1;
        });
    }

    /// The newest item.
    pub fn current(&self) -> Option<T> {
        self.tx.borrow().item.clone()
    }

    /// The position of the newest item (0 when empty).
    pub fn position(&self) -> Position {
        self.tx
            .borrow()
            .item
            .as_ref()
            .map_or(Position::ZERO, Positioned::position)
    }

    /// Records whether push works now.
    pub fn set_push_status(&self, status: PushStatus) {
        *self.push.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Whether push works now.
    pub fn push_status(&self) -> PushStatus {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A subscription; its first [`next`](FeedSubscription::next) returns the current
    /// item (once the feed has one).
    pub fn subscribe(&self) -> FeedSubscription<T> {
        FeedSubscription {
            rx: self.tx.subscribe(),
            push: self.push.clone(),
            seen: None,
            epoch: None,
        }
    }
}

/// A stream of a store's changes: every newer item in order of position (a slow
/// reader skips to the newest, which is what a safety control needs), and after a
/// resync the store's item whatever its position.
#[derive(Debug)]
pub struct FeedSubscription<T> {
    rx: watch::Receiver<Slot<T>>,
    push: Arc<Mutex<PushStatus>>,
    seen: Option<Position>,
    epoch: Option<u64>,
}

impl<T: Positioned + Clone + Send + Sync> FeedSubscription<T> {
    /// Waits for an item newer than the last one returned, or for a resync (the
    /// first call returns the current item). `None` when the store is gone.
    pub async fn next(&mut self) -> Option<T> {
        loop {
            {
                let slot = self.rx.borrow_and_update();
                if let Some(item) = &slot.item {
                    let resynced = self.epoch != Some(slot.epoch);
                    if resynced || self.seen.is_none_or(|seen| item.position() > seen) {
                        self.seen = Some(item.position());
                        self.epoch = Some(slot.epoch);
                        return Some(item.clone());
                    }
                }
            }
            self.rx.changed().await.ok()?;
        }
    }

    /// Whether push works now.
    pub fn push_status(&self) -> PushStatus {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A probe of the push status that outlives the subscription (for health).
    pub fn push_probe(&self) -> PushProbe {
        PushProbe(self.push.clone())
    }
}

/// Reads a feed's push status.
#[derive(Debug, Clone)]
pub struct PushProbe(Arc<Mutex<PushStatus>>);

impl PushProbe {
    /// Whether push works now.
    pub fn status(&self) -> PushStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_only_newer_positions_but_a_resync_passes_an_older_one() {
        let feed = ChangeFeed::<Position>::new();
        let mut sub = feed.subscribe();
        assert!(feed.publish(Position::new(1, 4)));
        assert_eq!(sub.next().await, Some(Position::new(1, 4)));
        assert!(!feed.publish(Position::new(1, 3)), "late answer ignored");
        assert!(!feed.publish(Position::new(1, 4)), "same position ignored");
        // A promoted replica holds only 1/2: a resync passes it on anyway.
        feed.resync(Position::new(1, 2));
        assert_eq!(sub.next().await, Some(Position::new(1, 2)));
        // …and from there newer positions flow again, including the new timeline.
        assert!(feed.publish(Position::new(2, 1)));
        assert_eq!(sub.next().await, Some(Position::new(2, 1)));
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), sub.next()).await;
        assert!(pending.is_err(), "nothing new: next waits");
    }

    #[tokio::test]
    async fn a_slow_reader_skips_to_the_newest_and_sees_the_push_status() {
        let feed = ChangeFeed::<Position>::new();
        let mut sub = feed.subscribe();
        for c in 1..=5 {
            feed.publish(Position::new(1, c));
        }
        assert_eq!(sub.next().await, Some(Position::new(1, 5)));
        assert!(sub.push_status().is_working());
        feed.set_push_status(PushStatus::Unavailable("connection refused".into()));
        assert_eq!(
            sub.push_probe().status(),
            PushStatus::Unavailable("connection refused".into())
        );
    }
}
