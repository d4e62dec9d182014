//! The in-memory store: unit tests, single-process deployments, and the default of
//! the examples. Held to the same conformance suite as the Postgres store, positions
//! included: commands are numbered on timeline 1 like a fresh cluster, and
//! [`MemorySymbolModeStore::simulate_lossy_failover`] reproduces what an asynchronous
//! failover does to a PostgreSQL store.

use crate::subscription::CancelAllFeed;
use crate::{
    fold_symbol, near_match, transition_refusal, Applied, Audit, AuditEvent, CancelAllCommand,
    CancelAllSubscription, ChangeRef, Command, Error, ModeChange, ModeDelta, NewStrategiesState,
    RegisteredSymbol, Request, StartAt, Subscription, SymbolMode, SymbolModeStore, SymbolRefusal,
    SymbolState, Throttle, ThrottleState, Transition, VenueState,
};
use failover_core::approvals::serde_json;
use failover_core::approvals::{
    ApprovalError, Approved, Gate, GateCommand, MemoryApprovals, MemoryApprover,
};
use failover_core::authority::{check_relaxation, replay};
use failover_core::handle::lock;
use failover_core::memory::MemoryHistory;
use failover_core::AuditError;
use failover_core::{ChangeFeed, FeedSource, FeedSubscription, Position};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// An in-memory symbol-mode store. Starts like a freshly migrated database: global
/// `NORMAL`, withdrawals running, version 0.
#[derive(Debug, Clone)]
pub struct MemorySymbolModeStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    feed: ChangeFeed<ModeChange>,
    approvals: Option<Arc<MemoryApprovals>>,
}

/// The control the symbol-mode store's approval requests name.
const CONTROL: &str = "symbol_mode";

/// The approval action and target of a relaxing request.
fn approval_of(request: &Request<'_>) -> Option<(&'static str, String)> {
    match request {
        Request::SetMode {
            symbol: Some(s), ..
        } => Some(("mode.relax", format!("mode:{s}"))),
        Request::SetMode { symbol: None, .. } => Some(("global-mode.relax", "global_mode".into())),
        Request::Withdrawals { .. } => Some(("withdrawals.lift", "withdrawals".into())),
        Request::NewStrategies { .. } => Some(("strategies.enable-new", "new_strategies".into())),
        Request::Throttle { symbol, .. } => Some(("throttle.relax", format!("throttle:{symbol}"))),
        Request::CancelAll { .. } | Request::Register { .. } => None,
    }
}

/// The command's parameters, as an approval request keeps them.
fn params_of(request: &Request<'_>) -> serde_json::Value {
    match request {
        Request::SetMode { symbol, to, .. } => {
            serde_json::json!({ "symbol": symbol, "to_mode": to.as_str() })
        }
        Request::Withdrawals { on } => serde_json::json!({ "withdrawals": on }),
        Request::NewStrategies { on } => serde_json::json!({ "new_strategies": on }),
        Request::Throttle { symbol, to, .. } => serde_json::json!({
            "symbol": symbol,
            "per_second": to.map(|t| t.per_second()),
            "burst": to.map(|t| t.burst()),
        }),
        _ => serde_json::Value::Null,
    }
}

#[derive(Debug)]
struct Inner {
    global: SymbolMode,
    withdrawals_halted: bool,
    new_strategies_disabled: bool,
    symbols: BTreeMap<String, SymbolState>,
    throttles: BTreeMap<String, ThrottleState>,
    /// The registry, by folded key.
    registry: BTreeMap<String, RegisteredSymbol>,
    global_position: Position,
    withdrawals_position: Position,
    new_strategies_position: Position,
    /// The audit trail: the `i`th event (oldest first) has version `i + 1`.
    history: MemoryHistory<AuditEvent>,
}

failover_core::history_event!(AuditEvent);

