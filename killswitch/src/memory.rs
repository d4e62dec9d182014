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
use failover_core::approvals::{
    ApprovalError, Approved, Gate, GateCommand, MemoryApprovals, MemoryApprover,
};
use failover_core::authority::{check_relaxation, replay};
use failover_core::memory::MemoryHistory;
use failover_core::{ChangeFeed, FeedSource, Position};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The control and target the kill switch's approval requests name.
const CONTROL: &str = "kill_switch";
const ACTION: &str = "kill-switch.disengage";

/// An in-memory kill switch. Starts disengaged at version 0, like a freshly
/// migrated database.
#[derive(Debug)]
pub struct MemoryKillSwitchStore {
    inner: Mutex<Inner>,
    feed: ChangeFeed<KillSwitchState>,
    approvals: Option<Arc<MemoryApprovals>>,
}

#[derive(Debug)]
struct Inner {
    state: KillSwitchState,
    history: MemoryHistory<KillSwitchEvent>,
}

failover_core::history_event!(KillSwitchEvent);

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
                history: MemoryHistory::new(),
            }),
            feed,
            approvals: None,
        }
    }

    /// A disengaged switch whose disengage is subject to `approvals` (four eyes:
    /// see [`failover_core::approvals`]), registered with them so that an approval
    /// applies here.
    pub fn with_approvals(approvals: Arc<MemoryApprovals>) -> Arc<Self> {
        let store = Arc::new(Self {
            approvals: Some(approvals.clone()),
            ..Self::new()
        });
        approvals.register(store.clone());
        store
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
        let gone = inner.history.lose_newest(lost);
        inner.state = inner
            .history
            .events()
            .last()
            .map_or_else(initial, KillSwitchEvent::state);
        self.feed.resync(inner.state.clone());
        gone
    }

    fn apply(&self, audit: &Audit, action: Action) -> Result<Applied<KillSwitchState>, Error> {
        validate(audit, action)?;
        let mut inner = self.lock();
        self.apply_locked(&mut inner, audit, action, None)
    }

    /// Applies under the lock; `approving` is the request a second supervisor's
    /// approval applies (the gate was passed when it was made).
    fn apply_locked(
        &self,
        inner: &mut Inner,
        audit: &Audit,
        action: Action,
        approving: Option<Uuid>,
    ) -> Result<Applied<KillSwitchState>, Error> {
        // The change in force: the event at the state's position (the last one).
        let latest = |inner: &Inner| inner.history.latest();
        if let Some(e) = inner.history.by_request(audit.request_id()) {
            let same = e.action == action && e.actor == audit.actor();
            return replay(
                e.request_id,
                same,
                e.position == inner.state.position,
                || e.state(),
                || format!("{} by {}", e.action, e.actor),
                || latest(inner).unwrap_or_else(|| e.change_ref()),
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
                || latest(inner),
            )?;
        }
        let mut break_glass = false;
        if let (Action::Disengage, None, Some(approvals)) = (action, approving, &self.approvals) {
            match approvals.gate(&GateCommand {
                action: ACTION,
                control: CONTROL,
                target: CONTROL.into(),
                what: format!(
                    "disengage the kill switch (engaged: {})",
                    inner.state.reason
                ),
                // The only relaxation of the switch: the approval applies a disengage.
                params: Default::default(),
                audit,
                expected: inner.state.position,
            }) {
                Gate::Apply => {}
                Gate::BreakGlass => break_glass = true,
                Gate::Pending(request) => return Err(Error::PendingApproval(request)),
                Gate::Closed(status) => {
                    return Err(failover_core::authority::counted(Refusal::RequestReused {
                        request_id: audit.request_id(),
                        previous: format!("an approval request that is now {status}"),
                    })
                    .into())
                }
            }
        }
        let state = KillSwitchState {
            engaged: action == Action::Engage,
            reason: audit.reason().to_owned(),
            updated_at: failover_core::time::now_micros(),
            updated_by: audit.actor().to_owned(),
            ticket: audit.ticket().map(str::to_owned),
            version: inner.state.version + 1,
            position: inner.history.next_position(),
        };
        let event = inner.history.push(KillSwitchEvent {
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
            approval_id: approving,
            break_glass,
        });
        let change = event.change_ref();
        inner.state = state.clone();
        if let Some(approvals) = &self.approvals {
            approvals.applied(CONTROL, CONTROL, &change, approving);
        }
        if break_glass {
            failover_core::approvals::break_glass_applied(
                ACTION,
                "disengage the kill switch",
                audit.actor(),
                audit.request_id(),
            );
        }
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
        Ok(self.lock().history.newest(limit))
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
        Ok(self.lock().history.holds(position))
    }
}

impl MemoryApprover for MemoryKillSwitchStore {
    fn control(&self) -> &'static str {
        CONTROL
    }

    fn apply_approved(
        &self,
        id: Uuid,
        actor: &str,
        approvals: &MemoryApprovals,
    ) -> Result<Approved, ApprovalError> {
        // The switch's lock first, then the request: the order PostgreSQL takes.
        let mut inner = self.lock();
        let claimed = approvals.claim(id, actor)?;
        let r = &claimed.request;
        let mut audit = Audit::new(r.requested_by.clone(), r.reason.clone())
            .with_request_id(id)
            .expecting(r.expected_position);
        if let Some(t) = &r.ticket {
            audit = audit.with_ticket(t.clone());
        }
        match self.apply_locked(&mut inner, &audit, Action::Disengage, Some(id)) {
            Ok(applied) => approvals.close(id, actor, Ok(applied.position)),
            Err(Error::Refused(Refusal::PreconditionFailed { current, .. })) => {
                approvals.close(id, actor, Err(current))
            }
            Err(e) => Err(ApprovalError::Invalid {
                message: format!("approving request {id}: the kill switch refused it: {e}"),
            }),
        }
    }
}
