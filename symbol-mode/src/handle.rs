//! [`SymbolModes`]: the hot-path handle.
//!
//! The order path calls [`SymbolModes::mode`], [`SymbolModes::allows`] or
//! [`SymbolModes::check`]: one atomic load, one lock-free `ArcSwap` load and one hash
//! lookup on `&str` — no lock, no allocation, no clock read. A background watcher
//! (failover-core's) — the only part that touches the store and the clock — loads
//! the snapshot, follows the store's change stream (NOTIFY for Postgres), polls as a
//! fallback (a poll reads only what changed after the snapshot's version, so an idle
//! poll is one small row), and fails closed:
//!
//! * before the first successful load every symbol is `HARD_HALT`
//!   ([`Cause::NotLoaded`]): nothing is known, so nothing may happen;
//! * once the last successful read is older than the staleness window (default
//!   5 minutes) every symbol is at least `SOFT_HALT` ([`Cause::Stale`]) — the last
//!   known modes still apply where they are stricter, so a `HARD_HALT` stays one.
//!   `SOFT_HALT` (not `HARD_HALT`) keeps cancels open: while the mode store is
//!   unreachable, traders can still take risk off the book, and nothing can add it.
//!   Withdrawals count as halted in both cases, and no new strategy may be
//!   activated ([`SymbolModes::may_activate_strategy`]).
//!
//! Every read and push is ordered by position by failover-core's watcher; a pushed
//! change carries its delta, so a handle at the previous version applies it without
//! a read. When the store's history no longer holds the handle's position (lost in an
//! asynchronous failover) the handle reloads everything from the database of record.
//!
//! New orders are also metered: [`SymbolModes::admit`] (or a [`ThrottleGate`] from
//! [`SymbolModes::gate`]) takes a token from the symbol's order-rate throttle, a
//! lock-free bucket per symbol in this process, and answers [`Throttled`] when it
//! is used up (see the `throttle` module docs: the limit is per process). Call it
//! after the mode check, so that an order the mode refuses takes no token. The
//! watcher puts every throttle change in force with the snapshot that carries it,
//! and a full reload after a failover puts back every limit the database holds.
//!
//! Health component `symbol_mode`: `failed` when the store cannot be reached now
//! (details carry the cause), when stale or never loaded; `degraded` when reads work
//! but push does not, or the history diverged; `operational` when both work.

use crate::snapshot::{ModeSnapshot, SymbolHasher};
use crate::throttle::Bucket;
use crate::{
    Error, ModeChange, ModeDelta, SymbolMode, SymbolModeStore, ThrottleGate, Throttled,
    TradingAction, HEALTH_COMPONENT,
};
use arc_swap::ArcSwap;
use failover_core::clock::CoarseClock;
use failover_core::handle::{self, lock, HandleState, Published};
use failover_core::receipt::Receipts;
use failover_core::watcher::{WatchConfig, Watcher};
use failover_core::Position;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

const NOT_LOADED: u8 = 0;
const FRESH: u8 = 1;
const STALE: u8 = 2;

/// Settings of the handle: staleness window (default 5 minutes) and poll interval
/// (default 1 s).
pub type SymbolModesConfig = WatchConfig;

/// Why a symbol's effective mode refuses an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The symbol's own mode.
    Symbol,
    /// The global mode.
    Global,
    /// No snapshot has been loaded yet: fail closed as `HARD_HALT`.
    NotLoaded,
    /// The snapshot is older than the staleness window: fail closed as at least
    /// `SOFT_HALT`.
    Stale,
}

/// A refused action: what, under which effective mode, and why. `Copy`, built
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The refused action.
    pub action: TradingAction,
    /// The effective mode that refuses it.
    pub mode: SymbolMode,
    /// Where that mode comes from.
    pub cause: Cause,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.cause {
            Cause::Symbol => "the symbol's mode",
            Cause::Global => "the global mode",
            Cause::NotLoaded => "symbol modes not loaded yet, failing closed",
            Cause::Stale => {
                "symbol modes are stale (store unreachable past the staleness window), failing closed"
            }
        };
        write!(
            f,
            "{} refused: effective mode {} ({why})",
            self.action, self.mode
        )
    }
}

impl std::error::Error for Refusal {}

/// Freshness of the handle's snapshot, for admin pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotState {
    /// No snapshot yet.
    NotLoaded,
    /// Within the staleness window.
    Fresh,
    /// Past the staleness window.
    Stale,
}

