//! Positions: the identity of every change of every control, strictly increasing
//! across promotions — including asynchronous ones that lost acknowledged writes.
//!
//! A position is `(timeline << 40) | counter` in one `u64` (a `BIGINT` in PostgreSQL,
//! sign bit unused): *timeline* is the WAL timeline of the server that committed the
//! change, *counter* counts changes within it. A new change takes
//! `greatest(previous + 1, (timeline << 40) + 1)` under the control's row lock (SQL
//! function `failover_next_position`, installed by every store's migrations).
//!
//! Why this survives a lossy failover: promoting a replica always starts a timeline
//! above every timeline the cluster has used. The changes the old primary committed
//! but never shipped all carry the old timeline, so the first change on the new
//! primary is above every one of them. A *version* (a plain counter) restarts below
//! the lost changes; a position never does, so "newer" is always "greater", and a
//! position names one change forever: audit events are identified by it.
//!
//! A reader that holds a position its store's history no longer contains (see the
//! change feed and the watcher) knows that the change was lost, and adopts the
//! database of record.
//!
//! The in-memory stores issue positions on timeline 1 like a fresh cluster, and can
//! simulate a promotion so that the same logic is testable without a database.

use serde::{Deserialize, Serialize};

/// Bits of a position that count changes within one timeline.
pub const COUNTER_BITS: u32 = 40;

/// The timeline of a fresh cluster (and of the in-memory stores).
pub const FIRST_TIMELINE: u64 = 1;

/// A change's position: `(timeline << 40) | counter`. `Position(0)` means "before any
/// change".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before any change.
    pub const ZERO: Self = Self(0);

    /// The position of `counter` on `timeline`.
    pub const fn new(timeline: u64, counter: u64) -> Self {
        Self((timeline << COUNTER_BITS) | (counter & ((1 << COUNTER_BITS) - 1)))
    }

    /// The WAL timeline the change was committed on.
    pub const fn timeline(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// The change's number within its timeline.
    pub const fn counter(self) -> u64 {
        self.0 & ((1 << COUNTER_BITS) - 1)
    }

    /// The position of the next change made on `timeline` after this one: exactly
    /// what `failover_next_position` computes in SQL.
    pub fn next_on(self, timeline: u64) -> Self {
        Self(self.0.saturating_add(1).max(Self::new(timeline, 1).0))
    }

    /// As stored in a `BIGINT`.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// From a `BIGINT` column (negative values, which the schema forbids, read as 0).
    pub fn from_i64(v: i64) -> Self {
        Self(u64::try_from(v).unwrap_or(0))
    }
}

impl From<u64> for Position {
    fn from(v: u64) -> Self {
        Self(v)
    }
}

impl From<Position> for u64 {
    fn from(p: Position) -> Self {
        p.0
    }
}

/// `timeline/counter`, e.g. `2/17`: what operators read in logs and health details.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.timeline(), self.counter())
    }
}

/// Something that carries the position of the change it reflects.
pub trait Positioned {
    /// The position of the newest change this value reflects (0: none yet).
    fn position(&self) -> Position;
}

impl Positioned for Position {
    fn position(&self) -> Position {
        *self
    }
}

/// Whether a history sorted by position holds `position` ([`Position::ZERO`], "before
/// any change", always counts as held): what an in-memory store answers to
/// [`FeedSource::contains`](crate::feed::FeedSource::contains).
pub fn history_holds<T>(history: &[T], position: Position, key: impl Fn(&T) -> Position) -> bool {
    position == Position::ZERO || history.binary_search_by_key(&position, key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_split_into_timeline_and_counter_and_display_both() {
        let p = Position::new(3, 17);
        assert_eq!((p.timeline(), p.counter()), (3, 17));
        assert_eq!(p.to_string(), "3/17");
        assert_eq!(Position::from_i64(p.as_i64()), p);
        // The largest timeline a BIGINT can hold leaves the sign bit clear.
        assert!(Position::new((1 << 23) - 1, (1 << 40) - 1).as_i64() > 0);
    }

    #[test]
    fn a_promotion_jumps_above_every_change_of_the_old_timeline() {
        // The old primary went up to 1/9; the replica had only 1/4 when promoted.
        let lost = Position::new(1, 9);
        let replicated = Position::new(1, 4);
        let first_on_new = replicated.next_on(2);
        assert_eq!(first_on_new, Position::new(2, 1));
        assert!(first_on_new > lost, "new timeline beats every lost change");
        // Within one timeline: plus one.
        assert_eq!(first_on_new.next_on(2), Position::new(2, 2));
        // A store moved onto a lower timeline still never goes back.
        assert_eq!(Position::new(5, 3).next_on(2), Position::new(5, 4));
        // Fresh store.
        assert_eq!(Position::ZERO.next_on(1), Position::new(1, 1));
    }
}
