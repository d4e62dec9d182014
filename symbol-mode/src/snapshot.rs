//! [`ModeSnapshot`]: every symbol's own mode plus the global mode, as one immutable
//! value the hot path reads without a lock.

use crate::{ModeDelta, SymbolMode, Throttle};
use failover_core::Position;
use std::collections::HashMap;
use uuid::Uuid;

/// foldhash (hashbrown's default hasher) with a fixed seed: a handful of
/// multiplications for a typical symbol. Minimal DoS resistance is fine here: the key
/// set is written only by operators through the audited store; order flow only looks
/// keys up.
pub(crate) type SymbolHasher = foldhash::fast::FixedState;

type SymbolMap = HashMap<Box<str>, SymbolMode, SymbolHasher>;
type ThrottleMap = HashMap<Box<str>, Throttle, SymbolHasher>;

/// Every symbol's own mode and the global mode at one store version.
///
/// Only symbols whose own mode is stricter than `NORMAL` are held: a symbol not in
/// the map (never set, set back to `NORMAL`, or unknown) follows the global mode.
/// [`effective`](Self::effective) takes `&str`, hashes it and reads one map entry:
/// no lock, no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeSnapshot {
    version: u64,
    position: Position,
    head_event: Option<Uuid>,
    global: SymbolMode,
    withdrawals_halted: bool,
    new_strategies_disabled: bool,
    symbols: SymbolMap,
    throttles: ThrottleMap,
}

impl ModeSnapshot {
    /// A snapshot of a full load (`delta.since == 0`).
    pub fn from_delta(delta: &ModeDelta) -> Self {
        let mut snapshot = Self::default();
        snapshot.absorb(delta);
        snapshot
    }

    /// This snapshot with `delta` applied, or `None` when the delta does not fit:
    /// it starts after a version this snapshot does not have, its history differs
    /// from this snapshot's (`since_event`), or it is not newer.
    pub fn apply(&self, delta: &ModeDelta) -> Option<Self> {
        if delta.since == 0 {
            return Some(Self::from_delta(delta));
        }
        let fits = delta.since <= self.version
            && delta.version > self.version
            && (delta.since < self.version || delta.since_event == self.head_event);
        if !fits {
            return None;
        }
        let mut next = self.clone();
        next.absorb(delta);
        Some(next)
    }

    /// True when a delta starting at `since` with `since_event` continues this
    /// snapshot's history (otherwise a full reload is needed).
    pub fn continues(&self, since: u64, since_event: Option<Uuid>) -> bool {
        since == self.version && since_event == self.head_event
    }

    fn absorb(&mut self, delta: &ModeDelta) {
        self.version = delta.version;
        self.position = delta.position;
        self.head_event = delta.head_event;
        self.global = delta.global;
        self.withdrawals_halted = delta.withdrawals_halted;
        self.new_strategies_disabled = delta.new_strategies_disabled;
        for (symbol, mode) in &delta.symbols {
            if *mode == SymbolMode::Normal {
                self.symbols.remove(symbol.as_str());
            } else {
                self.symbols.insert(symbol.as_str().into(), *mode);
            }
        }
        for (symbol, limit) in &delta.throttles {
            match limit {
                Some(limit) => {
                    self.throttles.insert(symbol.as_str().into(), *limit);
                }
                None => {
                    self.throttles.remove(symbol.as_str());
                }
            }
        }
    }

    /// The store version this snapshot reflects.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The position of the newest command the snapshot reflects.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The request id of the command at [`version`](Self::version).
    pub fn head_event(&self) -> Option<Uuid> {
        self.head_event
    }

    /// The global mode.
    pub fn global(&self) -> SymbolMode {
        self.global
    }

    /// True while withdrawals are halted.
    pub fn withdrawals_halted(&self) -> bool {
        self.withdrawals_halted
    }

    /// True while new strategy activations are halted firm-wide.
    #[inline]
    pub fn new_strategies_disabled(&self) -> bool {
        self.new_strategies_disabled
    }

