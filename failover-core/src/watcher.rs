//! Keeps a hot-path view of a store's state fresh, and fails closed when it cannot.
//!
//! A hot-path handle (the kill switch, the symbol-mode snapshot) must never touch the
//! store or the clock on the order path. [`spawn`] runs the one background task that
//! does: it loads the state, follows the store's push stream (NOTIFY), polls as a
//! fallback and to prove freshness, and tells the handle through two callbacks:
//!
//! * `on_state(state)` after every successful read (load or push);
//! * `on_stale()` once the last successful read is older than the staleness window —
//!   the handle then answers with its fail-closed value.
//!
//! [`Freshness`] turns the same facts into a health component:
//! `operational` (fresh), `degraded` (the last refresh failed but the state is within
//! the window; details carry the error), `failed` (stale, or never loaded).

use crate::health::{ComponentHealth, ComponentStatus};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a watcher refreshes and when it gives up on its state. Deserializes from
/// `humantime` strings (`{"staleness_window": "5m", "poll_interval": "1s"}`); absent
/// fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Past this age of the last successful read, the handle fails closed. Default 5 minutes.
    #[serde(with = "crate::time::humantime")]
    pub staleness_window: Duration,
    /// How often the state is re-read as a fallback to push (and to prove freshness). Default 1 s.
    #[serde(with = "crate::time::humantime")]
    pub poll_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            staleness_window: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl WatchConfig {
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

#[derive(Debug, Default)]
struct Detail {
    last_success: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    push_error: Option<String>,
    stale: bool,
}

/// What a watcher knows about the freshness of its state; the source of its health.
#[derive(Debug)]
pub struct Freshness {
    name: &'static str,
    window: Duration,
    detail: Mutex<Detail>,
}

impl Freshness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wall-clock time of the last successful read.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.lock().last_success.map(|(_, at)| at)
    }

    /// The error of the last failed refresh; cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The staleness window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The health component: `operational`, `degraded` (last refresh failed, still
    /// within the window) or `failed` (stale or never loaded).
    pub fn health(&self) -> ComponentHealth {
        let d = self.lock();
        let err = d.last_error.clone();
        let (status, details) = match (d.last_success, d.stale) {
            (None, _) => (
                ComponentStatus::Failed,
                Some(format!(
                    "not loaded yet, failing closed{}",
                    err.map(|e| format!(": {e}")).unwrap_or_default()
                )),
            ),
            (Some(_), true) => (
                ComponentStatus::Failed,
                Some(format!(
                    "stale: no successful read for longer than {:?}, failing closed{}",
                    self.window,
                    err.map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )),
            ),
            (Some(_), false) => match err {
                Some(e) => (ComponentStatus::Degraded, Some(e)),
                // Polling keeps the state fresh; a broken push only slows propagation.
                None => (
                    ComponentStatus::Operational,
                    d.push_error
                        .as_ref()
                        .map(|e| format!("push unavailable, polling: {e}")),
                ),
            },
        };
        ComponentHealth {
            name: self.name.to_owned(),
            status,
            details,
            last_success: d.last_success.map(|(_, at)| at),
            checked_at: SystemTime::now(),
        }
    }

    fn succeeded(&self) {
        let mut d = self.lock();
        d.last_success = Some((Instant::now(), SystemTime::now()));
        d.last_error = None;
        d.stale = false;
    }

    fn failed(&self, error: String) {
        self.lock().last_error = Some(error);
    }

    fn push(&self, error: Option<String>) {
        self.lock().push_error = error;
    }

    /// True when it just turned stale.
    fn turned_stale(&self) -> bool {
        let mut d = self.lock();
        let stale = d
            .last_success
            .is_some_and(|(at, _)| at.elapsed() > self.window);
        let turned = stale && !d.stale;
        d.stale = stale;
        turned
    }
}

/// The running watcher; dropping it stops the task.
#[derive(Debug)]
pub struct Watcher {
    freshness: Arc<Freshness>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Freshness and health of the watched state.
    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.freshness
    }
}

/// A load of the state.
pub type LoadFn<S, E> = Box<dyn Fn() -> BoxFuture<'static, Result<S, E>> + Send + Sync>;
/// A subscription to pushed states.
pub type SubscribeFn<S, E> =
    Box<dyn Fn() -> BoxFuture<'static, Result<BoxStream<'static, S>, E>> + Send + Sync>;

/// What the watcher reads and whom it tells.
pub struct WatchTarget<S, E> {
    /// Loads the current state (bounded by the store's own retry budget).
    pub load: LoadFn<S, E>,
    /// Subscribes to pushed states; the stream ending means "resubscribe".
    pub subscribe: SubscribeFn<S, E>,
    /// Called after every successful read.
    pub on_state: Box<dyn Fn(S) + Send + Sync>,
    /// Called once when the state turns stale (again after each recovery).
    pub on_stale: Box<dyn Fn() + Send + Sync>,
}

