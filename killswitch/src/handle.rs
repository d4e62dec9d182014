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

use crate::{Error, KillSwitchState, KillSwitchStore, HEALTH_COMPONENT};
use failover_core::health::HealthSource;
use failover_core::watcher::{self, WatchConfig, WatchTarget, Watcher};
use failover_core::ComponentHealth;
use futures_util::{stream, StreamExt};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

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

/// Settings of the handle: staleness window (default 5 minutes) and poll interval
/// (default 1 s).
pub type KillSwitchConfig = WatchConfig;

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

#[derive(Debug)]
struct Shared {
    word: AtomicU8,
    state: Mutex<Option<KillSwitchState>>,
    trading: watch::Sender<Trading>,
}

/// The hot-path handle. Cheap to clone; the watcher stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct KillSwitch {
    shared: Arc<Shared>,
    watcher: Arc<Watcher>,
}

impl KillSwitch {
    /// Starts the watcher on the current tokio runtime. The handle says
    /// [`Halt::NotLoaded`] until the first load succeeds.
    pub fn spawn(store: Arc<dyn KillSwitchStore>, config: KillSwitchConfig) -> Self {
        let (trading, _) = watch::channel(Trading::Halted(Halt::NotLoaded));
        let shared = Arc::new(Shared {
            word: AtomicU8::new(NOT_LOADED),
            state: Mutex::new(None),
            trading,
        });
        let target = WatchTarget {
            load: {
                let store = store.clone();
                Box::new(move || {
                    let store = store.clone();
                    Box::pin(async move { store.load().await })
                })
            },
            subscribe: Box::new(move || {
                let store = store.clone();
                Box::pin(async move {
                    let subscription = store.subscribe().await?;
                    Ok(stream::unfold(subscription, |mut s| async move {
                        s.next().await.map(|state| (state, s))
                    })
                    .boxed())
                })
            }),
            on_state: {
                let shared = shared.clone();
                Box::new(move |state: KillSwitchState| shared.observe(state))
            },
            on_stale: {
                let shared = shared.clone();
                Box::new(move || shared.set_word(STALE))
            },
        };
        let watcher = watcher::spawn::<KillSwitchState, Error>(HEALTH_COMPONENT, config, target);
        Self {
            shared,
            watcher: Arc::new(watcher),
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

    /// Waits until the first load succeeded, bounded by `timeout`. Returns what the
    /// hot path answers then.
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
        let freshness = self.watcher.freshness();
        KillSwitchStatus {
            trading: self.trading(),
            state: lock(&self.shared.state).clone(),
            last_success: freshness.last_success(),
            last_error: freshness.last_error(),
        }
    }

    /// Health component `kill_switch`.
    pub fn health(&self) -> ComponentHealth {
        self.watcher.freshness().health()
    }

    /// This handle as a [`HealthSource`] for a [`failover_core::HealthRegistry`].
    pub fn health_source(&self) -> Arc<dyn HealthSource> {
        Arc::new(self.clone())
    }
}

impl HealthSource for KillSwitch {
    fn health(&self) -> ComponentHealth {
        KillSwitch::health(self)
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

    /// A successful read: adopt it unless a newer state is already known (a late
    /// answer must not roll back a newer one), and leave any stale state.
    fn observe(&self, state: KillSwitchState) {
        let engaged = {
            let mut current = lock(&self.state);
            if current.as_ref().is_none_or(|s| state.version >= s.version) {
                *current = Some(state);
            }
            current.as_ref().is_some_and(|s| s.engaged)
        };
        self.set_word(if engaged { ENGAGED } else { RUNNING });
    }
}
