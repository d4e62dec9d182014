#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod memory;
mod mode;
mod policy;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod snapshot;
mod subscription;
mod symbol;
pub(crate) mod throttle;

pub use failover_core::{
    Applied, Audit, AuditError, Authority, ChangeRef, ComponentHealth, ComponentStatus,
};
pub use handle::{
    Cause, ModeReader, Refusal, SnapshotState, SymbolModes, SymbolModesConfig, SymbolModesStatus,
};
pub use memory::MemorySymbolModeStore;
pub use mode::{ParseModeError, SymbolMode, TradingAction, Transition, ACTION_MATRIX, RELAX_TO};
pub use policy::{LagOutcome, LagVerdict, PolicyError, SettlementLagPolicy, POLICY_ACTOR};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PgStore, PostgresSymbolModeStore};
pub use snapshot::ModeSnapshot;
pub use subscription::{CancelAllSubscription, StartAt, Subscription};
pub use symbol::{
    fold_symbol, is_symbol_char, near_match, validate_symbol, SymbolError, MAX_SYMBOL_CHARS,
    SYMBOL_PUNCTUATION,
};
pub use throttle::{Throttle, ThrottleError, ThrottleGate, ThrottleState, Throttled};

pub use failover_core::{FeedSource, Position, Positioned};

use failover_core::Safety;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use uuid::Uuid;

/// The health component name reported by [`SymbolModes::health`].
pub const HEALTH_COMPONENT: &str = "symbol_mode";

/// The venue-wide state: global mode, withdrawals and new strategy activations
/// (table `symbol_mode_state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueState {
    /// The global mode; applies to every symbol.
    pub global: SymbolMode,
    /// True while withdrawals are halted (`WithdrawalsHalt(on)`).
    pub withdrawals_halted: bool,
    /// How many commands this database's history holds (+1 with every accepted
    /// command of any kind; 0 before the first). After an asynchronous failover that
    /// lost commands it continues from the promoted replica's count, so it can
    /// repeat; use [`position`](Self::position) to order and to identify.
    pub version: u64,
    /// The position of the newest command (`timeline/counter`, see
    /// [`failover_core::position`]): strictly increasing across promotions, never
    /// repeated. [`Position::ZERO`] before the first command.
    pub position: Position,
    /// The position of the last change of the global mode: what relaxing it names.
    #[serde(default)]
    pub global_position: Position,
    /// The position of the last change of the withdrawals halt: what lifting it names.
    #[serde(default)]
    pub withdrawals_position: Position,
    /// True while new strategy activations are halted firm-wide
    /// (`NewStrategiesHalt(on)`): engines start no strategy, running ones go on.
    #[serde(default)]
    pub new_strategies_disabled: bool,
    /// The position of the last `NewStrategiesHalt`: what enabling again names.
    #[serde(default)]
    pub new_strategies_position: Position,
}

/// Whether new strategy activations are halted, and the change that last set it
/// (see [`SymbolModeStore::new_strategies`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewStrategiesState {
    /// True while new strategy activations are halted.
    pub new_strategies_disabled: bool,
    /// The position of the last `NewStrategiesHalt` ([`Position::ZERO`]: never set):
    /// what enabling again names (`ETag`, [`Audit::expecting`]).
    pub position: Position,
    /// Who last set it; `None` when never set.
    pub updated_by: Option<String>,
    /// Why; `None` when never set.
    pub reason: Option<String>,
    /// Under which ticket, if any.
    pub ticket: Option<String>,
    /// When (database clock for Postgres); `None` when never set.
    #[serde(with = "rfc3339_opt", default)]
    pub updated_at: Option<SystemTime>,
}

/// An optional time as RFC 3339 (`null` when absent).
mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::SystemTime;

    #[derive(Serialize, Deserialize)]
    struct At(#[serde(with = "failover_core::time::rfc3339")] SystemTime);

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        t.map(At).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<At>::deserialize(d)?.map(|a| a.0))
    }
}