    /// A symbol's own mode (`NORMAL` when not held).
    #[inline]
    pub fn symbol_mode(&self, symbol: &str) -> SymbolMode {
        self.symbols.get(symbol).copied().unwrap_or_default()
    }

    /// The effective mode of `symbol`: the more severe of global and own mode.
    #[inline]
    pub fn effective(&self, symbol: &str) -> SymbolMode {
        SymbolMode::effective(self.global, self.symbol_mode(symbol))
    }

    /// The order-rate throttle of `symbol`, if it has one.
    pub fn throttle(&self, symbol: &str) -> Option<Throttle> {
        self.throttles.get(symbol).copied()
    }

    /// Every throttled symbol with its limit (any order).
    pub fn throttles(&self) -> impl Iterator<Item = (&str, Throttle)> {
        self.throttles.iter().map(|(s, t)| (&**s, *t))
    }

    /// How many symbols have a mode stricter than `NORMAL`.
    pub fn restricted_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// The symbols stricter than `NORMAL` with their own modes (any order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, SymbolMode)> {
        self.symbols.iter().map(|(s, m)| (&**s, *m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(since: u64, version: u64, symbols: &[(&str, SymbolMode)]) -> ModeDelta {
        ModeDelta {
            since,
            since_event: (since > 0).then(|| Uuid::from_u128(since.into())),
            version,
            position: Position::new(1, version),
            head_event: Some(Uuid::from_u128(version.into())),
            global: SymbolMode::Normal,
            withdrawals_halted: false,
            new_strategies_disabled: false,
            symbols: symbols.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
            throttles: Vec::new(),
        }
    }

    #[test]
    fn deltas_apply_in_order_and_normal_symbols_are_dropped() {
        let s = ModeSnapshot::from_delta(&delta(
            0,
            2,
            &[("A", SymbolMode::HardHalt), ("B", SymbolMode::Normal)],
        ));
        assert_eq!(s.restricted_symbols(), 1);
        assert_eq!(s.effective("A"), SymbolMode::HardHalt);
        assert_eq!(s.effective("B"), SymbolMode::Normal);
        let s = s
            .apply(&delta(2, 3, &[("A", SymbolMode::CancelOnly)]))
            .unwrap();
        assert_eq!(s.effective("A"), SymbolMode::CancelOnly);
        let s = s.apply(&delta(3, 4, &[("A", SymbolMode::Normal)])).unwrap();
        assert_eq!(s.restricted_symbols(), 0);
        assert_eq!(s.version(), 4);
    }

    #[test]
    fn the_hasher_spreads_similar_symbols_over_buckets_and_tags() {
        use std::hash::BuildHasher;
        let build = SymbolHasher::default();
        let mut buckets = std::collections::HashSet::new();
        let mut tags = std::collections::HashMap::<u64, usize>::new();
        for i in 0..10_000 {
            let hash = build.hash_one(format!("SYM-{i:05}").as_str());
            buckets.insert(hash & 16_383);
            *tags.entry(hash >> 57).or_default() += 1;
        }
        // A random function fills ~7,500 of 16,384 buckets with 10,000 keys.
        assert!(buckets.len() > 7_000, "{} buckets", buckets.len());
        assert_eq!(tags.len(), 128, "every 7-bit tag used");
        assert!(tags.values().all(|&n| n < 160), "tags skewed: {tags:?}");
    }

    #[test]
    fn a_late_gapped_or_diverging_delta_does_not_apply() {
        let s = ModeSnapshot::from_delta(&delta(0, 5, &[]));
        assert!(s.apply(&delta(3, 5, &[])).is_none(), "not newer");
        assert!(s.apply(&delta(6, 7, &[])).is_none(), "gap");
        let mut diverged = delta(5, 6, &[]);
        diverged.since_event = Some(Uuid::from_u128(99));
        assert!(s.apply(&diverged).is_none(), "other history");
        assert!(s.apply(&delta(4, 6, &[])).is_some(), "overlap is fine");
    }
}
