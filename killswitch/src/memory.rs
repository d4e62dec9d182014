//! The in-memory store: unit tests, single-process deployments, and the default of
//! the examples. Held to the same conformance suite as the Postgres store, positions
//! included: changes are numbered on timeline 1 like a fresh cluster, and
//! [`MemoryKillSwitchStore::simulate_lossy_failover`] reproduces what an asynchronous
//! failover does to a PostgreSQL store, so that handles can be tested against it
//! without a database.

use crate::{
    describe, validate, Action, Applied, Audit, Error, KillSwitchEvent, KillSwitchState,
    KillSwitchStore, Refusal, Subscription,
};
use failover_core::authority::{check_relaxation, replay};
use failover_core::{ChangeFeed, FeedSource, Position};
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// An in-memory kill switch. Starts disengaged at version 0, like a freshly
/// migrated database.
#[derive(Debug)]
pub struct MemoryKillSwitchStore {
    inner: Mutex<Inner>,
    feed: ChangeFeed<KillSwitchState>,
}

#[derive(Debug)]
struct Inner {
    state: KillSwitchState,
    events: Vec<KillSwitchEvent>,
    by_request: HashMap<Uuid, usize>,
    timeline: u64,
}

impl Default for MemoryKillSwitchStore {
    fn default() -> Self {
        Self::new()
    }
}

fn initial() -> KillSwitchState {
    KillSwitchState {
        engaged: false,
        reason: String::new(),
        updated_at: failover_core::time::now_micros(),
        updated_by: String::new(),
        ticket: None,
        version: 0,
        position: Position::ZERO,
    }
}

impl MemoryKillSwitchStore {
    /// A disengaged switch at version 0.
    pub fn new() -> Self {
        let state = initial();
        let feed = ChangeFeed::new();
        feed.publish(state.clone());
        Self {
            inner: Mutex::new(Inner {
                state,
                events: Vec::new(),
                by_request: HashMap::new(),
                timeline: failover_core::position::FIRST_TIMELINE,
            }),
            feed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Does to this store what an asynchronous failover does to a PostgreSQL one: the
    /// newest `lost` changes vanish (the promoted replica never received them), the
    /// state goes back to the last change that remains, later changes are numbered
    /// on the next timeline, and subscribers are resynced as after a reconnect.
    /// Returns the positions lost, newest first.
    pub fn simulate_lossy_failover(&self, lost: usize) -> Vec<Position> {
        let mut inner = self.lock();
        let keep = inner.events.len().saturating_sub(lost);
        let gone: Vec<Position> = inner
            .events
            .drain(keep..)
            .rev()
            .map(|e| e.position)
            .collect();
        inner.by_request.retain(|_, i| *i < keep);
        inner.state = inner
            .events
            .last()
            .map_or_else(initial, KillSwitchEvent::state);
        inner.timeline += 1;
        self.feed.resync(inner.state.clone());
        gone
    }

    fn apply(&self, audit: &Audit, action: Action) -> Result<Applied<KillSwitchState>, Error> {
        validate(audit, action)?;
        let mut inner = self.lock();
        // The change in force: the event at the state's position (the last one).
        let latest = |inner: &Inner| inner.events.last().map(KillSwitchEvent::change_ref);
        if let Some(&i) = inner.by_request.get(&audit.request_id()) {
            let e = &inner.events[i];
            let same = e.action == action && e.actor == audit.actor();
            return replay(
                e.request_id,
                same,
                e.position == inner.state.position,
                || e.state(),
                || format!("{} by {}", e.action, e.actor),
                || latest(&inner).unwrap_or_else(|| e.change_ref()),
            )
            .map_err(Error::from);
        }
        if action == Action::Disengage {
            if !audit.authority().may_relax() {
                return Err(Refusal::Forbidden {
                    message: format!(
                        "{} relaxes safety and needs supervisor authority; {} acts as {}",
                        describe(action),
                        audit.actor(),
                        audit.authority()
                    ),
                }
                .into());
            }
            check_relaxation(
                audit.precondition(),
                describe(action),
                inner.state.position,
                || latest(&inner),
            )?;
        }
        let state = KillSwitchState {
            engaged: action == Action::Engage,
            reason: audit.reason().to_owned(),
            updated_at: failover_core::time::now_micros(),
            updated_by: audit.actor().to_owned(),
            ticket: audit.ticket().map(str::to_owned),
            version: inner.state.version + 1,
            position: inner.state.position.next_on(inner.timeline),
        };
        inner.events.push(KillSwitchEvent {
            version: state.version,
            position: state.position,
            request_id: audit.request_id(),
            action,
            engaged: state.engaged,
            reason: state.reason.clone(),
            actor: state.updated_by.clone(),
            ticket: state.ticket.clone(),
            at: state.updated_at,
            login: None,
            authority: Some(audit.authority()),
            approval_id: None,
            break_glass: false,
        });
        let index = inner.events.len() - 1;
        inner.by_request.insert(audit.request_id(), index);
        inner.state = state.clone();
        // Published under the lock so subscribers see positions in order.
        self.feed.publish(state.clone());
        Ok(Applied::new(state))
    }
}

#[async_trait::async_trait]
impl KillSwitchStore for MemoryKillSwitchStore {
    async fn load(&self) -> Result<KillSwitchState, Error> {
        Ok(self.lock().state.clone())
    }

    async fn engage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.apply(audit, Action::Engage)
    }

    async fn disengage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error> {
        self.apply(audit, Action::Disengage)
    }

    async fn history(&self, limit: usize) -> Result<Vec<KillSwitchEvent>, Error> {
        Ok(self
            .lock()
            .events
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait::async_trait]
impl FeedSource for MemoryKillSwitchStore {
    type Item = KillSwitchState;
    type Error = Error;

    async fn subscribe(&self) -> Result<Subscription, Error> {
        Ok(self.feed.subscribe())
    }

    async fn contains(&self, position: Position) -> Result<bool, Error> {
        let inner = self.lock();
        Ok(failover_core::position::history_holds(
            &inner.events,
            position,
            |e| e.position,
        ))
    }
}