/// Starts the watcher on the current tokio runtime. `name` is the health component.
pub fn spawn<S, E>(name: &'static str, config: WatchConfig, target: WatchTarget<S, E>) -> Watcher
where
    S: Send + 'static,
    E: Display + Send + 'static,
{
    let freshness = Arc::new(Freshness {
        name,
        window: config.staleness_window,
        detail: Mutex::new(Detail::default()),
    });
    let task = tokio::spawn(run(name, config, target, freshness.clone()));
    Watcher { freshness, task }
}

async fn pending_or<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_or_pending<S>(stream: &mut Option<BoxStream<'static, S>>) -> Option<S> {
    match stream.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn run<S, E>(
    name: &'static str,
    config: WatchConfig,
    target: WatchTarget<S, E>,
    freshness: Arc<Freshness>,
) where
    S: Send + 'static,
    E: Display + Send + 'static,
{
    // The clock ticks often enough to notice staleness promptly whatever the poll interval.
    let tick = config
        .poll_interval
        .min(config.staleness_window / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut clock = tokio::time::interval(tick);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut next_subscribe = Instant::now();
    let mut load: Option<BoxFuture<'static, Result<S, E>>> = None;
    let mut subscribing: Option<BoxFuture<'static, Result<BoxStream<'static, S>, E>>> = None;
    let mut pushed: Option<BoxStream<'static, S>> = None;
    loop {
        let now = Instant::now();
        if load.is_none() && now >= next_poll {
            load = Some((target.load)());
        }
        if pushed.is_none() && subscribing.is_none() && now >= next_subscribe {
            subscribing = Some((target.subscribe)());
        }
        tokio::select! {
            result = pending_or(&mut load) => {
                load = None;
                next_poll = Instant::now() + config.poll_interval;
                match result {
                    Ok(state) => {
                        freshness.succeeded();
                        (target.on_state)(state);
                    }
                    Err(error) => {
                        tracing::warn!(component = name, %error, "refresh failed");
                        freshness.failed(error.to_string());
                    }
                }
            }
            result = pending_or(&mut subscribing) => {
                subscribing = None;
                match result {
                    Ok(stream) => {
                        freshness.push(None);
                        pushed = Some(stream);
                    }
                    Err(error) => {
                        tracing::debug!(component = name, %error, "subscribe failed");
                        freshness.push(Some(error.to_string()));
                        next_subscribe = Instant::now() + config.poll_interval.min(Duration::from_secs(1));
                    }
                }
            }
            state = next_or_pending(&mut pushed) => match state {
                Some(state) => {
                    freshness.succeeded();
                    (target.on_state)(state);
                }
                None => pushed = None,
            },
            _ = tokio::time::sleep_until(next_poll), if load.is_none() => {}
            _ = tokio::time::sleep_until(next_subscribe), if pushed.is_none() && subscribing.is_none() => {}
            _ = clock.tick() => {}
        }
        if freshness.turned_stale() {
            tracing::error!(component = name, window = ?config.staleness_window, "state is stale: failing closed");
            (target.on_stale)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn fails_closed_after_the_window_and_recovers() {
        let up = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(AtomicU32::new(0));
        let stale = Arc::new(AtomicBool::new(false));
        let target = WatchTarget {
            load: {
                let up = up.clone();
                Box::new(move || {
                    let up = up.load(Ordering::SeqCst);
                    Box::pin(async move {
                        if up {
                            Ok(7u32)
                        } else {
                            Err("connection refused".to_string())
                        }
                    })
                })
            },
            subscribe: Box::new(|| Box::pin(async { Err("no push here".to_string()) })),
            on_state: {
                let (seen, stale) = (seen.clone(), stale.clone());
                Box::new(move |s| {
                    seen.store(s, Ordering::SeqCst);
                    stale.store(false, Ordering::SeqCst);
                })
            },
            on_stale: {
                let stale = stale.clone();
                Box::new(move || stale.store(true, Ordering::SeqCst))
            },
        };
        let watcher = spawn(
            "demo",
            WatchConfig::default()
                .with_staleness_window(Duration::from_secs(10))
                .with_poll_interval(Duration::from_secs(1)),
            target,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let h = watcher.freshness().health();
        assert_eq!(h.status, ComponentStatus::Degraded);
        assert_eq!(h.details.as_deref(), Some("connection refused"));
        assert!(!stale.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            stale.load(Ordering::SeqCst),
            "failed closed past the window"
        );
        assert_eq!(watcher.freshness().health().status, ComponentStatus::Failed);
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!stale.load(Ordering::SeqCst));
        let h = watcher.freshness().health();
        assert_eq!(h.status, ComponentStatus::Operational);
        assert_eq!(
            h.details.as_deref(),
            Some("push unavailable, polling: no push here")
        );
    }
}