/// A snapshot for admin pages and logs (not for the order path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolModesStatus {
    /// Whether the snapshot is loaded and fresh.
    pub state: SnapshotState,
    /// The store version of the snapshot (0 before the first load).
    pub version: u64,
    /// The global mode of the snapshot (not including the fail-closed floor).
    pub global: SymbolMode,
    /// Withdrawals halted in the snapshot.
    pub withdrawals_halted: bool,
    /// New strategy activations halted in the snapshot.
    pub new_strategies_disabled: bool,
    /// How many symbols are stricter than `NORMAL` in the snapshot.
    pub restricted_symbols: usize,
    /// How many symbols have an order-rate throttle in the snapshot.
    pub throttled_symbols: usize,
    /// Wall-clock time of the last successful read.
    pub last_success: Option<SystemTime>,
    /// The error of the last failed refresh, cleared by the next success.
    pub last_error: Option<String>,
}

type BucketMap = HashMap<Box<str>, Arc<Bucket>, SymbolHasher>;

#[derive(Debug)]
struct Shared {
    word: AtomicU8,
    snapshot: Arc<ArcSwap<ModeSnapshot>>,
    /// Versions applied, and the receipt.
    published: Published,
    /// This process's token buckets: every throttled symbol, and every symbol a
    /// gate was made for. Replaced (copy on write) only when a symbol is added.
    buckets: Arc<ArcSwap<BucketMap>>,
    /// Serialises changes of `buckets`.
    bucket_writer: Mutex<()>,
    /// Started with the first bucket.
    clock: OnceLock<CoarseClock>,
    /// How many symbols have a limit in force: while none has, `admit` by name is
    /// one load of this word.
    limited: AtomicUsize,
}

/// The effective mode of `symbol` under the freshness word `word` (not `NOT_LOADED`).
#[inline]
fn resolve_in(word: u8, snapshot: &ModeSnapshot, symbol: &str) -> (SymbolMode, Cause) {
    let own = snapshot.symbol_mode(symbol);
    let global = snapshot.global();
    let (mode, cause) = if own >= global {
        (own, Cause::Symbol)
    } else {
        (global, Cause::Global)
    };
    if word == STALE && mode < SymbolModes::STALE_FLOOR {
        (SymbolModes::STALE_FLOOR, Cause::Stale)
    } else {
        (mode, cause)
    }
}

/// A per-thread reader of the symbol modes (see [`SymbolModes::reader`]).
pub struct ModeReader {
    shared: Arc<Shared>,
    cache: arc_swap::Cache<Arc<ArcSwap<ModeSnapshot>>, Arc<ModeSnapshot>>,
    buckets: arc_swap::Cache<Arc<ArcSwap<BucketMap>>, Arc<BucketMap>>,
}

impl std::fmt::Debug for ModeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModeReader").finish_non_exhaustive()
    }
}

impl ModeReader {
    /// The effective mode of `symbol` now, including the fail-closed floor.
    #[inline]
    pub fn mode(&mut self, symbol: &str) -> SymbolMode {
        self.resolve(symbol).0
    }

    /// Whether `action` may happen on `symbol` now.
    #[inline]
    pub fn allows(&mut self, symbol: &str, action: TradingAction) -> bool {
        self.mode(symbol).allows(action)
    }

    /// Like [`allows`](Self::allows), with the reason when refused.
    #[inline]
    pub fn check(&mut self, symbol: &str, action: TradingAction) -> Result<(), Refusal> {
        let (mode, cause) = self.resolve(symbol);
        if mode.allows(action) {
            Ok(())
        } else {
            Err(Refusal {
                action,
                mode,
                cause,
            })
        }
    }

    /// Whether a new strategy may be activated now
    /// ([`SymbolModes::may_activate_strategy`]): false while new activations are
    /// halted, and whenever the snapshot is not fresh (fail closed).
    #[inline]
    pub fn may_activate_strategy(&mut self) -> bool {
        self.shared.word.load(Ordering::Acquire) == FRESH
            && !self.cache.load().new_strategies_disabled()
    }

    /// Takes a token from `symbol`'s order-rate throttle for one new order, or says
    /// when to retry ([`SymbolModes::admit`]).
    #[inline]
    pub fn admit(&mut self, symbol: &str) -> Result<(), Throttled> {
        if self.shared.limited.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        admit_in(self.buckets.load(), symbol)
    }

    #[inline]
    fn resolve(&mut self, symbol: &str) -> (SymbolMode, Cause) {
        let word = self.shared.word.load(Ordering::Acquire);
        if word == NOT_LOADED {
            return (SymbolModes::NOT_LOADED_MODE, Cause::NotLoaded);
        }
        resolve_in(word, self.cache.load(), symbol)
    }
}

