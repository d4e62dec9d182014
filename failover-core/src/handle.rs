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
//!   its [watcher];
//! * [`HandleState`] and [`start`]: how the handle's state follows its store. The
//!   handle says how a read applies to its state; [`start`] validates the settings
//!   and runs the [watcher] over the store and that state;
//!   [`must_start`] is the `spawn` that refuses contradicting settings by panicking;
//! * [`lock`]: a mutex lock that survives a panicked holder.
//!
//! The watcher itself (reads, push, polling, staleness, divergence after a failover)
//! is [`crate::watcher`].

use crate::feed::FeedSource;
use crate::position::{Position, Positioned};
use crate::receipt::{ReceiptHook, Receipts};
use crate::watcher::{self, WatchConfig, WatchConfigError, Watched, Watcher};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// The error of a handle's store.
pub type StoreError<S> = <<S as HandleState>::Store as FeedSource>::Error;
/// What a handle's store's change feed carries.
pub type StoreItem<S> = <<S as HandleState>::Store as FeedSource>::Item;

/// A handle's state as its watcher keeps it: what the hot path reads (an atomic
/// word, a snapshot, a tree of gates) and how a read of the store applies to it.
/// Implemented by the state every clone of a handle shares; [`start`] runs the
/// watcher over it. None of these methods is for the order path: the watcher task
/// calls them, and the handle's cold-path methods (`ready`, `with_receipts`).
#[async_trait::async_trait]
pub trait HandleState: Send + Sync + 'static {
    /// The store the state follows (its reads, change feed, history and reachability).
    type Store: FeedSource + ?Sized + 'static;
    /// A read of the store: a whole state, or a delta after what the handle holds.
    type State: Positioned + Send + 'static;

    /// Reads `store` now (bounded by the store's retry budget).
    async fn read(&self, store: &Self::Store) -> Result<Self::State, StoreError<Self>>;
    /// Turns a pushed item into a state to observe (`None`: nothing to do), reading
    /// `store` when the item alone does not continue what the handle holds.
    async fn resolve(
        &self,
        store: &Self::Store,
        pushed: StoreItem<Self>,
    ) -> Result<Option<Self::State>, StoreError<Self>>;
    /// The position the handle holds; `None` before the first load.
    fn held(&self) -> Option<Position>;
    /// Puts a read the watcher ordered in force (it may be older than the held one
    /// when the held change was lost in a failover), leaves any fail-closed state and
    /// announces it on [`published`](Self::published). Takes the `Arc` so that
    /// adopting may start background work that must not keep the handle alive.
    fn adopt(self: &Arc<Self>, state: Self::State);
    /// Fails closed: the last successful read is older than the staleness window.
    fn fail_closed(&self);
    /// Where the handle announces the states it adopts.
    fn published(&self) -> &Published;
    /// Whether a state has been loaded (the hot path no longer answers "not loaded").
    fn loaded(&self) -> bool;

    /// Waits until [`loaded`](Self::loaded), re-checking at every announcement,
    /// bounded by `timeout`. True when loaded: a handle's `ready`.
    async fn ready(&self, timeout: Duration) -> bool {
        self.published().ready(timeout, || self.loaded()).await
    }

    /// Reports every state adopted from now on to `receipts` as `(component, "")`,
    /// and at once the position [`held`](Self::held): a handle's `with_receipts`.
    fn install_receipts(&self, receipts: &Receipts, component: &str) {
        self.published()
            .install_receipts(receipts, component, || self.held());
    }
}

/// The store and the handle's state, as the watcher sees them.
struct Follow<S: HandleState> {
    store: Arc<S::Store>,
    shared: Arc<S>,
}

#[async_trait::async_trait]
impl<S: HandleState> Watched for Follow<S> {
    type Store = S::Store;
    type State = S::State;

    fn store(&self) -> &S::Store {
        &self.store
    }

    async fn read(&self) -> Result<S::State, StoreError<S>> {
        self.shared.read(&self.store).await
    }

    async fn resolve(&self, pushed: StoreItem<S>) -> Result<Option<S::State>, StoreError<S>> {
        self.shared.resolve(&self.store, pushed).await
    }

    fn held(&self) -> Option<Position> {
        self.shared.held()
    }

    fn adopt(&self, state: S::State) {
        self.shared.adopt(state);
    }

    fn fail_closed(&self) {
        self.shared.fail_closed();
    }
}

/// Starts the watcher that keeps `shared` following `store`, on the current tokio
/// runtime; `component` names its health component. Refuses settings that
/// contradict each other — a zero window or poll interval, or a store retry budget
/// at or above the staleness window (one failed read would outlast the window) —
/// and then starts nothing.
///
/// The watcher stops when the returned [`Watcher`] is dropped.
pub fn start<S: HandleState>(
    component: &'static str,
    store: Arc<S::Store>,
    shared: Arc<S>,
    config: WatchConfig,
) -> Result<Watcher, WatchConfigError> {
    config.validate(store.retry_budget())?;
    Ok(watcher::spawn(
        component,
        config,
        Arc::new(Follow { store, shared }),
    ))
}

