//! Keeps a hot-path view of a store's state fresh, fails closed when it cannot, and
//! never lets a lost change stand — written once for every handle.
//!
//! A hot-path handle (the kill switch, the symbol-mode snapshot) must never touch the
//! store or the clock on the order path. [`spawn`] runs the one background task that
//! does. It reads the state, follows the store's [change feed](crate::feed) (NOTIFY
//! for PostgreSQL), polls as a fallback and to prove freshness, and orders everything
//! it sees by [`Position`]:
//!
//! * a newer position is adopted;
//! * an older one is a late answer — unless the store's history no longer contains
//!   the position the handle holds. Then that change was lost (an asynchronous
//!   failover promoted a replica that never received it) and the handle adopts the
//!   store's state **at once**, whatever its position: the database of record wins,
//!   so a lost relaxation returns the handle to the stricter state. The divergence
//!   is logged once at ERROR, counted in `failover_history_diverged_total` and shown
//!   in the health details;
//! * a newer position on another timeline is checked the same way, so that a lost
//!   change is reported even when the new primary has already moved past it.
//!
//! Once the last successful read is older than the staleness window the handle is
//! told to fail closed.
//!
//! Health ([`Freshness::health`]), in the words operators read:
//! * `failed` — never loaded, stale, or the store cannot be reached **now** (its last
//!   attempt failed: "connection refused", "no writable host", "timed out after 2s").
//!   The hot path still serves the last known state until the staleness window.
//! * `degraded` — reads work but push does not ("push unavailable, polling every
//!   1s: …"), or the history diverged recently.
//! * `operational` — reads and push both work.

use crate::feed::{FeedSource, FeedSubscription, PushProbe, PushStatus};
use crate::health::{ComponentHealth, ComponentStatus};
use crate::log::Throttle;
use crate::position::{Position, Positioned};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a watcher refreshes and when it gives up on its state. Deserializes from
/// `humantime` strings (`{"staleness_window": "5m", "poll_interval": "1s",
/// "divergence_notice": "10m"}`); absent fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Past this age of the last successful read, the handle fails closed. Default 5 minutes.
    #[serde(with = "crate::time::humantime")]
    pub staleness_window: Duration,
    /// How often the state is re-read as a fallback to push (and to prove freshness). Default 1 s.
    #[serde(with = "crate::time::humantime")]
    pub poll_interval: Duration,
    /// How long health stays `degraded` after the history diverged. Default 5 minutes.
    #[serde(with = "crate::time::humantime")]
    pub divergence_notice: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            staleness_window: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            divergence_notice: Duration::from_secs(300),
        }
    }
}

/// Settings that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid watch settings: {0}")]
pub struct WatchConfigError(pub String);

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

    /// Sets how long health reports a divergence.
    #[must_use]
    pub fn with_divergence_notice(mut self, notice: Duration) -> Self {
        self.divergence_notice = notice;
        self
    }

    /// Refuses settings that contradict each other: a zero window or poll interval,
    /// and a store retry budget (when known) at or above the staleness window — a
    /// single failed read would then outlast the window.
    pub fn validate(&self, retry_budget: Option<Duration>) -> Result<(), WatchConfigError> {
        if self.staleness_window.is_zero() {
            return Err(WatchConfigError(
                "staleness_window must be greater than zero".into(),
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(WatchConfigError(
                "poll_interval must be greater than zero".into(),
            ));
        }
        if let Some(budget) = retry_budget {
            if budget >= self.staleness_window {
                return Err(WatchConfigError(format!(
                    "the store's retry budget ({budget:?}, RETRY_BUDGET) must be below the staleness window ({:?})",
                    self.staleness_window
                )));
            }
        }
        Ok(())
    }
}

/// What a watcher watches and whom it tells: implemented by each hot-path handle
/// over its store.
#[async_trait::async_trait]
pub trait Watched: Send + Sync + 'static {
    /// The store (its change feed, history and reachability).
    type Store: FeedSource + ?Sized;
    /// A read of the store (a whole state, or a delta after what the handle holds).
    type State: Positioned + Send + 'static;

    /// The store.
    fn store(&self) -> &Self::Store;
    /// Reads the store now (bounded by the store's retry budget).
    async fn read(&self) -> Result<Self::State, Error<Self>>;
    /// Turns a pushed item into a state to observe (`None`: nothing to do).
    async fn resolve(&self, pushed: Item<Self>) -> Result<Option<Self::State>, Error<Self>>;
    /// The position the handle holds; `None` before the first load.
    fn held(&self) -> Option<Position>;
    /// Adopt a read (also ends a fail-closed state).
    fn adopt(&self, state: Self::State);
    /// Fail closed: the state is stale.
    fn fail_closed(&self);
}