/// A symbol's own mode and who set it (table `symbol_modes`). A symbol never set is
/// `NORMAL` and has no entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolState {
    /// The symbol, verbatim.
    pub symbol: String,
    /// Its own mode (the effective mode also depends on the global mode).
    pub mode: SymbolMode,
    /// The version of the command that last set it.
    pub version: u64,
    /// Who last set it.
    pub updated_by: String,
    /// Why.
    pub reason: String,
    /// Under which ticket, if any.
    pub ticket: Option<String>,
    /// When (database clock for Postgres), microsecond precision.
    #[serde(with = "failover_core::time::rfc3339")]
    pub updated_at: SystemTime,
    /// The position of the change that last set it: what a relaxation of this
    /// symbol names (`ETag`, [`Audit::expecting`]).
    pub position: Position,
}

/// A symbol of the registry: the symbols an operator may address, in their one
/// canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredSymbol {
    /// The symbol, verbatim.
    pub symbol: String,
    /// Who registered it.
    pub registered_by: String,
    /// When.
    #[serde(with = "failover_core::time::rfc3339")]
    pub registered_at: SystemTime,
    /// The position of its registration ([`Position::ZERO`] for symbols registered
    /// by the migration because they already had a mode).
    pub position: Position,
}

/// What changed after a version: enough to bring a snapshot from `since` to `version`
/// (see [`SymbolModeStore::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeDelta {
    /// The version the delta starts after (0: a full load).
    pub since: u64,
    /// The request id of the command at `since` as the store knows it (`None` for 0
    /// or when the store has no such version). A reader whose own history differs —
    /// writes lost in a failover with asynchronous replication — must reload fully.
    pub since_event: Option<Uuid>,
    /// The store's version when read.
    pub version: u64,
    /// The store's position when read: how the watcher orders reads.
    pub position: Position,
    /// The request id of the command at `version` (`None` for 0).
    pub head_event: Option<Uuid>,
    /// The global mode at `version`.
    pub global: SymbolMode,
    /// Withdrawals halted at `version`.
    pub withdrawals_halted: bool,
    /// New strategy activations halted at `version`.
    #[serde(default)]
    pub new_strategies_disabled: bool,
    /// Every symbol whose own mode was set after `since`, with its mode at `version`
    /// (all symbols ever set when `since` is 0).
    pub symbols: Vec<(String, SymbolMode)>,
    /// Every symbol whose throttle was set or cleared after `since`, with its limit
    /// at `version` (`None`: no limit; every symbol ever throttled when `since` is 0).
    #[serde(default)]
    pub throttles: Vec<(String, Option<Throttle>)>,
}

impl Positioned for ModeDelta {
    fn position(&self) -> Position {
        self.position
    }
}

/// What the symbol-mode change feed carries: the position of the newest command and,
/// when it came with the notification, the delta that command made — so a handle
/// whose snapshot is at the command before applies it without reading the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// The position of the newest command.
    pub position: Position,
    /// The command's delta after the previous version, when known.
    pub delta: Option<ModeDelta>,
}

impl ModeChange {
    /// A change known only by its position: readers fetch what changed.
    pub fn at(position: Position) -> Self {
        Self {
            position,
            delta: None,
        }
    }
}

impl Positioned for ModeChange {
    fn position(&self) -> Position {
        self.position
    }
}

/// The name of an audited command, stored verbatim in the audit trail, as operators
/// name it: `SetSymbolMode`, `SetGlobalMode`, `CancelAll`, `WithdrawalsHalt`,
/// `RegisterSymbol`, `SetThrottle`, `NewStrategiesHalt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandKind {
    /// `SetSymbolMode(symbol, mode)`.
    SetSymbolMode,
    /// `SetGlobalMode(mode)`.
    SetGlobalMode,
    /// `CancelAll(symbol)`.
    CancelAll,
    /// `WithdrawalsHalt(on/off)`.
    WithdrawalsHalt,
    /// `RegisterSymbol(symbol)`: makes a symbol known to the registry.
    RegisterSymbol,
    /// `SetThrottle(symbol, limit)`: a limit of new orders per second, or none.
    SetThrottle,
    /// `NewStrategiesHalt(on/off)`: new strategy activations halted firm-wide, or
    /// enabled again.
    NewStrategiesHalt,
}