#[inline]
fn admit_in(buckets: &BucketMap, symbol: &str) -> Result<(), Throttled> {
    if buckets.is_empty() {
        return Ok(());
    }
    match buckets.get(symbol) {
        Some(bucket) => bucket.admit(),
        None => Ok(()),
    }
}

/// The hot-path handle. Cheap to clone; the watcher stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SymbolModes {
    shared: Arc<Shared>,
    watcher: Arc<Watcher>,
}

/// Reads what changed after the handle's snapshot; a full load when the store's
/// history no longer continues the snapshot's (writes lost in a failover).
async fn fetch(store: &dyn SymbolModeStore, shared: &Shared) -> Result<ModeDelta, Error> {
    let current = shared.snapshot.load_full();
    let since = if shared.word.load(Ordering::Acquire) == NOT_LOADED {
        0
    } else {
        current.version()
    };
    let delta = store.changes_since(since).await?;
    if since == 0 || current.continues(delta.since, delta.since_event) {
        Ok(delta)
    } else {
        tracing::warn!(
            snapshot = current.version(),
            store = delta.version,
            "symbol mode history diverged from the snapshot (failover?); reloading everything"
        );
        store.changes_since(0).await
    }
}

impl SymbolModes {
    /// The effective mode of every symbol before the first successful load.
    pub const NOT_LOADED_MODE: SymbolMode = SymbolMode::HardHalt;
    /// The least effective mode of every symbol once the snapshot is stale.
    pub const STALE_FLOOR: SymbolMode = SymbolMode::SoftHalt;

    /// Starts the watcher on the current tokio runtime. Every symbol is
    /// [`NOT_LOADED_MODE`](Self::NOT_LOADED_MODE) until the first load succeeds.
    ///
    /// # Panics
    /// When the settings contradict each other (see [`try_spawn`](Self::try_spawn)):
    /// a configuration defect, refused at start-up rather than run unsafely.
    pub fn spawn(store: Arc<dyn SymbolModeStore>, config: SymbolModesConfig) -> Self {
        handle::must_start(Self::try_spawn(store, config))
    }

    /// Like [`spawn`](Self::spawn), refusing settings that contradict each other: a
    /// zero window or poll interval, or a store retry budget at or above the
    /// staleness window (one failed read would outlast the window).
    pub fn try_spawn(
        store: Arc<dyn SymbolModeStore>,
        config: SymbolModesConfig,
    ) -> Result<Self, failover_core::WatchConfigError> {
        let shared = Arc::new(Shared {
            word: AtomicU8::new(NOT_LOADED),
            snapshot: Arc::new(ArcSwap::from_pointee(ModeSnapshot::default())),
            published: Published::new(),
            buckets: Arc::new(ArcSwap::from_pointee(BucketMap::default())),
            bucket_writer: Mutex::new(()),
            clock: OnceLock::new(),
            limited: AtomicUsize::new(0),
        });
        let watcher = handle::start(HEALTH_COMPONENT, store, shared.clone(), config)?;
        Ok(Self {
            shared,
            watcher: Arc::new(watcher),
        })
    }

    /// The effective mode of `symbol`: the more severe of the global mode, the
    /// symbol's own mode and the fail-closed floor. Unknown symbols follow the global
    /// mode. No lock, no allocation.
    #[inline]
    pub fn mode(&self, symbol: &str) -> SymbolMode {
        self.resolve(symbol).0
    }

    /// Whether `action` may happen on `symbol` now.
    #[inline]
    pub fn allows(&self, symbol: &str, action: TradingAction) -> bool {
        self.mode(symbol).allows(action)
    }

    /// Like [`allows`](Self::allows), with the reason when refused.
    #[inline]
    pub fn check(&self, symbol: &str, action: TradingAction) -> Result<(), Refusal> {
        let (mode, cause) = self.resolve(symbol);
        if mode.allows(action) {
            Ok(())
        } else {
            Err(Refusal {
                action,
                mode,
                cause,
            })
        }
    }

    #[inline]
    fn resolve(&self, symbol: &str) -> (SymbolMode, Cause) {
        let word = self.shared.word.load(Ordering::Acquire);
        if word == NOT_LOADED {
            return (Self::NOT_LOADED_MODE, Cause::NotLoaded);
        }
        resolve_in(word, &self.shared.snapshot.load(), symbol)
    }

    /// A reader for one thread (an engine's order loop): `&mut self` lookups that
    /// check the current snapshot with one atomic load instead of `ArcSwap`'s
    /// per-call bookkeeping. Same answers, same fail-closed rules.
    pub fn reader(&self) -> ModeReader {
        ModeReader {
            shared: self.shared.clone(),
            cache: arc_swap::Cache::new(self.shared.snapshot.clone()),
            buckets: arc_swap::Cache::new(self.shared.buckets.clone()),
        }
    }