impl Default for Inner {
    fn default() -> Self {
        Self {
            global: SymbolMode::Normal,
            withdrawals_halted: false,
            new_strategies_disabled: false,
            symbols: BTreeMap::new(),
            throttles: BTreeMap::new(),
            registry: BTreeMap::new(),
            global_position: Position::ZERO,
            withdrawals_position: Position::ZERO,
            new_strategies_position: Position::ZERO,
            history: MemoryHistory::new(),
        }
    }
}

impl Inner {
    fn version(&self) -> u64 {
        self.history.events().len() as u64
    }

    fn position(&self) -> Position {
        self.history.head()
    }

    /// The state, rebuilt from what remains of the trail (after a simulated failover).
    fn rebuild(&mut self) {
        let history = std::mem::take(&mut self.history);
        *self = Self::default();
        for event in history.events() {
            self.record(event);
        }
        self.history = history;
    }

    /// Writes what `event` did into the state.
    fn record(&mut self, event: &AuditEvent) {
        match &event.command {
            Command::SetSymbolMode { symbol, to, .. } => {
                self.symbols.insert(
                    symbol.clone(),
                    SymbolState {
                        symbol: symbol.clone(),
                        mode: *to,
                        version: event.version,
                        updated_by: event.actor.clone(),
                        reason: event.reason.clone(),
                        ticket: event.ticket.clone(),
                        updated_at: event.at,
                        position: event.position,
                    },
                );
            }
            Command::SetGlobalMode { to, .. } => {
                self.global = *to;
                self.global_position = event.position;
            }
            Command::WithdrawalsHalt { on } => {
                self.withdrawals_halted = *on;
                self.withdrawals_position = event.position;
            }
            Command::NewStrategiesHalt { on } => {
                self.new_strategies_disabled = *on;
                self.new_strategies_position = event.position;
            }
            Command::RegisterSymbol { symbol } => {
                self.registry.insert(
                    fold_symbol(symbol),
                    RegisteredSymbol {
                        symbol: symbol.clone(),
                        registered_by: event.actor.clone(),
                        registered_at: event.at,
                        position: event.position,
                    },
                );
            }
            Command::SetThrottle { symbol, to, .. } => {
                self.throttles.insert(
                    symbol.clone(),
                    ThrottleState {
                        symbol: symbol.clone(),
                        limit: *to,
                        version: event.version,
                        updated_by: event.actor.clone(),
                        reason: event.reason.clone(),
                        ticket: event.ticket.clone(),
                        updated_at: event.at,
                        position: event.position,
                    },
                );
            }
            Command::CancelAll { .. } => {}
        }
    }

    /// The position of the request's target (the symbol's, the global mode's, the
    /// withdrawals halt's own); `None` for commands without one.
    fn target(&self, request: &Request<'_>) -> Option<Position> {
        match request {
            Request::SetMode {
                symbol: Some(s), ..
            } => Some(self.symbols.get(*s).map_or(Position::ZERO, |m| m.position)),
            Request::SetMode { symbol: None, .. } => Some(self.global_position),
            Request::Withdrawals { .. } => Some(self.withdrawals_position),
            Request::NewStrategies { .. } => Some(self.new_strategies_position),
            Request::Throttle { symbol, .. } => Some(
                self.throttles
                    .get(*symbol)
                    .map_or(Position::ZERO, |t| t.position),
            ),
            Request::CancelAll { .. } | Request::Register { .. } => None,
        }
    }

    fn registered(&self, symbol: &str) -> bool {
        self.registry
            .get(&fold_symbol(symbol))
            .is_some_and(|r| r.symbol == symbol)
    }

    fn event_id(&self, version: u64) -> Option<Uuid> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.history.events().get(index).map(|e| e.request_id)
    }
}