impl CommandKind {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SetSymbolMode => "SetSymbolMode",
            Self::SetGlobalMode => "SetGlobalMode",
            Self::CancelAll => "CancelAll",
            Self::WithdrawalsHalt => "WithdrawalsHalt",
            Self::RegisterSymbol => "RegisterSymbol",
            Self::SetThrottle => "SetThrottle",
            Self::NewStrategiesHalt => "NewStrategiesHalt",
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // read back from the database
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::SetSymbolMode,
            Self::SetGlobalMode,
            Self::CancelAll,
            Self::WithdrawalsHalt,
            Self::RegisterSymbol,
            Self::SetThrottle,
            Self::NewStrategiesHalt,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for CommandKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted command as recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command")]
pub enum Command {
    /// A symbol's own mode changed (or was re-asserted) from `from` to `to`.
    SetSymbolMode {
        /// The symbol, verbatim.
        symbol: String,
        /// Its mode before.
        from: SymbolMode,
        /// Its mode after.
        to: SymbolMode,
    },
    /// The global mode changed (or was re-asserted) from `from` to `to`.
    SetGlobalMode {
        /// Before.
        from: SymbolMode,
        /// After.
        to: SymbolMode,
    },
    /// Cancel every working order of `symbol`, delivered to each subscriber.
    CancelAll {
        /// The symbol, verbatim.
        symbol: String,
    },
    /// Withdrawals halted (`on: true`) or resumed (`on: false`).
    WithdrawalsHalt {
        /// Halted after the command.
        on: bool,
    },
    /// A symbol was registered: mode changes and `CancelAll` may address it.
    RegisterSymbol {
        /// The symbol, verbatim.
        symbol: String,
    },
    /// A symbol's order-rate throttle changed from `from` to `to` (`None`: no limit).
    SetThrottle {
        /// The symbol, verbatim.
        symbol: String,
        /// The limit before.
        from: Option<Throttle>,
        /// The limit after.
        to: Option<Throttle>,
    },
    /// New strategy activations halted (`on: true`) or enabled again (`on: false`).
    NewStrategiesHalt {
        /// Halted after the command.
        on: bool,
    },
}

impl Command {
    /// The command's name.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::SetSymbolMode { .. } => CommandKind::SetSymbolMode,
            Self::SetGlobalMode { .. } => CommandKind::SetGlobalMode,
            Self::CancelAll { .. } => CommandKind::CancelAll,
            Self::WithdrawalsHalt { .. } => CommandKind::WithdrawalsHalt,
            Self::RegisterSymbol { .. } => CommandKind::RegisterSymbol,
            Self::SetThrottle { .. } => CommandKind::SetThrottle,
            Self::NewStrategiesHalt { .. } => CommandKind::NewStrategiesHalt,
        }
    }

    /// What the command did, as refusals name it: `SetGlobalMode SOFT_HALT -> HARD_HALT`,
    /// `SetSymbolMode BTC-USD NORMAL -> CANCEL_ONLY`, `WithdrawalsHalt on`,
    /// `CancelAll BTC-USD` (the database's `symbol_mode_event_what` says the same).
    pub fn describe(&self) -> String {
        match self {
            Self::SetSymbolMode { symbol, from, to } => {
                format!("SetSymbolMode {symbol} {from} -> {to}")
            }
            Self::SetGlobalMode { from, to } => format!("SetGlobalMode {from} -> {to}"),
            Self::CancelAll { symbol } => format!("CancelAll {symbol}"),
            Self::WithdrawalsHalt { on } => {
                format!("WithdrawalsHalt {}", if *on { "on" } else { "off" })
            }
            Self::RegisterSymbol { symbol } => format!("RegisterSymbol {symbol}"),
            Self::SetThrottle { symbol, from, to } => format!(
                "SetThrottle {symbol} {} -> {}",
                throttle::describe(*from),
                throttle::describe(*to)
            ),
            Self::NewStrategiesHalt { on } => {
                format!("NewStrategiesHalt {}", if *on { "on" } else { "off" })
            }
        }
    }

    /// True when the command lifted a restriction (and so carries a ticket).
    pub fn relaxes_safety(&self) -> bool {
        match self {
            Self::SetSymbolMode { from, to, .. } | Self::SetGlobalMode { from, to } => {
                from.transition_to(*to) == Transition::Relax
            }
            Self::CancelAll { .. } | Self::RegisterSymbol { .. } => false,
            Self::WithdrawalsHalt { on } | Self::NewStrategiesHalt { on } => !on,
            Self::SetThrottle { from, to, .. } => {
                Throttle::transition(*from, *to) == Transition::Relax
            }
        }
    }
}

