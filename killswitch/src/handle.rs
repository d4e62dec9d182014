//! [`KillSwitch`]: the hot-path handle.
//!
//! The order path calls [`KillSwitch::check`] (or [`KillSwitch::is_halted`]): one
//! atomic load, no lock, no allocation, no clock read. A background watcher — the
//! only part that touches the store and the clock — loads the state, follows the
//! store's change stream (NOTIFY for Postgres), polls as a fallback, and fails
//! closed:
//!
//! * before the first successful load the check says [`Halt::NotLoaded`];
//! * when the last successful read is older than the staleness window (default
//!   5 minutes) it says [`Halt::Stale`], whatever the last known state was.
//!
//! Health component `kill_switch`: `operational` (fresh), `degraded` (the last
//! refresh failed, the state is still within the window; details carry the error),
//! `failed` (stale or never loaded).

use crate::{Error, KillSwitchState, KillSwitchStore, Subscription, HEALTH_COMPONENT};
use failover_core::health::HealthSource;
use failover_core::{ComponentHealth, ComponentStatus};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NOT_LOADED: u8 = 0;
const RUNNING: u8 = 1;
const ENGAGED: u8 = 2;
const STALE: u8 = 3;

/// Why the kill switch says "halted".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Halt {
    /// No state has been loaded yet: fail closed.
    NotLoaded,
    /// The kill switch is engaged.
    Engaged,
    /// The last successful read is older than the staleness window: fail closed.
    Stale,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotLoaded => "halted: kill switch state not loaded yet",
            Self::Engaged => "halted: kill switch engaged",
            Self::Stale => {
                "halted: kill switch state is stale (store unreachable past the staleness window)"
            }
        })
    }
}

impl std::error::Error for Halt {}

/// Whether orders may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trading {
    /// Orders may flow.
    Allowed,
    /// Orders must not flow.
    Halted(Halt),
}

impl Trading {
    fn from_word(word: u8) -> Self {
        match word {
            RUNNING => Self::Allowed,
            ENGAGED => Self::Halted(Halt::Engaged),
            STALE => Self::Halted(Halt::Stale),
            _ => Self::Halted(Halt::NotLoaded),
        }
    }

    /// True unless allowed.
    pub fn is_halted(self) -> bool {
        self != Self::Allowed
    }
}

/// Settings of the handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitchConfig {
    /// Past this age of the last successful read, the handle fails closed. Default 5 minutes.
    pub staleness_window: Duration,
    /// How often the state is re-read as a fallback to push (and to prove freshness). Default 1 s.
    pub poll_interval: Duration,
}

impl Default for KillSwitchConfig {
    fn default() -> Self {
        Self {
            staleness_window: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl KillSwitchConfig {
    /// Sets the staleness window.
    #[must_use]
    pub fn with_staleness_window(mut self, window: Duration) -> Self {
        self.staleness_window = window;
        self
    }

    /// Sets the poll interval.
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// A snapshot for admin pages and logs (not for the order path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitchStatus {
    /// What the hot path answers now.
    pub trading: Trading,
    /// The last state read, if any.
    pub state: Option<KillSwitchState>,
    /// Wall-clock time of the last successful read.
    pub last_success: Option<SystemTime>,
    /// The error of the last failed refresh, cleared by the next success.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Detail {
    state: Option<KillSwitchState>,
    last_success: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    word: AtomicU8,
    detail: Mutex<Detail>,
    trading: watch::Sender<Trading>,
    window: Duration,
}

#[derive(Debug)]
struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The hot-path handle. Cheap to clone; the watcher stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct KillSwitch {
    shared: Arc<Shared>,
    _watcher: Arc<Watcher>,
}

impl KillSwitch {
    /// Starts the watcher on the current tokio runtime. The handle says
    /// [`Halt::NotLoaded`] until the first load succeeds.
    pub fn spawn(store: Arc<dyn KillSwitchStore>, config: KillSwitchConfig) -> Self {
        let (trading, _) = watch::channel(Trading::Halted(Halt::NotLoaded));
        let shared = Arc::new(Shared {
            word: AtomicU8::new(NOT_LOADED),
            detail: Mutex::new(Detail::default()),
            trading,
            window: config.staleness_window,
        });
        let task = tokio::spawn(watch_store(store, shared.clone(), config));
        Self {
            shared,
            _watcher: Arc::new(Watcher(task)),
        }
    }

    /// The hot-path check: one atomic load. `Err` says why orders must not flow.
    #[inline]
    pub fn check(&self) -> Result<(), Halt> {
        match self.shared.word.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            ENGAGED => Err(Halt::Engaged),
            STALE => Err(Halt::Stale),
            _ => Err(Halt::NotLoaded),
        }
    }

    /// The hot-path check as a bool: true when orders must not flow.
    #[inline]
    pub fn is_halted(&self) -> bool {
        self.shared.word.load(Ordering::Acquire) != RUNNING
    }

    /// What the hot path answers now, as a value.
    #[inline]
    pub fn trading(&self) -> Trading {
        Trading::from_word(self.shared.word.load(Ordering::Acquire))
    }

    /// Pushes every change of [`Trading`]: an engine awaits `changed()` and cancels
    /// all working orders as soon as it turns [`Trading::Halted`].
    pub fn subscribe(&self) -> watch::Receiver<Trading> {
        self.shared.trading.subscribe()
    }

    /// Waits until the first load succeeded (or failed closed), bounded by `timeout`.
    /// Returns what the hot path answers then.
    pub async fn ready(&self, timeout: Duration) -> Trading {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|t| *t != Trading::Halted(Halt::NotLoaded)),
        )
        .await;
        self.trading()
    }

