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
//! Every read is ordered by position by failover-core's watcher: a late answer never
//! rolls the handle back, and when the store's history no longer holds the change
//! the handle holds (lost in an asynchronous failover), the handle adopts the
//! store's state at once — a lost disengage halts trading again.
//!
//! Health component `kill_switch`: `failed` when the store cannot be reached now
//! (details carry the cause, e.g. "connection refused"), when stale or never loaded;
//! `degraded` when reads work but push does not, or the history diverged;
//! `operational` when reads and push both work.

use crate::{Error, KillSwitchState, KillSwitchStore, HEALTH_COMPONENT};
use failover_core::handle::{self, lock, HandleState, Published};
use failover_core::receipt::Receipts;
use failover_core::watcher::{WatchConfig, Watcher};
use failover_core::Position;
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
    published: Published,
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
    ///
    /// # Panics
    /// When the settings contradict each other (see [`try_spawn`](Self::try_spawn)):
    /// a configuration defect, refused at start-up rather than run unsafely.
    pub fn spawn(store: Arc<dyn KillSwitchStore>, config: KillSwitchConfig) -> Self {
        handle::must_start(Self::try_spawn(store, config))
    }

    /// Like [`spawn`](Self::spawn), refusing settings that contradict each other: a
    /// zero window or poll interval, or a store retry budget at or above the
    /// staleness window (one failed read would outlast the window).
    pub fn try_spawn(
        store: Arc<dyn KillSwitchStore>,
        config: KillSwitchConfig,
    ) -> Result<Self, failover_core::WatchConfigError> {
        let (trading, _) = watch::channel(Trading::Halted(Halt::NotLoaded));
        let shared = Arc::new(Shared {
            word: AtomicU8::new(NOT_LOADED),
            state: Mutex::new(None),
            trading,
            published: Published::new(),
        });
        let watcher = handle::start(HEALTH_COMPONENT, store, shared.clone(), config)?;
        Ok(Self {
            shared,
            watcher: Arc::new(watcher),
        })
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

    /// Waits until the first load succeeded, bounded by `timeout`. True when loaded
    /// (then [`trading`](Self::trading) says what the hot path answers); the same
    /// rule as every handle of the family (`SymbolModes::ready`).
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.shared.ready(timeout).await
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

    /// Reports every state this handle applies to `receipts` (component
    /// `kill_switch`, target `""`), from the watcher, never the order path: what
    /// `safetyctl kill-switch engage --wait` counts. Call once per handle.
    #[must_use]
    pub fn with_receipts(self, receipts: &Receipts) -> Self {
        self.shared.install_receipts(receipts, HEALTH_COMPONENT);
        self
    }
}

failover_core::handle_health!(KillSwitch, |handle| handle.watcher);

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
}

/// The kill switch's state as the watcher keeps it: a pushed item is a whole state.
#[async_trait::async_trait]
impl HandleState for Shared {
    type Store = dyn KillSwitchStore;
    type State = KillSwitchState;

    async fn read(&self, store: &dyn KillSwitchStore) -> Result<KillSwitchState, Error> {
        store.load().await
    }

    async fn resolve(
        &self,
        _store: &dyn KillSwitchStore,
        pushed: KillSwitchState,
    ) -> Result<Option<KillSwitchState>, Error> {
        Ok(Some(pushed))
    }

    fn held(&self) -> Option<Position> {
        lock(&self.state).as_ref().map(|s| s.position)
    }

    fn adopt(self: &Arc<Self>, state: KillSwitchState) {
        let (engaged, position) = (state.engaged, state.position);
        *lock(&self.state) = Some(state);
        self.set_word(if engaged { ENGAGED } else { RUNNING });
        // The kill switch has no version of its own: its position orders its states.
        self.published.announce(position.0, position);
    }

    fn fail_closed(&self) {
        self.set_word(STALE);
    }

    fn published(&self) -> &Published {
        &self.published
    }

    fn loaded(&self) -> bool {
        self.word.load(Ordering::Acquire) != NOT_LOADED
    }
}