/// One row of the append-only audit trail (`symbol_mode_events`): exactly one per
/// accepted command, none for a refused one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The store version this command produced (gapless; can repeat after a lossy
    /// failover).
    pub version: u64,
    /// The event's identity: the position of the command, unique forever; its
    /// timeline says on which primary it was committed.
    pub position: Position,
    /// The request's idempotency key ([`Audit::request_id`]).
    pub request_id: Uuid,
    /// What was done.
    pub command: Command,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Ticket id; always present when the command relaxed safety.
    pub ticket: Option<String>,
    /// When (database clock for Postgres), microsecond precision.
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
    /// The database login that wrote it (`session_user`), beside the actor it
    /// named; `None` in memory and for events written before logins were recorded.
    #[serde(default)]
    pub login: Option<String>,
    /// The authority it was applied with; `None` for events written before it was
    /// recorded.
    #[serde(default)]
    pub authority: Option<Authority>,
    /// The approval request a second supervisor approved to apply this command
    /// (four eyes); `None` when it applied without one.
    #[serde(default)]
    pub approval_id: Option<Uuid>,
    /// True when a supervisor applied this relaxation at once although approval was
    /// required (break glass): listed for review until another supervisor
    /// acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

impl AuditEvent {
    /// This event as the change a refusal names.
    pub fn change_ref(&self) -> ChangeRef {
        ChangeRef {
            position: self.position,
            actor: self.actor.clone(),
            what: self.command.describe(),
            at: self.at,
        }
    }
}

/// An admin-issued `CancelAll(symbol)`, as delivered to subscribers: cancel every
/// working order of `symbol`. Allowed in every mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAllCommand {
    /// Delivery sequence: the command's position (as a `u64`), strictly increasing
    /// across promotions. Subscribers keep the last one they processed
    /// ([`CancelAllSubscription::cursor`]).
    pub seq: u64,
    /// The symbol, verbatim.
    pub symbol: String,
    /// The request's idempotency key.
    pub request_id: Uuid,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Ticket id, if given.
    pub ticket: Option<String>,
    /// When.
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
}

impl CancelAllCommand {
    /// The command view of a `CancelAll` audit event.
    pub fn from_event(event: &AuditEvent) -> Option<Self> {
        match &event.command {
            Command::CancelAll { symbol } => Some(Self {
                seq: event.position.0,
                symbol: symbol.clone(),
                request_id: event.request_id,
                actor: event.actor.clone(),
                reason: event.reason.clone(),
                ticket: event.ticket.clone(),
                at: event.at,
            }),
            _ => None,
        }
    }
}

/// Which mode a command addressed (the global mode or a symbol's own), for error
/// messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModeTarget {
    /// The global mode.
    Global,
    /// One symbol's own mode.
    Symbol(String),
}

impl std::fmt::Display for ModeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Global => f.write_str("the global mode"),
            Self::Symbol(s) => write!(f, "symbol {s:?}"),
        }
    }
}

fn relax_hint(from: SymbolMode) -> String {
    let to: Vec<&str> = from.may_relax_to().iter().map(|m| m.as_str()).collect();
    match to.as_slice() {
        [] => String::from("it cannot relax"),
        [only] if from == SymbolMode::HardHalt => {
            format!("resume in {only} first, then NORMAL")
        }
        list => format!("it may relax only to {}", list.join(" or ")),
    }
}