/// The error of a watched store.
pub type Error<W> = <<W as Watched>::Store as FeedSource>::Error;
/// What a watched store's feed carries.
pub type Item<W> = <<W as Watched>::Store as FeedSource>::Item;

#[derive(Debug)]
struct Detail {
    last_success: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    stale: bool,
    push: Option<PushProbe>,
    subscribe_error: Option<String>,
    diverged: Option<(Instant, String)>,
}

type Unreachable = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// What a watcher knows about its state; the source of its health.
pub struct Freshness {
    name: &'static str,
    config: WatchConfig,
    detail: Mutex<Detail>,
    unreachable: Unreachable,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
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

    /// Age of the last successful read (`None` before the first).
    pub fn age(&self) -> Option<Duration> {
        self.lock().last_success.map(|(at, _)| at.elapsed())
    }

    /// The staleness window.
    pub fn window(&self) -> Duration {
        self.config.staleness_window
    }

    /// The last divergence of the history, while it is still reported.
    pub fn divergence(&self) -> Option<String> {
        let d = self.lock();
        d.diverged
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.config.divergence_notice)
            .map(|(_, text)| text.clone())
    }

    /// The health component (see the module docs for the words).
    pub fn health(&self) -> ComponentHealth {
        let d = self.lock();
        let window = self.config.staleness_window;
        let serving = |age: Duration| {
            format!(
                "serving the last known state for up to {:?} more, then failing closed",
                window.saturating_sub(age)
            )
        };
        let (status, details) = match (d.last_success, d.stale) {
            (None, _) => (
                ComponentStatus::Failed,
                Some(format!(
                    "not loaded yet, failing closed{}",
                    (self.unreachable)()
                        .or_else(|| d.last_error.clone())
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
            ),
            (Some(_), true) => (
                ComponentStatus::Failed,
                Some(format!(
                    "stale: no successful read for longer than {window:?}, failing closed{}",
                    (self.unreachable)()
                        .or_else(|| d.last_error.clone())
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )),
            ),
            (Some((at, _)), false) => {
                if let Some(cause) = (self.unreachable)() {
                    (
                        ComponentStatus::Failed,
                        Some(format!("{cause}; {}", serving(at.elapsed()))),
                    )
                } else if let Some(error) = &d.last_error {
                    (
                        ComponentStatus::Failed,
                        Some(format!("{error}; {}", serving(at.elapsed()))),
                    )
                } else {
                    let push = match (&d.push, &d.subscribe_error) {
                        (_, Some(e)) => Some(e.clone()),
                        (Some(probe), None) => match probe.status() {
                            PushStatus::Working => None,
                            PushStatus::Unavailable(why) => Some(why),
                        },
                        (None, None) => Some("not subscribed yet".into()),
                    };
                    let diverged = d
                        .diverged
                        .as_ref()
                        .filter(|(at, _)| at.elapsed() < self.config.divergence_notice)
                        .map(|(_, text)| text.clone());
                    let mut notes = Vec::new();
                    if let Some(why) = push {
                        notes.push(format!(
                            "push unavailable, polling every {}: {why}",
                            humantime::format_duration(self.config.poll_interval)
                        ));
                    }
                    if let Some(text) = diverged {
                        notes.push(text);
                    }
                    if notes.is_empty() {
                        (ComponentStatus::Operational, None)
                    } else {
                        (ComponentStatus::Degraded, Some(notes.join("; ")))
                    }
                }
            }
        };
        let push = match (&d.push, &d.subscribe_error) {
            (Some(probe), None) => probe.status() == PushStatus::Working,
            _ => false,
        };
        ComponentHealth {
            name: self.name.to_owned(),
            status,
            details,
            last_success: d.last_success.map(|(_, at)| at),
            checked_at: SystemTime::now(),
            push: Some(push),
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

    fn diverged(&self, text: String) {
        self.lock().diverged = Some((Instant::now(), text));
    }

    /// True when it just turned stale.
    fn turned_stale(&self) -> bool {
        let mut d = self.lock();
        let stale = d
            .last_success
            .is_some_and(|(at, _)| at.elapsed() > self.config.staleness_window);
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

/// Starts the watcher on the current tokio runtime. `name` is the health component.
pub fn spawn<W: Watched>(name: &'static str, config: WatchConfig, watched: Arc<W>) -> Watcher {
    // The series exists from the start (at 0), so an alert on its increase fires on
    // the first divergence too.
    metrics::counter!("failover_history_diverged_total", "component" => name).increment(0);
    let unreachable: Unreachable = {
        let watched = watched.clone();
        Box::new(move || watched.store().unreachable())
    };
    let freshness = Arc::new(Freshness {
        name,
        config: config.clone(),
        detail: Mutex::new(Detail {
            last_success: None,
            last_error: None,
            stale: false,
            push: None,
            subscribe_error: None,
            diverged: None,
        }),
        unreachable,
    });
    let task = tokio::spawn(
        Loop {
            name,
            config,
            watched,
            freshness: freshness.clone(),
            warnings: Throttle::default(),
        }
        .run(),
    );
    Watcher { freshness, task }
}

struct Loop<W: Watched> {
    name: &'static str,
    config: WatchConfig,
    watched: Arc<W>,
    freshness: Arc<Freshness>,
    warnings: Throttle,
}

type Pending<T> = Option<futures_util::future::BoxFuture<'static, T>>;

async fn pending_or<T>(f: &mut Pending<T>) -> T {
    match f.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_or_pending<T: Positioned + Clone + Send + Sync>(
    sub: &mut Option<FeedSubscription<T>>,
) -> Option<T> {
    match sub.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl<W: Watched> Loop<W> {
    async fn run(mut self) {
        // The clock ticks often enough to notice staleness promptly whatever the poll interval.
        let tick = self
            .config
            .poll_interval
            .min(self.config.staleness_window / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut clock = tokio::time::interval(tick);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_poll = Instant::now();
        let mut next_subscribe = Instant::now();
        // A failed refresh (a read, or the history check after a failover) is retried
        // with backoff, never left to the poll interval: with push-only settings
        // (poll 1 h) that would leave health `failed` — or a lost change standing —
        // for an hour after the store is back.
        let mut retry_backoff = FIRST_RETRY;
        let mut load: Pending<Result<W::State, Error<W>>> = None;
        let mut subscribing: Pending<Result<FeedSubscription<Item<W>>, Error<W>>> = None;
        let mut feed: Option<FeedSubscription<Item<W>>> = None;
        loop {
            let now = Instant::now();
            if load.is_none() && now >= next_poll {
                let watched = self.watched.clone();
                load = Some(Box::pin(async move { watched.read().await }));
            }
            if feed.is_none() && subscribing.is_none() && now >= next_subscribe {
                let watched = self.watched.clone();
                subscribing = Some(Box::pin(async move { watched.store().subscribe().await }));
            }
            tokio::select! {
                result = pending_or(&mut load) => {
                    load = None;
                    let ok = match result {
                        Ok(state) => self.observe(state).await,
                        Err(error) => {
                            let text = error.to_string();
                            if self.warnings.allow() {
                                tracing::warn!(component = self.name, error = %text, "refresh failed; serving the last known state until the staleness window");
                            }
                            self.freshness.failed(text);
                            false
                        }
                    };
                    next_poll = Instant::now() + if ok {
                        retry_backoff = FIRST_RETRY;
                        self.config.poll_interval
                    } else {
                        self.retry_after(&mut retry_backoff)
                    };
                }
                result = pending_or(&mut subscribing) => {
                    subscribing = None;
                    match result {
                        Ok(sub) => {
                            let mut d = self.freshness.lock();
                            d.push = Some(sub.push_probe());
                            d.subscribe_error = None;
                            drop(d);
                            feed = Some(sub);
                        }
                        Err(error) => {
                            tracing::debug!(component = self.name, %error, "subscribe failed");
                            self.freshness.lock().subscribe_error = Some(error.to_string());
                            next_subscribe = Instant::now() + self.config.poll_interval.min(Duration::from_secs(1));
                        }
                    }
                }
                pushed = next_or_pending(&mut feed) => match pushed {
                    Some(item) => match self.watched.resolve(item).await {
                        Ok(Some(state)) => {
                            if !self.observe(state).await {
                                next_poll = next_poll.min(Instant::now() + self.retry_after(&mut retry_backoff));
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::debug!(component = self.name, %error, "reading a pushed change failed; polling");
                            next_poll = Instant::now();
                        }
                    },
                    None => feed = None,
                },
                _ = tokio::time::sleep_until(next_poll), if load.is_none() => {}
                _ = tokio::time::sleep_until(next_subscribe), if feed.is_none() && subscribing.is_none() => {}
                _ = clock.tick() => {}
            }
            if self.freshness.turned_stale() {
                tracing::error!(component = self.name, window = ?self.config.staleness_window, "state is stale: failing closed");
                self.watched.fail_closed();
            }
        }
    }

    /// The wait before retrying a failed refresh: jittered, doubling from 100 ms to
    /// 2 s, never longer than the poll interval.
    fn retry_after(&self, backoff: &mut Duration) -> Duration {
        let wait = crate::retry::jittered(*backoff);
        *backoff = (*backoff * 2).min(MAX_RETRY);
        wait.min(self.config.poll_interval)
    }

    /// Orders a read by position against what the handle holds (see the module docs).
    /// False when it could not decide (the history check failed): the caller retries.
    async fn observe(&mut self, state: W::State) -> bool {
        let position = state.position();
        let held = self.watched.held();
        match held {
            Some(held) if position < held || (position > held && crosses(held, position)) => {
                match self.watched.store().contains(held).await {
                    Ok(true) if position < held => {
                        // A late answer: the handle already holds a newer change that
                        // the store still has.
                        self.freshness.succeeded();
                        return true;
                    }
                    Ok(true) => {}
                    Ok(false) => self.report_divergence(held, position),
                    Err(error) => {
                        self.freshness.failed(error.to_string());
                        return false;
                    }
                }
            }
            _ => {}
        }
        self.freshness.succeeded();
        self.warnings.reset();
        self.watched.adopt(state);
        true
    }

    fn report_divergence(&self, held: Position, adopted: Position) {
        let text = format!(
            "history diverged after a failover: position {held} is no longer in the store's history \
             (lost with its predecessors since the last replicated change); adopted {adopted} from the database of record"
        );
        tracing::error!(component = self.name, lost = %held, adopted = %adopted, "{text}");
        metrics::counter!("failover_history_diverged_total", "component" => self.name).increment(1);
        self.freshness.diverged(text);
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A newer position on another timeline: the held one may have been lost.
fn crosses(held: Position, newer: Position) -> bool {
    held != Position::ZERO && held.timeline() != newer.timeline()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::{config, OneValue};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store of one positioned value with a history, and a handle's view of it.
    #[derive(Default)]
    struct Fake {
        inner: OneValue,
        held: Mutex<Option<Position>>,
        stale: AtomicBool,
    }

    impl std::ops::Deref for Fake {
        type Target = OneValue;
        fn deref(&self) -> &OneValue {
            &self.inner
        }
    }

    #[async_trait::async_trait]
    impl Watched for Fake {
        type Store = OneValue;
        type State = Position;
        fn store(&self) -> &OneValue {
            &self.inner
        }
        async fn read(&self) -> Result<Position, String> {
            self.inner.read()
        }
        async fn resolve(&self, p: Position) -> Result<Option<Position>, String> {
            Ok(Some(p))
        }
        fn held(&self) -> Option<Position> {
            *self.held.lock().unwrap()
        }
        fn adopt(&self, p: Position) {
            *self.held.lock().unwrap() = Some(p);
            self.stale.store(false, Ordering::SeqCst);
        }
        fn fail_closed(&self) {
            self.stale.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fails_health_at_once_serves_until_the_window_then_fails_closed_and_recovers() {
        let fake = Arc::new(Fake::default());
        fake.up_at(Position::new(1, 7));
        let watcher = spawn("demo", config(), fake.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.held(), Some(Position::new(1, 7)));
        assert_eq!(
            watcher.freshness().health().status,
            ComponentStatus::Operational
        );
        fake.up.store(false, Ordering::SeqCst);
        let h = watcher.freshness().health();
        assert_eq!(h.status, ComponentStatus::Failed, "unreachable now: failed");
        assert!(
            h.details.as_deref().unwrap().contains("connection refused"),
            "{h:?}"
        );
        assert!(!fake.stale.load(Ordering::SeqCst), "still serving");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(
            fake.stale.load(Ordering::SeqCst),
            "failed closed past the window"
        );
        fake.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!fake.stale.load(Ordering::SeqCst));
        assert_eq!(
            watcher.freshness().health().status,
            ComponentStatus::Operational
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_position_is_replaced_by_the_store_state_even_when_older() {
        let fake = Arc::new(Fake::default());
        fake.up_at(Position::new(1, 1));
        fake.write(Position::new(1, 2));
        let cfg = config().with_poll_interval(Duration::from_secs(3600));
        let watcher = spawn(
            "demo",
            cfg.with_staleness_window(Duration::from_secs(7200)),
            fake.clone(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.held(), Some(Position::new(1, 2)));
        // Failover: the store lost 1/2 and is back at 1/1; the reconnect resyncs.
        *fake.value.lock().unwrap() = (Position::new(1, 1), vec![Position::new(1, 1)]);
        fake.feed.resync(Position::new(1, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            fake.held(),
            Some(Position::new(1, 1)),
            "database of record wins"
        );
        let h = watcher.freshness().health();
        assert_eq!(h.status, ComponentStatus::Degraded);
        assert!(
            h.details.unwrap().contains("1/2"),
            "names the lost position"
        );
        // A late answer (older, but the held position is in the history) is ignored.
        fake.write(Position::new(2, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.held(), Some(Position::new(2, 1)));
        fake.feed.resync(Position::new(1, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            fake.held(),
            Some(Position::new(2, 1)),
            "late answer ignored"
        );
    }

    /// Push-only settings (poll 1 h): the resync after a failover arrives while the
    /// history check still fails. The watcher retries within seconds — it does not
    /// leave the lost change standing and health `failed` until the next poll.
    #[tokio::test(start_paused = true)]
    async fn a_failed_history_check_is_retried_with_backoff_not_after_the_poll_interval() {
        let fake = Arc::new(Fake::default());
        fake.up_at(Position::new(1, 1));
        fake.write(Position::new(1, 2));
        let watcher = spawn(
            "demo",
            config()
                .with_poll_interval(Duration::from_secs(3600))
                .with_staleness_window(Duration::from_secs(7200)),
            fake.clone(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.held(), Some(Position::new(1, 2)));
        *fake.value.lock().unwrap() = (Position::new(1, 1), vec![Position::new(1, 1)]);
        fake.history_down.store(true, Ordering::SeqCst);
        fake.feed.resync(Position::new(1, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.held(), Some(Position::new(1, 2)), "undecided yet");
        assert_eq!(watcher.freshness().health().status, ComponentStatus::Failed);
        fake.history_down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            fake.held(),
            Some(Position::new(1, 1)),
            "the lost change was replaced within seconds"
        );
        let h = watcher.freshness().health();
        assert_eq!(h.status, ComponentStatus::Degraded, "{h:?}");
        assert!(h.details.unwrap().contains("diverged"));
    }

    #[test]
    fn every_duration_deserializes_from_a_humantime_string() {
        let c: WatchConfig = serde_json::from_str(
            r#"{"staleness_window": "2m", "poll_interval": "250ms", "divergence_notice": "10m"}"#,
        )
        .expect("humantime strings");
        assert_eq!(
            c,
            WatchConfig::default()
                .with_staleness_window(Duration::from_secs(120))
                .with_poll_interval(Duration::from_millis(250))
                .with_divergence_notice(Duration::from_secs(600))
        );
        let partial: WatchConfig =
            serde_json::from_str(r#"{"divergence_notice": "1h"}"#).expect("partial");
        assert_eq!(partial.divergence_notice, Duration::from_secs(3600));
        assert_eq!(partial.poll_interval, WatchConfig::default().poll_interval);
        assert!(serde_json::from_str::<WatchConfig>(r#"{"divergence_notice": 300}"#).is_err());
    }

    #[test]
    fn contradicting_settings_are_refused() {
        let c = WatchConfig::default();
        assert!(c.validate(Some(Duration::from_secs(5))).is_ok());
        let err = c
            .clone()
            .with_staleness_window(Duration::from_secs(5))
            .validate(Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(err.to_string().contains("RETRY_BUDGET"), "{err}");
        assert!(c.with_poll_interval(Duration::ZERO).validate(None).is_err());
    }
}