    /// A snapshot for admin pages (takes a lock; not for the order path).
    pub fn status(&self) -> KillSwitchStatus {
        let detail = lock(&self.shared.detail);
        KillSwitchStatus {
            trading: self.trading(),
            state: detail.state.clone(),
            last_success: detail.last_success.map(|(_, at)| at),
            last_error: detail.last_error.clone(),
        }
    }

    /// Health component `kill_switch`.
    pub fn health(&self) -> ComponentHealth {
        self.shared.health()
    }

    /// This handle as a [`HealthSource`] for a [`failover_core::HealthRegistry`].
    pub fn health_source(&self) -> Arc<dyn HealthSource> {
        Arc::new(self.clone())
    }
}

impl HealthSource for KillSwitch {
    fn health(&self) -> ComponentHealth {
        self.shared.health()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn set_word(&self, word: u8) {
        let old = self.word.swap(word, Ordering::AcqRel);
        if old != word {
            let trading = Trading::from_word(word);
            match trading {
                Trading::Allowed => tracing::info!("kill switch: trading allowed"),
                Trading::Halted(halt) => tracing::warn!(%halt, "kill switch: trading halted"),
            }
            self.trading.send_replace(trading);
        }
    }

    fn success(&self, state: KillSwitchState) {
        let word = {
            let mut d = lock(&self.detail);
            d.last_success = Some((Instant::now(), SystemTime::now()));
            d.last_error = None;
            // A late answer must not roll back a newer state.
            if d.state.as_ref().is_none_or(|s| state.version >= s.version) {
                d.state = Some(state);
            }
            if d.state.as_ref().is_some_and(|s| s.engaged) {
                ENGAGED
            } else {
                RUNNING
            }
        };
        self.set_word(word);
    }

    fn failure(&self, error: &Error) {
        lock(&self.detail).last_error = Some(error.to_string());
    }

    /// Fails closed once the last success is older than the window.
    fn evaluate(&self) {
        let stale = lock(&self.detail)
            .last_success
            .is_some_and(|(at, _)| at.elapsed() > self.window);
        if stale {
            self.set_word(STALE);
        }
    }

    fn health(&self) -> ComponentHealth {
        let word = self.word.load(Ordering::Acquire);
        let d = lock(&self.detail);
        let last_success = d.last_success.map(|(_, at)| at);
        let err = d.last_error.clone();
        let (status, details) = match word {
            NOT_LOADED => (
                ComponentStatus::Failed,
                Some(format!(
                    "not loaded yet{}",
                    err.map(|e| format!(": {e}")).unwrap_or_default()
                )),
            ),
            STALE => (
                ComponentStatus::Failed,
                Some(format!(
                    "stale: last successful read older than {:?}, trading halted{}",
                    self.window,
                    err.map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )),
            ),
            _ => match err {
                Some(e) => (ComponentStatus::Degraded, Some(e)),
                None => (ComponentStatus::Operational, None),
            },
        };
        ComponentHealth {
            name: HEALTH_COMPONENT.to_owned(),
            status,
            details,
            last_success,
            checked_at: SystemTime::now(),
        }
    }
}

async fn pending_or<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_or_pending(sub: &mut Option<Subscription>) -> Option<KillSwitchState> {
    match sub.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The watcher: the only code that touches the store and the clock.
async fn watch_store(
    store: Arc<dyn KillSwitchStore>,
    shared: Arc<Shared>,
    config: KillSwitchConfig,
) {
    let tick = config
        .poll_interval
        .min(config.staleness_window / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut clock = tokio::time::interval(tick);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut next_subscribe = Instant::now();
    let mut load: Option<BoxFuture<'static, Result<KillSwitchState, Error>>> = None;
    let mut subscribing: Option<BoxFuture<'static, Result<Subscription, Error>>> = None;
    let mut subscription: Option<Subscription> = None;
    loop {
        let now = Instant::now();
        if load.is_none() && now >= next_poll {
            let store = store.clone();
            load = Some(Box::pin(async move { store.load().await }));
        }
        if subscription.is_none() && subscribing.is_none() && now >= next_subscribe {
            let store = store.clone();
            subscribing = Some(Box::pin(async move { store.subscribe().await }));
        }
        tokio::select! {
            result = pending_or(&mut load) => {
                load = None;
                next_poll = Instant::now() + config.poll_interval;
                match result {
                    Ok(state) => shared.success(state),
                    Err(error) => {
                        tracing::warn!(%error, "kill switch refresh failed");
                        shared.failure(&error);
                    }
                }
            }
            result = pending_or(&mut subscribing) => {
                subscribing = None;
                match result {
                    Ok(s) => subscription = Some(s),
                    Err(error) => {
                        shared.failure(&error);
                        next_subscribe = Instant::now() + config.poll_interval.min(Duration::from_secs(1));
                    }
                }
            }
            state = next_or_pending(&mut subscription) => match state {
                Some(state) => shared.success(state),
                None => subscription = None,
            },
            _ = clock.tick() => {}
        }
        shared.evaluate();
    }
}