impl Default for MemorySymbolModeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySymbolModeStore {
    /// An empty store at version 0.
    pub fn new() -> Self {
        let feed = ChangeFeed::new();
        feed.publish(ModeChange::at(Position::ZERO));
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                feed,
                approvals: None,
            }),
        }
    }

    /// An empty store whose relaxations are subject to `approvals` (four eyes: see
    /// [`failover_core::approvals`]), registered with them so that an approval
    /// applies here.
    pub fn with_approvals(approvals: Arc<MemoryApprovals>) -> Self {
        let feed = ChangeFeed::new();
        feed.publish(ModeChange::at(Position::ZERO));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            feed,
            approvals: Some(approvals.clone()),
        });
        approvals.register(shared.clone());
        Self { shared }
    }

    /// Does to this store what an asynchronous failover does to a PostgreSQL one: the
    /// newest `lost` commands vanish (the promoted replica never received them), the
    /// modes go back to what the remaining commands set, later commands are numbered
    /// on the next timeline, and subscribers are resynced as after a reconnect.
    /// Returns the positions lost, newest first.
    pub fn simulate_lossy_failover(&self, lost: usize) -> Vec<Position> {
        let mut inner = self.lock();
        let gone = inner.history.lose_newest(lost);
        inner.rebuild();
        self.shared.feed.resync(ModeChange::at(inner.position()));
        gone
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.shared.inner)
    }

    /// Applies `request` atomically: `Ok(None)` for a `tighten` that found the
    /// symbol already as severe.
    fn apply(
        &self,
        request: Request<'_>,
        audit: &Audit,
    ) -> Result<Option<Applied<AuditEvent>>, Error> {
        request.validate(audit)?;
        let mut inner = self.lock();
        self.shared.apply_locked(&mut inner, request, audit, None)
    }
}

