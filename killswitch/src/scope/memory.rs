//! The in-memory scope store: unit tests, single-process deployments. Held to the
//! same conformance suite as PostgreSQL, positions included: changes are numbered on
//! timeline 1 like a fresh cluster, and
//! [`MemoryScopeStore::simulate_lossy_failover`] reproduces what an asynchronous
//! failover does to a PostgreSQL store.

use super::{
    decide, describe_change, relax_what, EffectiveScope, Error, ScopeAction, ScopeChange,
    ScopeDelta, ScopeEvent, ScopeMode, ScopePath, ScopeRefusal, ScopeState, ScopeStore,
    Subscription, APPROVAL_ACTION, CONTROL,
};
use crate::{KillSwitchStore, MemoryKillSwitchStore};
use failover_core::approvals::{
    serde_json, ApprovalError, Approved, Gate, GateCommand, MemoryApprovals, MemoryApprover,
};
use failover_core::authority::{check_relaxation, counted, replay};
use failover_core::memory::MemoryHistory;
use failover_core::{
    Applied, Audit, ChangeFeed, FeedSource, Position, Precondition, Refusal, Safety,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Scopes in memory, under the root of a [`MemoryKillSwitchStore`].
#[derive(Debug)]
pub struct MemoryScopeStore {
    root: Arc<MemoryKillSwitchStore>,
    inner: Mutex<Inner>,
    feed: ChangeFeed<ScopeChange>,
    approvals: Option<Arc<MemoryApprovals>>,
}

#[derive(Debug, Clone)]
struct Node {
    state: ScopeState,
    /// The store version of the node's last change.
    version: u64,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<ScopePath, Node>,
    /// Every event, oldest first; the version of `events()[i]` is `i + 1`.
    history: MemoryHistory<ScopeEvent>,
}

failover_core::history_event!(ScopeEvent);

impl Inner {
    fn version(&self) -> u64 {
        self.history.events().len() as u64
    }

    fn position(&self) -> Position {
        self.history.head()
    }

    fn event_id(&self, version: u64) -> Option<Uuid> {
        let i = usize::try_from(version).ok()?.checked_sub(1)?;
        self.history.events().get(i).map(|e| e.request_id)
    }

    /// The change in force of `path`: its last event.
    fn latest(&self, path: &ScopePath) -> Option<&ScopeEvent> {
        self.history.latest_where(|e| &e.path == path)
    }

    fn unknown(&self, path: &str) -> Error {
        Error::Control(ScopeRefusal::UnknownScope {
            path: path.to_owned(),
            did_you_mean: ScopePath::near_miss(path, self.nodes.keys()),
        })
    }

    /// The nodes, rebuilt from the events (after a simulated failover).
    fn rebuild(&mut self) {
        self.nodes.clear();
        for (i, e) in self.history.events().iter().enumerate() {
            let created_by = match e.action {
                ScopeAction::Create => e.actor.clone(),
                ScopeAction::SetMode => self
                    .nodes
                    .get(&e.path)
                    .map(|n| n.state.created_by.clone())
                    .unwrap_or_default(),
            };
            self.nodes.insert(
                e.path.clone(),
                Node {
                    state: state_of(e, created_by),
                    version: i as u64 + 1,
                },
            );
        }
    }
}

fn state_of(e: &ScopeEvent, created_by: String) -> ScopeState {
    ScopeState {
        path: e.path.clone(),
        mode: e.to_mode,
        reason: e.reason.clone(),
        updated_by: e.actor.clone(),
        ticket: e.ticket.clone(),
        updated_at: e.at,
        created_by,
        position: e.position,
    }
}

/// A command as the store applies it.
#[derive(Debug, Clone, Copy)]
enum Command {
    Create,
    Set(ScopeMode),
}

impl MemoryScopeStore {
    /// No scopes, under the root `root` (its state decides when engaged).
    pub fn new(root: Arc<MemoryKillSwitchStore>) -> Self {
        let feed = ChangeFeed::new();
        feed.publish(ScopeChange::at(Position::ZERO));
        Self {
            root,
            inner: Mutex::new(Inner::default()),
            feed,
            approvals: None,
        }
    }

    /// No scopes, whose relaxations are subject to `approvals` (four eyes, action
    /// `scope.relax`), registered with them so that an approval applies here.
    pub fn with_approvals(
        root: Arc<MemoryKillSwitchStore>,
        approvals: Arc<MemoryApprovals>,
    ) -> Arc<Self> {
        let store = Arc::new(Self {
            approvals: Some(approvals.clone()),
            ..Self::new(root)
        });
        approvals.register(store.clone());
        store
    }

    /// The root this store reads.
    pub fn root(&self) -> &Arc<MemoryKillSwitchStore> {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Does to this store what an asynchronous failover does to a PostgreSQL one: the
    /// newest `lost` changes vanish, every node goes back to its last change that
    /// remains (a node whose creation was lost vanishes), later changes are numbered
    /// on the next timeline, and subscribers are resynced. Returns the positions
    /// lost, newest first.
    pub fn simulate_lossy_failover(&self, lost: usize) -> Vec<Position> {
        let mut inner = self.lock();
        let gone = inner.history.lose_newest(lost);
        inner.rebuild();
        self.feed.resync(ScopeChange::at(inner.position()));
        gone
    }

    fn apply(
        &self,
        path: &ScopePath,
        command: Command,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        audit.validate(Safety::Tighten, "")?;
        let mut inner = self.lock();
        self.apply_locked(&mut inner, path, command, audit, None)
    }

    /// Applies under the lock; `approving` is the request a second supervisor's
    /// approval applies (the gate was passed when it was made).
    fn apply_locked(
        &self,
        inner: &mut Inner,
        path: &ScopePath,
        command: Command,
        audit: &Audit,
        approving: Option<Uuid>,
    ) -> Result<Applied<ScopeState>, Error> {
        if let Some(e) = inner.history.by_request(audit.request_id()) {
            let same = &e.path == path
                && e.actor == audit.actor()
                && match command {
                    Command::Create => e.action == ScopeAction::Create,
                    Command::Set(to) => e.action == ScopeAction::SetMode && e.to_mode == to,
                };
            let node = inner.nodes.get(&e.path);
            let in_force = node.is_some_and(|n| n.state.position == e.position);
            return replay(
                e.request_id,
                same,
                in_force,
                || node.map_or_else(|| state_of(e, e.actor.clone()), |n| n.state.clone()),
                || format!("{} by {}", e.describe(), e.actor),
                || {
                    inner
                        .latest(&e.path)
                        .map_or_else(|| e.change_ref(), ScopeEvent::change_ref)
                },
            )
            .map_err(Error::from);
        }
        let (action, from, to) = match command {
            Command::Create => {
                if inner.nodes.contains_key(path) {
                    return Err(Error::Control(ScopeRefusal::AlreadyExists {
                        path: path.clone(),
                    }));
                }
                let key = ScopePath::fold(path.as_str());
                if let Some(existing) = inner
                    .nodes
                    .keys()
                    .find(|k| ScopePath::fold(k.as_str()) == key)
                {
                    return Err(Error::Control(ScopeRefusal::NearMiss {
                        path: path.clone(),
                        existing: existing.clone(),
                    }));
                }
                if let Some(parent) = path.parent() {
                    if !inner.nodes.contains_key(&parent) {
                        return Err(Error::Control(ScopeRefusal::ParentMissing {
                            path: path.clone(),
                            parent,
                        }));
                    }
                }
                (ScopeAction::Create, None, ScopeMode::Normal)
            }
            Command::Set(to) => {
                let Some(node) = inner.nodes.get(path) else {
                    return Err(inner.unknown(path.as_str()));
                };
                (ScopeAction::SetMode, Some(node.state.mode), to)
            }
        };
        let mut break_glass = false;
        if let Some(from) = from.filter(|from| to < *from) {
            let what = relax_what(path, from, to);
            audit.validate(Safety::Relax, &what)?;
            if !audit.authority().may_relax() && approving.is_none() {
                return Err(Refusal::Forbidden {
                    message: format!(
                        "{what} relaxes safety and needs supervisor authority; {} acts as {}",
                        audit.actor(),
                        audit.authority()
                    ),
                }
                .into());
            }
            let current = inner.nodes[path].state.position;
            let latest = || inner.latest(path).map(ScopeEvent::change_ref);
            // A state that moved since the caller read it is named first: the step
            // rule speaks of a mode the caller has not seen.
            if matches!(audit.precondition(), Precondition::At(seen) if seen != current) {
                check_relaxation(audit.precondition(), &what, current, latest)?;
            }
            if from == ScopeMode::Halted && to != ScopeMode::CancelOnly {
                return Err(Error::Control(ScopeRefusal::StepTooLarge {
                    path: path.clone(),
                    from,
                    to,
                }));
            }
            check_relaxation(audit.precondition(), &what, current, latest)?;
            if let (None, Some(approvals)) = (approving, &self.approvals) {
                match approvals.gate(&GateCommand {
                    action: APPROVAL_ACTION,
                    control: CONTROL,
                    target: path.to_string(),
                    what,
                    params: serde_json::json!({ "path": path.as_str(), "mode": to.as_str() }),
                    audit,
                    expected: current,
                }) {
                    Gate::Apply => {}
                    Gate::BreakGlass => break_glass = true,
                    Gate::Pending(request) => return Err(Error::PendingApproval(request)),
                    Gate::Closed(status) => {
                        return Err(counted(Refusal::RequestReused {
                            request_id: audit.request_id(),
                            previous: format!("an approval request that is now {status}"),
                        })
                        .into())
                    }
                }
            }
        }
        let event = ScopeEvent {
            position: inner.history.next_position(),
            request_id: audit.request_id(),
            path: path.clone(),
            action,
            from_mode: from,
            to_mode: to,
            reason: audit.reason().to_owned(),
            actor: audit.actor().to_owned(),
            ticket: audit.ticket().map(str::to_owned),
            at: failover_core::time::now_micros(),
            login: None,
            authority: Some(audit.authority()),
            approval_id: approving,
            break_glass,
        };
        let created_by = inner
            .nodes
            .get(path)
            .map_or_else(|| event.actor.clone(), |n| n.state.created_by.clone());
        let state = state_of(&event, created_by);
        let since_event = inner.event_id(inner.version());
        inner.history.push(event);
        let version = inner.version();
        inner.nodes.insert(
            path.clone(),
            Node {
                state: state.clone(),
                version,
            },
        );
        let event = &inner.history.events()[version as usize - 1];
        if let Some(approvals) = &self.approvals {
            approvals.applied(CONTROL, path.as_str(), &event.change_ref(), approving);
        }
        if break_glass {
            failover_core::approvals::break_glass_applied(
                APPROVAL_ACTION,
                &describe_change(path, action, from, to),
                audit.actor(),
                audit.request_id(),
            );
        }
        // Published under the lock so subscribers see positions in order, with the
        // delta of this one change (what a PostgreSQL notification carries too).
        self.feed.publish(ScopeChange {
            position: state.position,
            delta: Some(ScopeDelta {
                since: version - 1,
                since_event,
                version,
                position: state.position,
                head_event: Some(audit.request_id()),
                scopes: vec![(path.clone(), to)],
            }),
        });
        Ok(Applied::new(state))
    }
}

#[async_trait::async_trait]
impl ScopeStore for MemoryScopeStore {
    async fn create_scope(
        &self,
        path: &ScopePath,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        self.apply(path, Command::Create, audit)
    }

    async fn set_scope_mode(
        &self,
        path: &str,
        mode: ScopeMode,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        let path = ScopePath::parse(path)?;
        self.apply(&path, Command::Set(mode), audit)
    }

    async fn scope(&self, path: &str) -> Result<Option<ScopeState>, Error> {
        let path = ScopePath::parse(path)?;
        Ok(self.lock().nodes.get(&path).map(|n| n.state.clone()))
    }

    async fn scopes(&self, under: Option<&ScopePath>) -> Result<Vec<ScopeState>, Error> {
        Ok(self
            .lock()
            .nodes
            .values()
            .filter(|n| under.is_none_or(|u| u.contains(&n.state.path)))
            .map(|n| n.state.clone())
            .collect())
    }

    async fn effective(&self, path: &str) -> Result<EffectiveScope, Error> {
        let path = ScopePath::parse(path)?;
        let root = self.root.load().await.map_err(|e| Error::Database {
            source: failover_core::DbError::new(
                failover_core::DbErrorKind::Permanent,
                "scope.effective",
                None,
                format!("reading the kill switch: {e}"),
            ),
        })?;
        let inner = self.lock();
        if !inner.nodes.contains_key(&path) {
            return Err(inner.unknown(path.as_str()));
        }
        let mut chain: Vec<&ScopeState> = path
            .ancestors()
            .iter()
            .filter_map(|a| inner.nodes.get(a).map(|n| &n.state))
            .collect();
        chain.push(&inner.nodes[&path].state);
        Ok(decide(&path, &root, &chain))
    }

    async fn changes_since(&self, since: u64) -> Result<ScopeDelta, Error> {
        let inner = self.lock();
        Ok(ScopeDelta {
            since,
            since_event: inner.event_id(since),
            version: inner.version(),
            position: inner.position(),
            head_event: inner.event_id(inner.version()),
            scopes: inner
                .nodes
                .values()
                .filter(|n| n.version > since)
                .map(|n| (n.state.path.clone(), n.state.mode))
                .collect(),
        })
    }

    async fn scope_history(
        &self,
        path: Option<&ScopePath>,
        limit: usize,
    ) -> Result<Vec<ScopeEvent>, Error> {
        Ok(self
            .lock()
            .history
            .events()
            .iter()
            .rev()
            .filter(|e| path.is_none_or(|p| &e.path == p))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait::async_trait]
impl FeedSource for MemoryScopeStore {
    type Item = ScopeChange;
    type Error = Error;

    async fn subscribe(&self) -> Result<Subscription, Error> {
        Ok(self.feed.subscribe())
    }

    async fn contains(&self, position: Position) -> Result<bool, Error> {
        Ok(self.lock().history.holds(position))
    }
}

impl MemoryApprover for MemoryScopeStore {
    fn control(&self) -> &'static str {
        CONTROL
    }

    fn apply_approved(
        &self,
        id: Uuid,
        actor: &str,
        approvals: &MemoryApprovals,
    ) -> Result<Approved, ApprovalError> {
        // The store's lock first, then the request: the order PostgreSQL takes.
        let mut inner = self.lock();
        let claimed = approvals.claim(id, actor)?;
        let r = &claimed.request;
        let invalid = |message: String| ApprovalError::Invalid { message };
        let path = claimed.params["path"]
            .as_str()
            .and_then(|p| ScopePath::parse(p).ok())
            .ok_or_else(|| invalid(format!("request {id} names no valid scope path")))?;
        let mode = claimed.params["mode"]
            .as_str()
            .and_then(|m| m.parse::<ScopeMode>().ok())
            .ok_or_else(|| invalid(format!("request {id} names no valid scope mode")))?;
        let mut audit = Audit::new(r.requested_by.clone(), r.reason.clone())
            .with_request_id(id)
            .expecting(r.expected_position);
        if let Some(t) = &r.ticket {
            audit = audit.with_ticket(t.clone());
        }
        match self.apply_locked(&mut inner, &path, Command::Set(mode), &audit, Some(id)) {
            Ok(applied) => approvals.close(id, actor, Ok(applied.position)),
            Err(Error::Refused(Refusal::PreconditionFailed { current, .. })) => {
                approvals.close(id, actor, Err(current))
            }
            Err(e) => Err(invalid(format!(
                "approving request {id}: the scope store refused it: {e}"
            ))),
        }
    }
}
