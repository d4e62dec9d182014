//! What every hot-path handle of the family shares, written once.
//!
//! A control's handle (the kill switch, the symbol modes, the scopes) keeps its own
//! hot-path representation — an atomic word, a snapshot, a tree of gates — and
//! takes the rest from here:
//!
//! * [`Published`]: where the handle announces a state once it is in force — the
//!   version watch that `ready` and `wait_for_version` wait on, and the
//!   [receipt](crate::receipt) reported to `safetyctl … --wait`;
//! * [`handle_health!`](crate::handle_health): the handle's `health`,
//!   `health_source` and [`HealthSource`](crate::HealthSource) implementation, from
//!   its [watcher](crate::watcher);
//! * [`lock`]: a mutex lock that survives a panicked holder.
//!
//! The watcher itself (reads, push, polling, staleness, divergence after a failover)
//! is [`crate::watcher`].

use crate::position::Position;
use crate::receipt::{ReceiptHook, Receipts};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Locks `m`, recovering the data when a holder panicked: a panic elsewhere must not
/// take a safety control down with it (every writer leaves the data consistent
/// before it could panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a handle announces each state once the hot path answers it: waiters on a
/// version wake, and the position is reported as applied (see [`crate::receipt`]).
#[derive(Debug)]
pub struct Published {
    version: watch::Sender<u64>,
    receipt: ReceiptHook,
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    /// Nothing announced yet (version 0).
    pub fn new() -> Self {
        Self {
            version: watch::channel(0).0,
            receipt: ReceiptHook::default(),
        }
    }

    /// The state at `version` (and `position`) is in force: report it, then wake
    /// the waiters. Also for version 0, so that `ready` wakes on the first load.
    pub fn announce(&self, version: u64, position: Position) {
        self.receipt.report(position);
        self.version.send_replace(version);
    }

    /// The versions announced from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until `loaded()` is true, re-checking at every announcement, bounded by
    /// `timeout`. True when loaded.
    pub async fn ready(&self, timeout: Duration, loaded: impl Fn() -> bool + Send + Sync) -> bool {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while !loaded() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        loaded()
    }

    /// Waits until version `version` (or a later one) is announced, bounded by
    /// `timeout`. True when reached.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reports every state announced from now on to `receipts` as `(component, "")`,
    /// and at once what `held` says the handle holds (see [`ReceiptHook::install`]).
    pub fn install_receipts(
        &self,
        receipts: &Receipts,
        component: &str,
        held: impl FnOnce() -> Option<Position>,
    ) {
        self.receipt.install(receipts, component, "", held);
    }
}

/// A handle's `health()` (its watcher's health component), `health_source()` and its
/// [`HealthSource`](crate::HealthSource) implementation, as every handle of the
/// family has them. `$watcher` is an expression of `self` giving the handle's
/// [`Watcher`](crate::watcher::Watcher); the handle must be `Clone`.
///
/// ```text
/// failover_core::handle_health!(KillSwitch, |handle| handle.watcher);
/// ```
#[macro_export]
macro_rules! handle_health {
    ($handle:ident, |$this:ident| $watcher:expr) => {
        impl $handle {
            /// The handle's health component: whether its state is loaded, fresh and
            /// pushed (see the watcher's words: `operational`, `degraded`, `failed`).
            pub fn health(&self) -> $crate::ComponentHealth {
                let $this = self;
                $watcher.freshness().health()
            }

            /// This handle as a [`HealthSource`](failover_core::HealthSource) for a
            /// [`HealthRegistry`](failover_core::HealthRegistry).
            pub fn health_source(&self) -> ::std::sync::Arc<dyn $crate::HealthSource> {
                ::std::sync::Arc::new(::std::clone::Clone::clone(self))
            }
        }

        impl $crate::HealthSource for $handle {
            fn health(&self) -> $crate::ComponentHealth {
                $handle::health(self)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_wakes_at_the_announcement_that_loads_and_gives_up_at_the_timeout() {
        let published = std::sync::Arc::new(Published::new());
        let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_loaded = {
            let loaded = loaded.clone();
            move || loaded.load(std::sync::atomic::Ordering::SeqCst)
        };
        assert!(
            !published
                .ready(Duration::from_millis(100), is_loaded.clone())
                .await
        );
        let p = published.clone();
        let l = loaded.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            l.store(true, std::sync::atomic::Ordering::SeqCst);
            p.announce(0, Position::ZERO);
        });
        assert!(published.ready(Duration::from_secs(5), is_loaded).await);
        assert!(
            !published
                .wait_for_version(3, Duration::from_millis(10))
                .await
        );
        published.announce(4, Position::new(1, 4));
        assert!(
            published
                .wait_for_version(3, Duration::from_millis(10))
                .await
        );
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(7));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().unwrap();
            panic!("a holder panics");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