    /// Takes a token from `symbol`'s order-rate throttle for one new order:
    /// `Ok(())` when the symbol has no throttle or a token was left, else
    /// [`Throttled`] with when to retry, counted as a refusal of the symbol. No
    /// lock, no allocation, no clock read beyond one counter a background thread
    /// advances. The limit applies per process. Unknown symbols are not throttled
    /// (the mode check decides what they may do).
    #[inline]
    pub fn admit(&self, symbol: &str) -> Result<(), Throttled> {
        if self.shared.limited.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        admit_in(&self.shared.buckets.load(), symbol)
    }

    /// `symbol`'s throttle resolved once, for an order loop: its `admit` costs one
    /// atomic load while the symbol has no limit, and it follows every change (a
    /// limit set later applies to it as well).
    ///
    /// For the symbols the loop trades (registered ones): every gate keeps a bucket
    /// for the handle's lifetime, so gates made from client-supplied names would grow
    /// without bound.
    pub fn gate(&self, symbol: &str) -> ThrottleGate {
        if let Some(bucket) = self.shared.buckets.load().get(symbol) {
            return ThrottleGate {
                bucket: bucket.clone(),
            };
        }
        let _writer = lock(&self.shared.bucket_writer);
        let current = self.shared.buckets.load_full();
        if let Some(bucket) = current.get(symbol) {
            return ThrottleGate {
                bucket: bucket.clone(),
            };
        }
        let limit = self.shared.snapshot.load().throttle(symbol);
        let bucket = Arc::new(Bucket::new(limit, self.shared.clock()));
        let mut next = (*current).clone();
        next.insert(symbol.into(), bucket.clone());
        self.shared.buckets.store(Arc::new(next));
        ThrottleGate { bucket }
    }

    /// How many new orders the throttle refused, per symbol, in this process (for
    /// metrics; not for the order path).
    pub fn throttle_refusals(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .shared
            .buckets
            .load()
            .iter()
            .map(|(s, b)| (s.to_string(), b.refused()))
            .collect();
        all.sort();
        all
    }

    /// The global mode including the fail-closed floor (what a symbol with no mode of
    /// its own gets).
    pub fn global_mode(&self) -> SymbolMode {
        match self.shared.word.load(Ordering::Acquire) {
            NOT_LOADED => Self::NOT_LOADED_MODE,
            word => {
                let global = self.shared.snapshot.load().global();
                if word == STALE {
                    global.max(Self::STALE_FLOOR)
                } else {
                    global
                }
            }
        }
    }

    /// True while withdrawals are halted, and whenever the snapshot is not fresh
    /// (fail closed).
    pub fn withdrawals_halted(&self) -> bool {
        self.shared.word.load(Ordering::Acquire) != FRESH
            || self.shared.snapshot.load().withdrawals_halted()
    }

    /// Whether a new strategy may be activated now: false while new activations are
    /// halted firm-wide (`NewStrategiesHalt`), and whenever the snapshot is not
    /// fresh — never loaded or stale (fail closed). Running strategies are not
    /// affected. One atomic load and one snapshot load; no lock, no allocation.
    #[inline]
    pub fn may_activate_strategy(&self) -> bool {
        self.shared.word.load(Ordering::Acquire) == FRESH
            && !self.shared.snapshot.load().new_strategies_disabled()
    }

    /// The current snapshot (the store's view without the fail-closed floor).
    pub fn snapshot(&self) -> Arc<ModeSnapshot> {
        self.shared.snapshot.load_full()
    }

    /// Pushes the store version of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.published.subscribe()
    }

    /// Waits until the first load succeeded, bounded by `timeout`. True when loaded.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.shared.ready(timeout).await
    }

    /// Waits until the snapshot reaches `version` (e.g. the version an admin command
    /// returned), bounded by `timeout`. True when reached.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        self.shared
            .published
            .wait_for_version(version, timeout)
            .await
    }

    /// A snapshot for admin pages (takes locks; not for the order path).
    pub fn status(&self) -> SymbolModesStatus {
        let freshness = self.watcher.freshness();
        let snapshot = self.shared.snapshot.load();
        SymbolModesStatus {
            state: match self.shared.word.load(Ordering::Acquire) {
                NOT_LOADED => SnapshotState::NotLoaded,
                FRESH => SnapshotState::Fresh,
                _ => SnapshotState::Stale,
            },
            version: snapshot.version(),
            global: snapshot.global(),
            withdrawals_halted: snapshot.withdrawals_halted(),
            new_strategies_disabled: snapshot.new_strategies_disabled(),
            restricted_symbols: snapshot.restricted_symbols(),
            throttled_symbols: snapshot.throttles().count(),
            last_success: freshness.last_success(),
            last_error: freshness.last_error(),
        }
    }

    /// Reports every snapshot this handle publishes to `receipts` (component
    /// `symbol_mode`, target `""`: the whole store), from the watcher, never the order
    /// path: what `safetyctl mode set … --wait` counts. Call once per handle.
    #[must_use]
    pub fn with_receipts(self, receipts: &Receipts) -> Self {
        self.shared.install_receipts(receipts, HEALTH_COMPONENT);
        self
    }
}