impl Shared {
    /// Applies under the lock; `approving` is the request a second supervisor's
    /// approval applies (the gate was passed when it was made).
    fn apply_locked(
        &self,
        inner: &mut Inner,
        request: Request<'_>,
        audit: &Audit,
        approving: Option<Uuid>,
    ) -> Result<Option<Applied<AuditEvent>>, Error> {
        let target = inner.target(&request);
        let latest = |inner: &Inner| -> Option<ChangeRef> {
            target
                .and_then(|t| inner.history.at(t))
                .map(AuditEvent::change_ref)
        };
        if let Some(e) = inner.history.by_request(audit.request_id()) {
            let same = request.matches(&e.command) && e.actor == audit.actor();
            return replay(
                e.request_id,
                same,
                target.is_none_or(|t| t == e.position),
                || e.clone(),
                || format!("{} by {}", e.command.describe(), e.actor),
                || latest(inner).unwrap_or_else(|| e.change_ref()),
            )
            .map(Some)
            .map_err(Error::from);
        }
        match request {
            Request::SetMode {
                symbol: Some(symbol),
                ..
            }
            | Request::CancelAll { symbol }
            | Request::Throttle { symbol, .. }
                if !inner.registered(symbol) =>
            {
                return Err(Error::Control(SymbolRefusal::UnknownSymbol {
                    symbol: symbol.to_owned(),
                    did_you_mean: near_match(
                        symbol,
                        inner.registry.values().map(|r| r.symbol.as_str()),
                    ),
                }));
            }
            Request::Register { symbol } => {
                if let Some(known) = inner.registry.get(&fold_symbol(symbol)) {
                    return if known.symbol == symbol {
                        Ok(None)
                    } else {
                        Err(Error::Control(SymbolRefusal::SymbolConflict {
                            symbol: symbol.to_owned(),
                            registered: known.symbol.clone(),
                        }))
                    };
                }
            }
            _ => {}
        }
        let (command, relaxes) = match request {
            Request::SetMode {
                symbol,
                to,
                only_tighten,
            } => {
                let from = match symbol {
                    Some(s) => inner.symbols.get(s).map(|e| e.mode).unwrap_or_default(),
                    None => inner.global,
                };
                let step = from.transition_to(to);
                if only_tighten && (step != Transition::Tighten || from == to) {
                    return Ok(None);
                }
                let command = match symbol {
                    Some(s) => Command::SetSymbolMode {
                        symbol: s.to_owned(),
                        from,
                        to,
                    },
                    None => Command::SetGlobalMode { from, to },
                };
                if step != Transition::Tighten {
                    if !audit.authority().may_relax() {
                        return Err(crate::relax_forbidden(&command, audit));
                    }
                    if let Some(refusal) = transition_refusal(symbol, from, to, audit.ticket()) {
                        return Err(refusal);
                    }
                }
                (command, step != Transition::Tighten)
            }
            Request::CancelAll { symbol } => (
                Command::CancelAll {
                    symbol: symbol.to_owned(),
                },
                false,
            ),
            Request::Withdrawals { on } => (Command::WithdrawalsHalt { on }, !on),
            Request::NewStrategies { on } => (Command::NewStrategiesHalt { on }, !on),
            Request::Register { symbol } => (
                Command::RegisterSymbol {
                    symbol: symbol.to_owned(),
                },
                false,
            ),
            Request::Throttle {
                symbol,
                to,
                only_tighten,
            } => {
                let from = inner.throttles.get(symbol).and_then(|t| t.limit);
                let to = match (only_tighten, to) {
                    (true, Some(limit)) => {
                        let tighter = from.map_or(limit, |f| f.tightest(limit));
                        if Some(tighter) == from {
                            return Ok(None);
                        }
                        Some(tighter)
                    }
                    _ => to,
                };
                let command = Command::SetThrottle {
                    symbol: symbol.to_owned(),
                    from,
                    to,
                };
                let relaxes = Throttle::transition(from, to) == Transition::Relax;
                if relaxes {
                    if !audit.authority().may_relax() {
                        return Err(crate::relax_forbidden(&command, audit));
                    }
                    if audit.ticket().is_none() {
                        return Err(Error::InvalidAudit(AuditError::TicketRequired {
                            action: crate::throttle_relax_action(symbol, from, to),
                        }));
                    }
                }
                (command, relaxes)
            }
        };
        if relaxes {
            if !audit.authority().may_relax() {
                return Err(crate::relax_forbidden(&command, audit));
            }
            check_relaxation(
                audit.precondition(),
                &command.describe(),
                target.unwrap_or(Position::ZERO),
                || latest(inner),
            )?;
        }
        let mut break_glass = None;
        if let (true, None, Some(approvals), Some((action, key))) =
            (relaxes, approving, &self.approvals, approval_of(&request))
        {
            match approvals.gate(&GateCommand {
                action,
                control: CONTROL,
                target: key,
                what: command.describe(),
                params: params_of(&request),
                audit,
                expected: target.unwrap_or(Position::ZERO),
            }) {
                Gate::Apply => {}
                Gate::BreakGlass => break_glass = Some(action),
                Gate::Pending(p) => return Err(Error::PendingApproval(p)),
                Gate::Closed(status) => {
                    return Err(failover_core::authority::counted(
                        failover_core::Refusal::RequestReused {
                            request_id: audit.request_id(),
                            previous: format!("an approval request that is now {status}"),
                        },
                    )
                    .into())
                }
            }
        }
        let event = AuditEvent {
            version: inner.version() + 1,
            position: inner.history.next_position(),
            request_id: audit.request_id(),
            command,
            actor: audit.actor().to_owned(),
            reason: audit.reason().to_owned(),
            ticket: audit.ticket().map(str::to_owned),
            at: failover_core::time::now_micros(),
            login: None,
            authority: Some(audit.authority()),
            approval_id: approving,
            break_glass: break_glass.is_some(),
        };
        inner.record(&event);
        inner.history.push(event.clone());
        if let (Some(approvals), Some((_, key))) = (&self.approvals, approval_of(&request)) {
            approvals.applied(CONTROL, &key, &event.change_ref(), approving);
        }
        if let Some(action) = break_glass {
            failover_core::approvals::break_glass_applied(
                action,
                &event.command.describe(),
                audit.actor(),
                audit.request_id(),
            );
        }
        // Published under the lock so subscribers see positions in order, with the
        // delta the command made (what a PostgreSQL notification carries too).
        let delta = ModeDelta {
            since: event.version - 1,
            since_event: inner.event_id(event.version - 1),
            version: event.version,
            position: event.position,
            head_event: Some(event.request_id),
            global: inner.global,
            withdrawals_halted: inner.withdrawals_halted,
            new_strategies_disabled: inner.new_strategies_disabled,
            symbols: match &event.command {
                Command::SetSymbolMode { symbol, to, .. } => vec![(symbol.clone(), *to)],
                _ => Vec::new(),
            },
            throttles: match &event.command {
                Command::SetThrottle { symbol, to, .. } => vec![(symbol.clone(), *to)],
                _ => Vec::new(),
            },
        };
        self.feed.publish(ModeChange {
            position: event.position,
            delta: Some(delta),
        });
        Ok(Some(Applied::new(event)))
    }
}