/// A handle's `spawn`: the handle `try_spawn` started, or a panic with the refusal's
/// text — contradicting settings are a configuration defect, refused at start-up
/// rather than run unsafely.
#[track_caller]
pub fn must_start<T>(started: Result<T, WatchConfigError>) -> T {
    match started {
        Ok(handle) => handle,
        Err(e) => panic!("{e}"),
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
    use crate::health::ComponentStatus;
    use crate::receipt::Receipts;
    use crate::test_store::{config, OneValue};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    type Store = OneValue;

    /// A handle's state: the position it holds, whether it failed closed, and how many
    /// pushed items needed a read of the store.
    #[derive(Debug, Default)]
    struct Held {
        held: Mutex<Option<Position>>,
        closed: AtomicBool,
        reads_for_push: AtomicUsize,
        published: Published,
    }

    #[async_trait::async_trait]
    impl HandleState for Held {
        type Store = Store;
        type State = Position;

        async fn read(&self, store: &Store) -> Result<Position, String> {
            store.read()
        }

        async fn resolve(
            &self,
            store: &Store,
            pushed: Position,
        ) -> Result<Option<Position>, String> {
            if self.held() == Some(pushed) {
                return Ok(None);
            }
            self.reads_for_push.fetch_add(1, Ordering::SeqCst);
            self.read(store).await.map(Some)
        }

        fn held(&self) -> Option<Position> {
            *lock(&self.held)
        }

        fn adopt(self: &Arc<Self>, p: Position) {
            *lock(&self.held) = Some(p);
            self.closed.store(false, Ordering::SeqCst);
            self.published.announce(p.0, p);
        }

        fn fail_closed(&self) {
            self.closed.store(true, Ordering::SeqCst);
        }

        fn published(&self) -> &Published {
            &self.published
        }

        fn loaded(&self) -> bool {
            self.held().is_some()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_state_loads_follows_pushes_reports_receipts_and_fails_closed_when_stale() {
        let store = Arc::new(Store::default());
        store.up_at(Position::new(1, 3));
        let held = Arc::new(Held::default());
        assert!(
            !held.ready(Duration::from_millis(10)).await,
            "nothing runs yet"
        );
        // Push-only settings: what follows arrives by push, through `resolve`.
        let push_only = config()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200));
        let watcher = start("demo", store.clone(), held.clone(), push_only).expect("valid");
        assert!(held.ready(Duration::from_secs(1)).await);
        assert_eq!(held.held(), Some(Position::new(1, 3)));
        let receipts = Receipts::memory();
        held.install_receipts(&receipts, "demo");
        receipts.flush_now().await.expect("memory flush");
        let table = receipts.memory_table().expect("memory table");
        assert_eq!(table.rows("demo", "")[0].position, Position::new(1, 3));

        store.write(Position::new(1, 5));
        let v5 = Position::new(1, 5).0;
        assert!(
            held.published()
                .wait_for_version(v5, Duration::from_secs(1))
                .await
        );
        assert_eq!(held.held(), Some(Position::new(1, 5)));
        assert!(held.reads_for_push.load(Ordering::SeqCst) >= 1);
        receipts.flush_now().await.expect("memory flush");
        assert_eq!(table.rows("demo", "")[0].position, Position::new(1, 5));
        drop(watcher);

        let watcher = start("demo", store.clone(), held.clone(), config()).expect("valid");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Unreachable past the window: failed at once, closed after the window, and
        // back when the store is.
        store.up.store(false, Ordering::SeqCst);
        assert_eq!(watcher.freshness().health().status, ComponentStatus::Failed);
        assert!(
            !held.closed.load(Ordering::SeqCst),
            "serves until the window"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(
            held.closed.load(Ordering::SeqCst),
            "failed closed past the window"
        );
        store.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !held.closed.load(Ordering::SeqCst),
            "a read ends the fail-closed state"
        );
        assert_eq!(
            watcher.freshness().health().status,
            ComponentStatus::Operational
        );
    }

    #[tokio::test]
    async fn contradicting_settings_start_nothing_and_must_start_panics_with_the_refusal() {
        let store = Arc::new(Store {
            retry_budget: Some(Duration::from_secs(5)),
            ..Store::default()
        });
        let held = Arc::new(Held::default());
        let refused = start(
            "demo",
            store.clone(),
            held.clone(),
            config().with_staleness_window(Duration::from_secs(5)),
        )
        .expect_err("a retry budget at the window is refused");
        assert!(refused.to_string().contains("RETRY_BUDGET"), "{refused}");
        assert_eq!(Arc::strong_count(&held), 1, "no watcher holds the state");
        assert_eq!(must_start(Ok::<u8, WatchConfigError>(7)), 7);
        let panic = std::panic::catch_unwind(|| must_start::<()>(Err(refused.clone())))
            .expect_err("must_start panics on a refusal");
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(text, refused.to_string());
    }

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