failover_core::handle_health!(SymbolModes, |handle| handle.watcher);

impl Shared {
    fn clock(&self) -> CoarseClock {
        self.clock.get_or_init(CoarseClock::shared).clone()
    }

    /// Puts the throttles of `snapshot` in force in this process's buckets: every
    /// bucket takes its symbol's limit (none when the snapshot has none), and a
    /// symbol throttled for the first time gets a bucket.
    ///
    /// Then publishes `snapshot`, under the same lock a new gate takes: whoever sees
    /// a throttle in the snapshot finds it in force in the buckets, and a gate made
    /// meanwhile reads the snapshot its bucket was synced with.
    fn publish(&self, snapshot: Arc<ModeSnapshot>) {
        let _writer = lock(&self.bucket_writer);
        let current = self.buckets.load_full();
        for (symbol, bucket) in current.iter() {
            bucket.set(snapshot.throttle(symbol));
        }
        let mut next: Option<BucketMap> = None;
        for (symbol, limit) in snapshot.throttles() {
            if !current.contains_key(symbol) {
                next.get_or_insert_with(|| (*current).clone()).insert(
                    symbol.into(),
                    Arc::new(Bucket::new(Some(limit), self.clock())),
                );
            }
        }
        if let Some(next) = next {
            self.buckets.store(Arc::new(next));
        }
        // After the buckets: a reader that sees the count sees their limits.
        self.limited
            .store(snapshot.throttles().count(), Ordering::Release);
        self.snapshot.store(snapshot);
    }

    fn set_word(&self, word: u8) {
        let old = self.word.swap(word, Ordering::AcqRel);
        if old != word {
            match word {
                FRESH => tracing::info!("symbol modes: snapshot fresh"),
                STALE => tracing::error!(
                    "symbol modes: snapshot stale, failing closed (at least SOFT_HALT)"
                ),
                _ => {}
            }
        }
    }
}

/// The snapshot as the watcher keeps it: a pushed change carries its delta, applied
/// without a read when it continues the snapshot.
#[async_trait::async_trait]
impl HandleState for Shared {
    type Store = dyn SymbolModeStore;
    type State = ModeDelta;

    async fn read(&self, store: &dyn SymbolModeStore) -> Result<ModeDelta, Error> {
        fetch(store, self).await
    }

    async fn resolve(
        &self,
        store: &dyn SymbolModeStore,
        pushed: ModeChange,
    ) -> Result<Option<ModeDelta>, Error> {
        if self.held() == Some(pushed.position) {
            return Ok(None);
        }
        // The notification's delta continues the snapshot: apply it without a read.
        if let Some(delta) = pushed.delta {
            let snapshot = self.snapshot.load();
            if self.held().is_some() && snapshot.continues(delta.since, delta.since_event) {
                return Ok(Some(delta));
            }
        }
        // Newer, or a resync after a reconnect: read what changed after the snapshot
        // (everything, when the store's history no longer continues it).
        fetch(store, self).await.map(Some)
    }

    fn held(&self) -> Option<Position> {
        self.loaded().then(|| self.snapshot.load().position())
    }

    /// A successful read: apply it when it fits (a late answer must not roll back a
    /// newer snapshot), then leave any fail-closed state.
    fn adopt(self: &Arc<Self>, delta: ModeDelta) {
        let next = if self.word.load(Ordering::Acquire) == NOT_LOADED {
            Some(ModeSnapshot::from_delta(&delta))
        } else {
            self.snapshot.load().apply(&delta)
        };
        match next {
            Some(next) => {
                let (version, position) = (next.version(), next.position());
                self.publish(Arc::new(next));
                self.set_word(FRESH);
                self.published.announce(version, position);
            }
            // Nothing newer: the read still proves freshness.
            None => self.set_word(FRESH),
        }
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
