//! The in-memory store: unit tests, single-process deployments, and the default of
//! the examples. Held to the same conformance suite as the Postgres store.

use crate::{
    validate, Action, Audit, Error, KillSwitchEvent, KillSwitchState, KillSwitchStore, Subscription,
};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

/// An in-memory kill switch. Starts disengaged at version 0, like a freshly
/// migrated database.
#[derive(Debug)]
pub struct MemoryKillSwitchStore {
    inner: Mutex<Inner>,
    changes: watch::Sender<Option<KillSwitchState>>,
}

#[derive(Debug)]
struct Inner {
    state: KillSwitchState,
    events: Vec<KillSwitchEvent>,
    by_request: HashMap<Uuid, usize>,
}

impl Default for MemoryKillSwitchStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKillSwitchStore {
    /// A disengaged switch at version 0.
    pub fn new() -> Self {
        let state = KillSwitchState {
            engaged: false,
            reason: String::new(),
            updated_at: failover_core::time::now_micros(),
            updated_by: String::new(),
            ticket: None,
            version: 0,
        };
        let (changes, _) = watch::channel(Some(state.clone()));
        Self {
            inner: Mutex::new(Inner {
                state,
                events: Vec::new(),
                by_request: HashMap::new(),
            }),
            changes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, audit: &Audit, action: Action) -> Result<KillSwitchState, Error> {
        validate(audit, action)?;
        let mut inner = self.lock();
        if let Some(&i) = inner.by_request.get(&audit.request_id()) {
            let e = &inner.events[i];
            if e.action != action {
                return Err(Error::RequestReused {
                    request_id: e.request_id,
                    previous: e.action,
                });
            }
            return Ok(KillSwitchState {
                engaged: e.engaged,
                reason: e.reason.clone(),
                updated_at: e.at,
                updated_by: e.actor.clone(),
                ticket: e.ticket.clone(),
                version: e.version,
            });
        }
        let state = KillSwitchState {
            engaged: action == Action::Engage,
            reason: audit.reason().to_owned(),
            updated_at: failover_core::time::now_micros(),
            updated_by: audit.actor().to_owned(),
            ticket: audit.ticket().map(str::to_owned),
            version: inner.state.version + 1,
        };
        inner.events.push(KillSwitchEvent {
            version: state.version,
            request_id: audit.request_id(),
            action,
            engaged: state.engaged,
            reason: state.reason.clone(),
            actor: state.updated_by.clone(),
            ticket: state.ticket.clone(),
            at: state.updated_at,
        });
        let index = inner.events.len() - 1;
        inner.by_request.insert(audit.request_id(), index);
        inner.state = state.clone();
        // Published under the lock so subscribers see versions in order.
        self.changes.send_replace(Some(state.clone()));
        Ok(state)
    }
}

#[async_trait::async_trait]
impl KillSwitchStore for MemoryKillSwitchStore {
    async fn load(&self) -> Result<KillSwitchState, Error> {
        Ok(self.lock().state.clone())
    }

    async fn engage(&self, audit: &Audit) -> Result<KillSwitchState, Error> {
        self.apply(audit, Action::Engage)
    }

    async fn disengage(&self, audit: &Audit) -> Result<KillSwitchState, Error> {
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

    async fn subscribe(&self) -> Result<Subscription, Error> {
        Ok(Subscription::new(self.changes.subscribe()))
    }
}
