//! The audit trail of an in-memory store, shared by every control's memory
//! implementation so that each is held to what PostgreSQL does: positions numbered on
//! a timeline like a fresh cluster, one event per applied change, request ids that
//! find their change again (idempotent replay), and
//! [`lose_newest`](MemoryHistory::lose_newest), which does to the trail what an
//! asynchronous failover does to a PostgreSQL store.

use crate::{ChangeRef, Position};
use std::collections::HashMap;
use uuid::Uuid;

/// An event of a control's audit trail.
pub trait HistoryEvent: Clone {
    /// Its position.
    fn position(&self) -> Position;
    /// The request that made it.
    fn request_id(&self) -> Uuid;
    /// The event as the change a refusal names.
    fn change_ref(&self) -> ChangeRef;
}

/// Implements [`HistoryEvent`] for an event type with the fields every control's
/// event has — `position: Position` and `request_id: Uuid` — and an inherent
/// `change_ref(&self) -> ChangeRef`.
///
/// ```text
/// failover_core::history_event!(KillSwitchEvent);
/// ```
#[macro_export]
macro_rules! history_event {
    ($event:ty) => {
        impl $crate::memory::HistoryEvent for $event {
            fn position(&self) -> $crate::Position {
                self.position
            }
            fn request_id(&self) -> ::uuid::Uuid {
                self.request_id
            }
            fn change_ref(&self) -> $crate::ChangeRef {
                <$event>::change_ref(self)
            }
        }
    };
}

/// The events of an in-memory store, oldest first, with the timeline new positions
/// are numbered on.
#[derive(Debug, Clone)]
pub struct MemoryHistory<E> {
    events: Vec<E>,
    by_request: HashMap<Uuid, usize>,
    timeline: u64,
}

impl<E: HistoryEvent> Default for MemoryHistory<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: HistoryEvent> MemoryHistory<E> {
    /// An empty trail on the first timeline.
    pub fn new() -> Self {
        Self {
            events: Vec::new(),
            by_request: HashMap::new(),
            timeline: crate::position::FIRST_TIMELINE,
        }
    }

    /// The position of the newest event ([`Position::ZERO`] when empty).
    pub fn head(&self) -> Position {
        self.events.last().map_or(Position::ZERO, E::position)
    }

    /// The position the next event takes: after the newest, on the current timeline.
    pub fn next_position(&self) -> Position {
        self.head().next_on(self.timeline)
    }

    /// The event `request_id` made, if the trail holds it.
    pub fn by_request(&self, request_id: Uuid) -> Option<&E> {
        self.by_request.get(&request_id).map(|&i| &self.events[i])
    }

    /// The newest event, as the change in force a refusal names.
    pub fn latest(&self) -> Option<ChangeRef> {
        self.events.last().map(E::change_ref)
    }

    /// The newest event matching `filter` (the latest change of one target).
    pub fn latest_where(&self, filter: impl Fn(&E) -> bool) -> Option<&E> {
        self.events.iter().rev().find(|e| filter(e))
    }

    /// Appends an event (its position from [`next_position`](Self::next_position)).
    pub fn push(&mut self, event: E) -> &E {
        debug_assert!(event.position() > self.head(), "positions only grow");
        self.by_request
            .insert(event.request_id(), self.events.len());
        self.events.push(event);
        self.events.last().expect("just pushed")
    }

    /// Every event, oldest first.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// The event at `position`, if the trail holds one there (the change a target's
    /// position names).
    pub fn at(&self, position: Position) -> Option<&E> {
        let i = self.events.partition_point(|e| e.position() < position);
        self.events.get(i).filter(|e| e.position() == position)
    }

    /// The events after `position`, oldest first (what a subscriber that has seen
    /// `position` has yet to see).
    pub fn after(&self, position: Position) -> &[E] {
        let start = self.events.partition_point(|e| e.position() <= position);
        &self.events[start..]
    }

    /// At most `limit` events, newest first.
    pub fn newest(&self, limit: usize) -> Vec<E> {
        self.events.iter().rev().take(limit).cloned().collect()
    }

    /// True when the trail holds an event at `position` (and for
    /// [`Position::ZERO`]): false for a position lost in a failover.
    pub fn holds(&self, position: Position) -> bool {
        crate::position::history_holds(&self.events, position, E::position)
    }

    /// What an asynchronous failover does: the newest `lost` events vanish (the
    /// promoted replica never received them), their request ids are forgotten, and
    /// later events are numbered on the next timeline. Returns the positions lost,
    /// newest first; the caller rebuilds its state from what remains.
    pub fn lose_newest(&mut self, lost: usize) -> Vec<Position> {
        let keep = self.events.len().saturating_sub(lost);
        let gone = self
            .events
            .drain(keep..)
            .rev()
            .map(|e| e.position())
            .collect();
        self.by_request.retain(|_, i| *i < keep);
        self.timeline += 1;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[derive(Debug, Clone)]
    struct E(Position, Uuid);
    impl HistoryEvent for E {
        fn position(&self) -> Position {
            self.0
        }
        fn request_id(&self) -> Uuid {
            self.1
        }
        fn change_ref(&self) -> ChangeRef {
            ChangeRef {
                position: self.0,
                actor: "a".into(),
                what: "w".into(),
                at: SystemTime::UNIX_EPOCH,
            }
        }
    }

    #[test]
    fn a_lossy_failover_forgets_requests_and_numbers_on_the_next_timeline() {
        let mut h = MemoryHistory::new();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            let p = h.next_position();
            h.push(E(p, *id));
        }
        let before = h.head();
        let lost = h.lose_newest(2);
        assert_eq!(lost.len(), 2);
        assert!(h.by_request(ids[2]).is_none() && h.by_request(ids[0]).is_some());
        assert!(!h.holds(lost[0]) && h.holds(h.head()));
        let next = h.next_position();
        assert!(
            next > before,
            "a new timeline's positions pass every lost one"
        );
    }

    #[test]
    fn events_are_found_by_position_and_after_one() {
        let mut h = MemoryHistory::new();
        for _ in 0..3 {
            let p = h.next_position();
            h.push(E(p, Uuid::new_v4()));
        }
        let [a, b, c] = [0, 1, 2].map(|i| h.events()[i].0);
        assert_eq!(h.at(b).map(|e| e.0), Some(b));
        assert!(h.at(Position::ZERO).is_none());
        assert!(h.at(Position(c.0 + 1)).is_none());
        let after: Vec<Position> = h.after(a).iter().map(|e| e.0).collect();
        assert_eq!(after, [b, c]);
        assert_eq!(h.after(Position::ZERO).len(), 3);
        assert!(h.after(c).is_empty());
        h.lose_newest(1);
        assert!(h.at(c).is_none(), "a lost position finds nothing");
        assert_eq!(h.after(a).len(), 1);
    }
}