fn expect_event(event: Option<Applied<AuditEvent>>) -> Result<Applied<AuditEvent>, Error> {
    // Only `tighten` and registration requests may be no-ops.
    event.ok_or(Error::Closed)
}

#[async_trait::async_trait]
impl SymbolModeStore for MemorySymbolModeStore {
    async fn venue(&self) -> Result<VenueState, Error> {
        let inner = self.lock();
        Ok(VenueState {
            global: inner.global,
            withdrawals_halted: inner.withdrawals_halted,
            version: inner.version(),
            position: inner.position(),
            global_position: inner.global_position,
            withdrawals_position: inner.withdrawals_position,
            new_strategies_disabled: inner.new_strategies_disabled,
            new_strategies_position: inner.new_strategies_position,
        })
    }

    async fn symbol_state(&self, symbol: &str) -> Result<Option<SymbolState>, Error> {
        crate::validate_symbol(symbol)?;
        Ok(self.lock().symbols.get(symbol).cloned())
    }

    async fn changes_since(&self, version: u64) -> Result<ModeDelta, Error> {
        let inner = self.lock();
        Ok(ModeDelta {
            since: version,
            since_event: inner.event_id(version),
            version: inner.version(),
            position: inner.position(),
            head_event: inner.event_id(inner.version()),
            global: inner.global,
            withdrawals_halted: inner.withdrawals_halted,
            new_strategies_disabled: inner.new_strategies_disabled,
            symbols: inner
                .symbols
                .values()
                .filter(|s| s.version > version)
                .map(|s| (s.symbol.clone(), s.mode))
                .collect(),
            throttles: inner
                .throttles
                .values()
                .filter(|t| t.version > version)
                .map(|t| (t.symbol.clone(), t.limit))
                .collect(),
        })
    }