/// Errors of every symbol-mode store ([`failover_core::StoreError`]). Each says what
/// happened and what to do; a refused call changed nothing and wrote no audit row.
pub type Error = failover_core::StoreError<SymbolRefusal>;

/// What only the symbol-mode store refuses ([`Error::Control`]); nothing changed and
/// no audit row was written.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SymbolRefusal {
    /// The symbol is empty, too long, or contains white space or control characters.
    #[error("refused, nothing changed: {0}")]
    InvalidSymbol(#[from] SymbolError),
    /// The throttle's rate or burst cannot be used.
    #[error("refused, nothing changed: {0}")]
    InvalidThrottle(#[from] ThrottleError),
    /// The transition rules forbid this change (e.g. `HARD_HALT → NORMAL`).
    #[error("refused, nothing changed: {target} is {from} and may not relax to {to}; {}", relax_hint(*.from))]
    TransitionForbidden {
        /// The global mode or the symbol.
        target: ModeTarget,
        /// Its current mode.
        from: SymbolMode,
        /// The requested mode.
        to: SymbolMode,
    },
    /// The symbol is not registered (see [`SymbolModeStore::register_symbol`]).
    #[error("refused, nothing changed: symbol {symbol:?} is not registered{}", match .did_you_mean { Some(s) => format!("; did you mean {s}?"), None => "; register it first (safetyctl symbols add SYMBOL)".into() })]
    UnknownSymbol {
        /// The symbol asked for.
        symbol: String,
        /// The registered symbol it most likely meant.
        did_you_mean: Option<String>,
    },
    /// Another spelling of the symbol is registered already.
    #[error("refused, nothing changed: {symbol:?} is the registered symbol {registered} spelled differently (case and -_./: are ignored); use {registered}")]
    SymbolConflict {
        /// The symbol asked for.
        symbol: String,
        /// The registered spelling.
        registered: String,
    },
}

impl failover_core::ControlRefusal for SymbolRefusal {
    const STORE: &'static str = "symbol mode";
    const SCHEMA_MISSING: &'static str =
        "symbol_mode_state table missing: run symbol-mode migrations (PostgresSymbolModeStore::migrate)";

    fn outcome(&self) -> failover_core::Outcome<'_> {
        let (status, code) = match self {
            Self::InvalidSymbol(_) => (400, "invalid_symbol"),
            Self::InvalidThrottle(_) => (422, "invalid_throttle"),
            Self::TransitionForbidden { .. } => (409, "transition_forbidden"),
            Self::UnknownSymbol { .. } => (404, "unknown_symbol"),
            Self::SymbolConflict { .. } => (409, "symbol_conflict"),
        };
        failover_core::Outcome::Invalid { status, code }
    }
}

impl From<SymbolError> for Error {
    fn from(e: SymbolError) -> Self {
        Self::Control(SymbolRefusal::InvalidSymbol(e))
    }
}

impl From<ThrottleError> for Error {
    fn from(e: ThrottleError) -> Self {
        Self::Control(SymbolRefusal::InvalidThrottle(e))
    }
}

