#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod handle;
#[cfg(feature = "postgres")]
pub mod heartbeat;
#[cfg(feature = "http")]
pub mod http;
mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod scope;

pub use failover_core::{
    Applied, Audit, AuditError, Authority, ChangeRef, ComponentHealth, ComponentStatus, Refusal,
};
pub use handle::{Halt, KillSwitch, KillSwitchConfig, KillSwitchStatus, Trading};
pub use memory::MemoryKillSwitchStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PgStore, PostgresKillSwitchStateStore, PostgresKillSwitchStore};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use scope::PostgresScopeStore;
pub use scope::{
    DecidedBy, EffectiveScope, MemoryScopeStore, OrderIntent, ScopeChange, ScopeDelta, ScopeEvent,
    ScopeMode, ScopePath, ScopeState, ScopeStore, SCOPE_ACTIONS,
};

pub use failover_core::{FeedSource, Position, Positioned};

use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use uuid::Uuid;

/// The health component name reported by [`KillSwitch::health`].
pub const HEALTH_COMPONENT: &str = "kill_switch";

/// The persisted kill switch state (table `kill_switch_state`, row `id = 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitchState {
    /// True when trading must stop.
    pub engaged: bool,
    /// Why it was last changed (empty before the first change).
    pub reason: String,
    /// When the primary last confirmed this state (database clock for Postgres),
    /// microsecond precision: the time of the last change, or of the last
    /// heartbeat (`PostgresKillSwitchStore::spawn_heartbeat`) when one runs (which bumps nothing else). The
    /// time of each change is in the audit trail ([`KillSwitchEvent::at`]).
    #[serde(with = "failover_core::time::rfc3339")]
    pub updated_at: SystemTime,
    /// Who last changed it (empty before the first change).
    pub updated_by: String,
    /// The ticket of the last change, if any.
    pub ticket: Option<String>,
    /// How many changes this database's history holds: +1 with every change, 0
    /// before the first. After an asynchronous failover that lost changes it
    /// continues from the promoted replica's count, so it can repeat; use
    /// [`position`](Self::position) to order and to identify.
    pub version: u64,
    /// The position of the last change (`timeline/counter`, see
    /// [`failover_core::position`]): strictly increasing across promotions, never
    /// repeated. [`Position::ZERO`] before the first change.
    pub position: Position,
}

impl Positioned for KillSwitchState {
    fn position(&self) -> Position {
        self.position
    }
}

/// What an audit event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop trading.
    Engage,
    /// Resume trading.
    Disengage,
}

impl Action {
    /// `engage` or `disengage`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Engage => "engage",
            Self::Disengage => "disengage",
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // read back from the database
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "engage" => Some(Self::Engage),
            "disengage" => Some(Self::Disengage),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the append-only audit trail (`kill_switch_events`), identified by its
/// position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitchEvent {
    /// The state version this event produced (can repeat after a lossy failover).
    pub version: u64,
    /// The event's identity: the position of the change, unique forever; its
    /// timeline says on which primary it was committed.
    pub position: Position,
    /// The request's idempotency key.
    pub request_id: Uuid,
    /// Engage or disengage.
    pub action: Action,
    /// The resulting `engaged`.
    pub engaged: bool,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Ticket, mandatory for disengage.
    pub ticket: Option<String>,
    /// When (database clock for Postgres), microsecond precision.
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
    /// The database login that wrote it (`session_user`), beside the actor it named;
    /// `None` in memory and for events written before logins were recorded.
    #[serde(default)]
    pub login: Option<String>,
    /// The authority it was applied with; `None` for events written before it was
    /// recorded.
    #[serde(default)]
    pub authority: Option<Authority>,
    /// The approval request a second supervisor approved to apply this change, if
    /// it was one ([`failover_core::approvals`]).
    #[serde(default)]
    pub approval_id: Option<Uuid>,
    /// True when a supervisor broke the glass: a relaxation that required a second
    /// person's approval was applied at once.
    #[serde(default)]
    pub break_glass: bool,
}

impl KillSwitchEvent {
    /// This event as the change a refusal names.
    pub fn change_ref(&self) -> ChangeRef {
        ChangeRef {
            position: self.position,
            actor: self.actor.clone(),
            what: self.action.as_str().to_owned(),
            at: self.at,
        }
    }

    /// The state this event produced.
    pub fn state(&self) -> KillSwitchState {
        KillSwitchState {
            engaged: self.engaged,
            reason: self.reason.clone(),
            updated_at: self.at,
            updated_by: self.actor.clone(),
            ticket: self.ticket.clone(),
            version: self.version,
            position: self.position,
        }
    }
}