    async fn set_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: Some(symbol),
            to: mode,
            only_tighten: false,
        };
        expect_event(self.apply(request, audit)?)
    }

    async fn tighten_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: Some(symbol),
            to: mode,
            only_tighten: true,
        };
        Ok(self.apply(request, audit)?.map(Applied::into_inner))
    }

    async fn set_global_mode(
        &self,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::SetMode {
            symbol: None,
            to: mode,
            only_tighten: false,
        };
        expect_event(self.apply(request, audit)?)
    }

    async fn cancel_all(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Applied<CancelAllCommand>, Error> {
        let event = expect_event(self.apply(Request::CancelAll { symbol }, audit)?)?;
        let command = CancelAllCommand::from_event(&event).ok_or(Error::Closed)?;
        Ok(event.map(|_| command))
    }

    async fn withdrawals_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        expect_event(self.apply(Request::Withdrawals { on }, audit)?)
    }

    async fn new_strategies_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        expect_event(self.apply(Request::NewStrategies { on }, audit)?)
    }

    async fn new_strategies(&self) -> Result<NewStrategiesState, Error> {
        let inner = self.lock();
        let last = inner.history.at(inner.new_strategies_position);
        Ok(NewStrategiesState {
            new_strategies_disabled: inner.new_strategies_disabled,
            position: inner.new_strategies_position,
            updated_by: last.map(|e| e.actor.clone()),
            reason: last.map(|e| e.reason.clone()),
            ticket: last.and_then(|e| e.ticket.clone()),
            updated_at: last.map(|e| e.at),
        })
    }

    async fn register_symbol(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        Ok(self
            .apply(Request::Register { symbol }, audit)?
            .map(Applied::into_inner))
    }

    async fn symbols(&self) -> Result<Vec<RegisteredSymbol>, Error> {
        let mut all: Vec<RegisteredSymbol> = self.lock().registry.values().cloned().collect();
        all.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        Ok(all)
    }

    async fn set_throttle(
        &self,
        symbol: &str,
        limit: Option<Throttle>,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        let request = Request::Throttle {
            symbol,
            to: limit,
            only_tighten: false,
        };
        expect_event(self.apply(request, audit)?)
    }

    async fn tighten_throttle(
        &self,
        symbol: &str,
        limit: Throttle,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        let request = Request::Throttle {
            symbol,
            to: Some(limit),
            only_tighten: true,
        };
        Ok(self.apply(request, audit)?.map(Applied::into_inner))
    }

    async fn throttles(&self) -> Result<Vec<ThrottleState>, Error> {
        Ok(self.lock().throttles.values().cloned().collect())
    }

    async fn history(&self, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        Ok(self.lock().history.newest(limit))
    }

    async fn subscribe_cancel_all(&self, start: StartAt) -> Result<CancelAllSubscription, Error> {
        // Subscribe before reading the cursor: nothing accepted in between is missed.
        let mut rx = self.shared.feed.subscribe();
        rx.next().await;
        let cursor = match start {
            StartAt::Now => self.lock().position().0,
            StartAt::After(seq) => seq,
        };
        let feed = MemoryFeed {
            shared: self.shared.clone(),
            rx,
        };
        Ok(CancelAllSubscription::new(Box::new(feed), cursor))
    }
}

#[async_trait::async_trait]
impl FeedSource for MemorySymbolModeStore {
    type Item = ModeChange;
    type Error = Error;

    async fn subscribe(&self) -> Result<Subscription, Error> {
        Ok(self.shared.feed.subscribe())
    }

    async fn contains(&self, position: Position) -> Result<bool, Error> {
        Ok(self.lock().history.holds(position))
    }
}

#[derive(Debug)]
struct MemoryFeed {
    shared: Arc<Shared>,
    rx: FeedSubscription<ModeChange>,
}

#[async_trait::async_trait]
impl CancelAllFeed for MemoryFeed {
    async fn fetch_after(&self, after: u64) -> Result<Vec<CancelAllCommand>, Error> {
        let inner = lock(&self.shared.inner);
        Ok(inner
            .history
            .after(Position(after))
            .iter()
            .filter_map(CancelAllCommand::from_event)
            .collect())
    }

    async fn wait(&mut self) -> bool {
        // The sender lives in `shared`, which this feed holds: the store is never
        // "gone" while a subscription exists, so this only wakes on changes.
        self.rx.next().await.is_some()
    }
}