/// Where symbol modes, the global mode, withdrawals and the audit trail live.
///
/// # Contract
/// * A fresh store: global `NORMAL`, withdrawals running, version 0, no symbols, no
///   history. A symbol never set is `NORMAL`.
/// * Every write validates its input first: the symbol ([`validate_symbol`]) and the
///   [`Audit`] (actor and reason required, bounded, printable). A refused call changes
///   nothing and writes no audit row.
/// * Mode changes ([`set_symbol_mode`](Self::set_symbol_mode),
///   [`set_global_mode`](Self::set_global_mode)) follow [`SymbolMode::transition_to`]
///   against the current mode, checked atomically with the write: tightening (and
///   re-asserting) is always allowed without a ticket; relaxing follows the
///   "may relax to" column and needs a ticket; anything else is
///   [`SymbolRefusal::TransitionForbidden`]. `HARD_HALT` resumes only through `CANCEL_ONLY`.
/// * [`tighten_symbol_mode`](Self::tighten_symbol_mode) raises a symbol to at least a
///   mode and is a no-op (no audit row, `None`) when it is already as severe: for
///   automated policies, which never relax.
/// * [`cancel_all`](Self::cancel_all) is allowed in every mode; ticket optional.
///   [`withdrawals_halt`](Self::withdrawals_halt)`(true)` needs no ticket; `false`
///   (lifting it) does.
/// * [`new_strategies_halt`](Self::new_strategies_halt)`(true)` halts new strategy
///   activations firm-wide (any operator, no ticket); `false` (enabling them again)
///   relaxes like lifting the withdrawals halt.
/// * Every accepted command bumps the version by exactly one, takes a new, greater
///   position and appends exactly one [`AuditEvent`] (actor, reason, ticket;
///   identified by the position) atomically with the change.
/// * From [`FeedSource`]: `contains` is true when the history holds a command at
///   that position (and for [`Position::ZERO`]), false for one lost in a failover;
///   `subscribe` delivers each newer position (skipping to the newest when behind).
/// * Authority is decided in the write ([`failover_core::authority`]), against the
///   mode found under the lock: a change that relaxes needs
///   [`Authority::Supervisor`] (else [`Refusal::Forbidden`](failover_core::Refusal::Forbidden)) and applies only while
///   its target (the symbol, the global mode, the withdrawals halt) is still at the
///   position the audit expects ([`Audit::expecting`]; else
///   [`Refusal::PreconditionFailed`](failover_core::Refusal::PreconditionFailed) naming the change in between;
///   [`Refusal::PreconditionRequired`](failover_core::Refusal::PreconditionRequired) when the audit requires one and names none).
///   Tightenings never wait.
/// * Mode changes and `CancelAll` address registered symbols only, spelled exactly
///   ([`SymbolRefusal::UnknownSymbol`], naming the near match); registration
///   ([`register_symbol`](Self::register_symbol)) is unique on the folded key
///   ([`fold_symbol`]; [`SymbolRefusal::SymbolConflict`]), audited, and an operator may do it.
/// * Submitting the same `Audit` (same request id, actor and command) again returns
///   the event that request produced, marked [`Applied::replayed`], and changes
///   nothing — while it is still the latest change of its target; after a later
///   change it is [`Refusal::Superseded`](failover_core::Refusal::Superseded) naming it. Another actor or command with
///   the id is [`Refusal::RequestReused`](failover_core::Refusal::RequestReused).
/// * [`history`](Self::history) returns at most `limit` events, newest (greatest
///   position) first.
/// * [`subscribe_cancel_all`](Self::subscribe_cancel_all)
///   delivers every `CancelAll` after its start exactly once per subscription, in
///   order, also across lost connections.
/// * Text (symbol, reason, actor, ticket) is stored and returned verbatim.
#[async_trait::async_trait]
pub trait SymbolModeStore:
    FeedSource<Item = ModeChange, Error = Error> + std::fmt::Debug + 'static
{
    /// The global mode, withdrawals and version (one small read).
    async fn venue(&self) -> Result<VenueState, Error>;
    /// A symbol's own entry; `None` when it was never set (it is then `NORMAL`).
    async fn symbol_state(&self, symbol: &str) -> Result<Option<SymbolState>, Error>;
    /// What changed after `version`, read consistently (0: everything).
    async fn changes_since(&self, version: u64) -> Result<ModeDelta, Error>;
    /// `SetSymbolMode(symbol, mode)`.
    async fn set_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error>;
    /// Raises `symbol` to at least `mode`; `None` (nothing written) when it already is.
    async fn tighten_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error>;
    /// Sets the global mode.
    async fn set_global_mode(
        &self,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error>;
    /// `CancelAll(symbol)`: audited and delivered to every `CancelAll` subscriber.
    async fn cancel_all(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Applied<CancelAllCommand>, Error>;
    /// `WithdrawalsHalt(on/off)`; lifting (`false`) needs a ticket.
    async fn withdrawals_halt(&self, on: bool, audit: &Audit)
        -> Result<Applied<AuditEvent>, Error>;
    /// `NewStrategiesHalt(on/off)`: `true` halts new strategy activations firm-wide
    /// (a tightening: any operator, never waits); `false` enables them again (a
    /// relaxation: supervisor authority, a ticket, the halt's position when the
    /// audit requires a precondition, and four eyes while `strategies.enable-new`
    /// requires approval).
    async fn new_strategies_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error>;
    /// Whether new strategy activations are halted, and who set it last.
    async fn new_strategies(&self) -> Result<NewStrategiesState, Error>;
    /// Registers `symbol` (audited; an operator may). `None` when it is registered
    /// already, spelled exactly so; [`SymbolRefusal::SymbolConflict`] when another spelling is.
    async fn register_symbol(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error>;
    /// Registers every symbol an engine trades, at its start: those already
    /// registered are left as they are. Returns the symbols registered now.
    /// Each registration is its own audited command (its own request id).
    async fn register_symbols(
        &self,
        symbols: &[&str],
        audit: &Audit,
    ) -> Result<Vec<String>, Error> {
        let mut registered = Vec::new();
        for symbol in symbols {
            let one = audit.clone().with_request_id(Uuid::new_v4());
            if self.register_symbol(symbol, &one).await?.is_some() {
                registered.push((*symbol).to_owned());
            }
        }
        Ok(registered)
    }
    /// The registered symbols, in order.
    async fn symbols(&self) -> Result<Vec<RegisteredSymbol>, Error>;
    /// `SetThrottle(symbol, limit)`: puts an order-rate limit on a registered
    /// symbol, or clears it (`None`). Clearing or raising a limit relaxes (supervisor
    /// authority, a ticket, and the throttle's position when the audit requires a
    /// precondition); setting or lowering one tightens.
    async fn set_throttle(
        &self,
        symbol: &str,
        limit: Option<Throttle>,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error>;
    /// Lowers `symbol`'s throttle to at most `limit` in each dimension (sets it where
    /// there is none); `None` (nothing written) when it already is at most that.
    /// For automated policies, which never relax.
    async fn tighten_throttle(
        &self,
        symbol: &str,
        limit: Throttle,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error>;
    /// Every symbol that has or had a throttle (cleared ones with `limit: None`),
    /// in symbol order.
    async fn throttles(&self) -> Result<Vec<ThrottleState>, Error>;
    /// Audit events, newest first.
    async fn history(&self, limit: usize) -> Result<Vec<AuditEvent>, Error>;
    /// A stream of `CancelAll` commands after `start`, each exactly once.
    async fn subscribe_cancel_all(&self, start: StartAt) -> Result<CancelAllSubscription, Error>;
}

/// What a store is asked to write; shared by every backend so the rules are applied
/// identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    SetMode {
        symbol: Option<&'a str>,
        to: SymbolMode,
        only_tighten: bool,
    },
    CancelAll {
        symbol: &'a str,
    },
    Withdrawals {
        on: bool,
    },
    NewStrategies {
        on: bool,
    },
    Register {
        symbol: &'a str,
    },
    Throttle {
        symbol: &'a str,
        to: Option<Throttle>,
        only_tighten: bool,
    },
}

impl Request<'_> {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // read back from the database
    pub(crate) fn kind(&self) -> CommandKind {
        match self {
            Self::SetMode {
                symbol: Some(_), ..
            } => CommandKind::SetSymbolMode,
            Self::SetMode { symbol: None, .. } => CommandKind::SetGlobalMode,
            Self::CancelAll { .. } => CommandKind::CancelAll,
            Self::Withdrawals { .. } => CommandKind::WithdrawalsHalt,
            Self::NewStrategies { .. } => CommandKind::NewStrategiesHalt,
            Self::Register { .. } => CommandKind::RegisterSymbol,
            Self::Throttle { .. } => CommandKind::SetThrottle,
        }
    }

    /// The symbol the request names, if any.
    pub(crate) fn symbol(&self) -> Option<&str> {
        match self {
            Self::SetMode { symbol, .. } => *symbol,
            Self::CancelAll { symbol }
            | Self::Register { symbol }
            | Self::Throttle { symbol, .. } => Some(symbol),
            Self::Withdrawals { .. } | Self::NewStrategies { .. } => None,
        }
    }

    /// Validates what can be validated without the current state: the symbol, the
    /// audit fields, and the ticket of a command that always relaxes (lifting the
    /// withdrawals halt). Whether a mode change relaxes is decided against the current
    /// mode, atomically with the write ([`transition_refusal`]).
    pub(crate) fn validate(&self, audit: &Audit) -> Result<(), Error> {
        if let Some(symbol) = self.symbol() {
            validate_symbol(symbol)?;
        }
        let (safety, what) = match self {
            Self::Withdrawals { on: false } => (Safety::Relax, "lift the withdrawals halt"),
            Self::NewStrategies { on: false } => {
                (Safety::Relax, "enable new strategy activations again")
            }
            _ => (Safety::Tighten, ""),
        };
        audit.validate(safety, what)?;
        Ok(())
    }

    /// Whether a replayed event is the same command as this request.
    pub(crate) fn matches(&self, command: &Command) -> bool {
        match (self, command) {
            (
                Self::SetMode {
                    symbol: Some(s),
                    to,
                    ..
                },
                Command::SetSymbolMode {
                    symbol, to: done, ..
                },
            ) => *s == symbol && to == done,
            (
                Self::SetMode {
                    symbol: None, to, ..
                },
                Command::SetGlobalMode { to: done, .. },
            ) => to == done,
            (Self::CancelAll { symbol: s }, Command::CancelAll { symbol }) => *s == symbol,
            (Self::Withdrawals { on }, Command::WithdrawalsHalt { on: done })
            | (Self::NewStrategies { on }, Command::NewStrategiesHalt { on: done }) => on == done,
            (Self::Register { symbol: s }, Command::RegisterSymbol { symbol }) => *s == symbol,
            // A policy's "at most this" lands on a limit of its own: the symbol decides.
            (
                Self::Throttle {
                    symbol: s,
                    to,
                    only_tighten,
                },
                Command::SetThrottle {
                    symbol, to: done, ..
                },
            ) => *s == symbol && (*only_tighten || to == done),
            _ => false,
        }
    }
}

/// What relaxing a throttle is called in a `TicketRequired` refusal.
pub(crate) fn throttle_relax_action(
    symbol: &str,
    from: Option<Throttle>,
    to: Option<Throttle>,
) -> String {
    format!(
        "relax the throttle of {symbol} from {} to {}",
        throttle::describe(from),
        throttle::describe(to)
    )
}

/// An operator's command that would relax (decided against the current state).
pub(crate) fn relax_forbidden(command: &Command, audit: &Audit) -> Error {
    Error::Refused(failover_core::Refusal::Forbidden {
        message: format!(
            "{} acts as {}: {} relaxes safety and needs supervisor authority",
            audit.actor(),
            audit.authority(),
            command.describe()
        ),
    })
}

/// A refusal decided against the current state (inside the store's lock or the
/// database function).
pub(crate) fn transition_refusal(
    symbol: Option<&str>,
    from: SymbolMode,
    to: SymbolMode,
    ticket: Option<&str>,
) -> Option<Error> {
    let target = || match symbol {
        Some(s) => ModeTarget::Symbol(s.to_owned()),
        None => ModeTarget::Global,
    };
    match from.transition_to(to) {
        Transition::Tighten => None,
        Transition::Relax if ticket.is_some() => None,
        Transition::Relax => Some(Error::InvalidAudit(AuditError::TicketRequired {
            action: format!("relax {} from {from} to {to}", target()),
        })),
        Transition::Forbidden => Some(Error::Control(SymbolRefusal::TransitionForbidden {
            target: target(),
            from,
            to,
        })),
    }
}