/// Errors of every kill switch store ([`failover_core::StoreError`]). Each says what
/// happened and what to do; a refused call changed nothing.
pub type Error = failover_core::StoreError<KillSwitchRefusal>;

/// The kill switch's own refusals: none. Engaging and disengaging take no input the
/// switch could refuse beyond the audit and the authority rules, which every control
/// shares, so [`Error::Control`] never occurs for the kill switch. The enum has no
/// variant (no value of it can exist, so nothing can misread one), and is
/// `#[non_exhaustive]` so that a refusal added later is not a breaking change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KillSwitchRefusal {}

impl std::fmt::Display for KillSwitchRefusal {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for KillSwitchRefusal {}

impl failover_core::ControlRefusal for KillSwitchRefusal {
    const STORE: &'static str = "kill switch";
    const SCHEMA_MISSING: &'static str =
        "kill_switch_state table missing: run killswitch migrations (PostgresKillSwitchStore::migrate)";

    fn outcome(&self) -> failover_core::Outcome<'_> {
        match *self {}
    }
}

/// A stream of state changes: every newer state in order of position (a slow reader
/// skips to the newest, which is what a safety control needs), and after a reconnect
/// the store's state whatever its position (see [`failover_core::feed`]).
pub type Subscription = failover_core::FeedSubscription<KillSwitchState>;

/// Where the kill switch state lives.
///
/// # Contract
/// * `load` returns the current state; before any change: not engaged, version 0.
/// * `engage` (ticket optional) and `disengage` (ticket **required**) validate the
///   [`Audit`] first; a refused call changes nothing and writes no audit row.
/// * Every successful call — including engaging an engaged switch — bumps `version`
///   by one, takes a new, greater `position`, updates reason/updated_by/ticket/
///   updated_at and appends exactly one audit event (identified by the position),
///   atomically.
/// * From [`FeedSource`]: `subscribe` delivers every newer state (skipping to the
///   newest when behind); `contains(p)` is true when the history holds an event at
///   position `p` (and for [`Position::ZERO`]), false for a position lost in a
///   failover.
/// * Authority is decided in the write ([`failover_core::authority`]): `disengage`
///   relaxes and needs [`Authority::Supervisor`] (else [`Refusal::Forbidden`]); it
///   applies only while the state is at the position the audit expects
///   ([`Audit::expecting`]; else [`Refusal::PreconditionFailed`] naming the change
///   in between), or [`Refusal::PreconditionRequired`] when the audit requires one
///   and names none. `engage` tightens and never waits.
/// * Four eyes ([`failover_core::approvals`]): while `kill-switch.disengage` is
///   required, a supervisor's `disengage` changes nothing and answers
///   [`Error::PendingApproval`] (the same audit again answers the same request); an
///   audit [`breaking_glass`](Audit::breaking_glass) applies at once, marked
///   [`KillSwitchEvent::break_glass`]. Every applied change closes the requests
///   pending against the switch as superseded.
/// * Submitting the same `Audit` (same request id, actor and action) again returns
///   the state that request produced, marked [`Applied::replayed`], and changes
///   nothing — while that change is still the latest; after a later change it is
///   [`Refusal::Superseded`] naming it. Reusing the id for another action or by
///   another actor is [`Refusal::RequestReused`].
/// * `history(limit)` returns at most `limit` events, newest (greatest position) first.
/// * Text (reason, actor, ticket) is stored and returned verbatim.
#[async_trait::async_trait]
pub trait KillSwitchStore:
    FeedSource<Item = KillSwitchState, Error = Error> + std::fmt::Debug + 'static
{
    /// The current state.
    async fn load(&self) -> Result<KillSwitchState, Error>;
    /// Stops trading.
    async fn engage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error>;
    /// Resumes trading; needs a ticket and supervisor authority.
    async fn disengage(&self, audit: &Audit) -> Result<Applied<KillSwitchState>, Error>;
    /// Audit events, newest first.
    async fn history(&self, limit: usize) -> Result<Vec<KillSwitchEvent>, Error>;
}

/// What `action` does, for refusals.
pub(crate) fn describe(action: Action) -> &'static str {
    match action {
        Action::Engage => "engaging the kill switch",
        Action::Disengage => "disengaging the kill switch",
    }
}

/// Validates an audit for `action`, the one rule set every store applies.
pub(crate) fn validate(audit: &Audit, action: Action) -> Result<(), Error> {
    let (safety, what) = match action {
        Action::Engage => (failover_core::Safety::Tighten, "engage the kill switch"),
        Action::Disengage => (failover_core::Safety::Relax, "disengage the kill switch"),
    };
    audit.validate(safety, what).map_err(Error::from)
}