impl MemoryApprover for Shared {
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
        let mut inner = lock(&self.inner);
        let claimed = approvals.claim(id, actor)?;
        let r = &claimed.request;
        let p = &claimed.params;
        let symbol = p["symbol"].as_str().map(str::to_owned);
        let invalid = |what: String| ApprovalError::Invalid {
            message: format!("approving request {id}: {what}"),
        };
        let request = if let Some(to) = p["to_mode"].as_str() {
            Request::SetMode {
                symbol: symbol.as_deref(),
                to: to.parse().map_err(|e| invalid(format!("{e}")))?,
                only_tighten: false,
            }
        } else if let Some(on) = p["withdrawals"].as_bool() {
            Request::Withdrawals { on }
        } else if let Some(on) = p["new_strategies"].as_bool() {
            Request::NewStrategies { on }
        } else if let Some(s) = symbol.as_deref() {
            let limit = match (p["per_second"].as_u64(), p["burst"].as_u64()) {
                (Some(rate), Some(burst)) => Some(
                    Throttle::new(
                        u32::try_from(rate).unwrap_or(u32::MAX),
                        u32::try_from(burst).unwrap_or(u32::MAX),
                    )
                    .map_err(|e| invalid(e.to_string()))?,
                ),
                _ => None,
            };
            Request::Throttle {
                symbol: s,
                to: limit,
                only_tighten: false,
            }
        } else {
            return Err(invalid(format!("unknown command parameters {p}")));
        };
        let mut audit = Audit::new(r.requested_by.clone(), r.reason.clone())
            .with_request_id(id)
            .expecting(r.expected_position);
        if let Some(t) = &r.ticket {
            audit = audit.with_ticket(t.clone());
        }
        match self.apply_locked(&mut inner, request, &audit, Some(id)) {
            Ok(Some(applied)) => approvals.close(id, actor, Ok(applied.position)),
            Err(Error::Refused(failover_core::Refusal::PreconditionFailed { current, .. })) => {
                approvals.close(id, actor, Err(current))
            }
            Ok(None) => Err(invalid("the store applied nothing".into())),
            Err(e) => Err(invalid(format!("the symbol-mode store refused it: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_core::position::FIRST_TIMELINE;
    use SymbolMode::{HardHalt, SoftHalt};

    fn ops(reason: &str) -> Audit {
        Audit::new("ops:test", reason)
    }

    #[tokio::test]
    async fn a_lossy_failover_rolls_the_modes_back_and_forgets_the_lost_requests() {
        let store = MemorySymbolModeStore::new();
        store
            .register_symbol("BTC-USD", &ops("registry"))
            .await
            .expect("register");
        let kept_audit = ops("kept");
        let kept = store
            .set_symbol_mode("BTC-USD", SoftHalt, &kept_audit)
            .await
            .expect("kept");
        let lost_audit = ops("lost");
        let lost = store
            .set_symbol_mode("BTC-USD", HardHalt, &lost_audit)
            .await
            .expect("lost");
        let halt = store
            .withdrawals_halt(true, &ops("lost too"))
            .await
            .expect("halt");

        let gone = store.simulate_lossy_failover(2);
        assert_eq!(gone, [halt.position, lost.position], "newest first");
        let state = store.symbol_state("BTC-USD").await.expect("state");
        assert_eq!(
            state.map(|s| (s.mode, s.position)),
            Some((SoftHalt, kept.position))
        );
        let venue = store.venue().await.expect("venue");
        assert!(!venue.withdrawals_halted, "the lost halt is undone");
        assert_eq!((venue.version, venue.position), (2, kept.position));
        assert_eq!(store.history(10).await.expect("history").len(), 2);
        assert!(!store.contains(lost.position).await.expect("contains"));
        assert!(store.contains(kept.position).await.expect("contains"));
        assert_eq!(
            store.shared.feed.current().map(|c| c.position),
            Some(kept.position),
            "subscribers are resynced to what remains"
        );

        // A kept request still replays; a lost one applies anew, on the next timeline.
        let replay = store
            .set_symbol_mode("BTC-USD", SoftHalt, &kept_audit)
            .await
            .expect("replay");
        assert!(replay.replayed);
        let again = store
            .set_symbol_mode("BTC-USD", HardHalt, &lost_audit)
            .await
            .expect("the lost request again");
        assert!(!again.replayed, "the promoted store never saw it");
        assert_eq!(again.version, 3);
        assert_eq!(again.position.timeline(), FIRST_TIMELINE + 1);
        assert!(again.position > gone[0], "past every lost position");
    }
}
