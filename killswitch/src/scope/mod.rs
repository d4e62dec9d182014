//! Scoped controls: halt a desk, a strategy, an account or a venue — not only
//! everything (the kill switch) or one symbol.
//!
//! A **scope** is a node in one of the firm's trees, named by a [`ScopePath`] of
//! canonical segments (`acme/equities/mm-1/acct-42`). The root of every tree is the
//! global kill switch: engaging it makes every scope effectively
//! [`HALTED`](ScopeMode::Halted). A node holds its own [`ScopeMode`]; what applies to
//! an order is the [`effective`](ScopeStore::effective) mode: the strictest of the
//! root, every ancestor and the node itself.
//!
//! The rules every store applies (memory and PostgreSQL alike, held by one
//! conformance suite) are on [`ScopeStore`].

mod handle;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod memory;
mod path;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod tree;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use handle::{
    GateCause, ScopeGate, ScopeModes, ScopeModesConfig, ScopeModesStatus, ScopeRejection,
    ScopeSnapshotState, FAIL_CLOSED_MODE, SCOPE_HEALTH_COMPONENT,
};
pub use memory::MemoryScopeStore;
pub use path::{PathError, ScopePath, MAX_SEGMENTS, MAX_SEGMENT_CHARS};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresScopeStore;
pub use tree::effective_tree;

use crate::KillSwitchState;
use failover_core::{Applied, Audit, Authority, ChangeRef, FeedSource, Position, Positioned};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use uuid::Uuid;

/// The control name scope approval requests carry (`approval_requests.control`).
pub const CONTROL: &str = "scope";
/// The approvals action a scope relaxation is ([`failover_core::approvals::ACTIONS`]).
pub const APPROVAL_ACTION: &str = "scope.relax";

/// A scope's mode: a ladder ordered by strictness,
/// `Normal < ReduceOnly < CancelOnly < Halted`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum ScopeMode {
    /// Everything allowed.
    #[default]
    Normal = 0,
    /// Only orders that reduce a position, and cancels.
    ReduceOnly = 1,
    /// Only cancels.
    CancelOnly = 2,
    /// Only cancels; entering it also tells subscribers to cancel the scope's
    /// working orders.
    Halted = 3,
}

/// What an order does, for [`ScopeMode::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OrderIntent {
    /// A new order that can increase risk.
    Open = 0,
    /// A new order that reduces a position.
    Reduce = 1,
    /// Cancelling a working order.
    Cancel = 2,
}

/// The action matrix, as data: for each mode, whether `[Open, Reduce, Cancel]` are
/// allowed. Cancels are always allowed.
pub const SCOPE_ACTIONS: [(ScopeMode, [bool; 3]); 4] = [
    (ScopeMode::Normal, [true, true, true]),
    (ScopeMode::ReduceOnly, [false, true, true]),
    (ScopeMode::CancelOnly, [false, false, true]),
    (ScopeMode::Halted, [false, false, true]),
];

impl ScopeMode {
    /// Every mode, least strict first.
    pub const ALL: [ScopeMode; 4] = [
        Self::Normal,
        Self::ReduceOnly,
        Self::CancelOnly,
        Self::Halted,
    ];

    /// `NORMAL`, `REDUCE_ONLY`, `CANCEL_ONLY` or `HALTED`, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::ReduceOnly => "REDUCE_ONLY",
            Self::CancelOnly => "CANCEL_ONLY",
            Self::Halted => "HALTED",
        }
    }

    /// The mode of a `#[repr(u8)]` value; `None` above 3.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Normal),
            1 => Some(Self::ReduceOnly),
            2 => Some(Self::CancelOnly),
            3 => Some(Self::Halted),
            _ => None,
        }
    }

    /// The stricter of the two.
    #[must_use]
    pub fn stricter(self, other: ScopeMode) -> ScopeMode {
        self.max(other)
    }

    /// Whether an order with `intent` may go out in this mode ([`SCOPE_ACTIONS`]).
    pub const fn allows(self, intent: OrderIntent) -> bool {
        SCOPE_ACTIONS[self as usize].1[intent as usize]
    }
}

impl std::fmt::Display for ScopeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a scope mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope mode {0:?}: write NORMAL, REDUCE_ONLY, CANCEL_ONLY or HALTED")]
pub struct ParseScopeModeError(pub String);

impl std::str::FromStr for ScopeMode {
    type Err = ParseScopeModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseScopeModeError(s.to_owned()))
    }
}

/// A node's own mode and its last change (table `scopes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeState {
    /// The node.
    pub path: ScopePath,
    /// Its own mode (the effective mode also depends on the root and the ancestors).
    pub mode: ScopeMode,
    /// Why it was last changed, verbatim.
    pub reason: String,
    /// Who last changed it.
    pub updated_by: String,
    /// The ticket of the last change, if any.
    pub ticket: Option<String>,
    /// When it was last changed (database clock for PostgreSQL), microsecond precision.
    #[serde(with = "failover_core::time::rfc3339")]
    pub updated_at: SystemTime,
    /// Who created it.
    pub created_by: String,
    /// The position of its last change: what a relaxation of this scope names
    /// ([`Audit::expecting`]).
    pub position: Position,
}

impl Positioned for ScopeState {
    fn position(&self) -> Position {
        self.position
    }
}

/// What a scope event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeAction {
    /// The node was created (mode NORMAL).
    Create,
    /// The node's own mode was set.
    SetMode,
}

impl ScopeAction {
    /// `create` or `set_mode`, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::SetMode => "set_mode",
        }
    }

    /// The action of its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Self::Create),
            "set_mode" => Some(Self::SetMode),
            _ => None,
        }
    }
}

impl std::fmt::Display for ScopeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the append-only scope trail (`scope_events`), identified by its
/// position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeEvent {
    /// The event's identity: the position of the change, unique forever.
    pub position: Position,
    /// The request's idempotency key.
    pub request_id: Uuid,
    /// The node it changed.
    pub path: ScopePath,
    /// Create or set the mode.
    pub action: ScopeAction,
    /// The node's own mode before (`None` for a creation).
    pub from_mode: Option<ScopeMode>,
    /// The node's own mode after.
    pub to_mode: ScopeMode,
    /// Why, verbatim.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Ticket; always present when the change relaxed.
    pub ticket: Option<String>,
    /// When (database clock for PostgreSQL), microsecond precision.
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
    /// The database login that wrote it (`session_user`); `None` in memory.
    #[serde(default)]
    pub login: Option<String>,
    /// The authority it was applied with.
    #[serde(default)]
    pub authority: Option<Authority>,
    /// The approval request a second supervisor approved to apply this change.
    #[serde(default)]
    pub approval_id: Option<Uuid>,
    /// True when a supervisor broke the glass: a relaxation that required a second
    /// person's approval was applied at once.
    #[serde(default)]
    pub break_glass: bool,
}

impl ScopeEvent {
    /// What the change did, as refusals name it: `create acme/eq` or
    /// `set_mode acme/eq HALTED -> CANCEL_ONLY` (the database says the same).
    pub fn describe(&self) -> String {
        describe_change(&self.path, self.action, self.from_mode, self.to_mode)
    }

    /// This event as the change a refusal names.
    pub fn change_ref(&self) -> ChangeRef {
        ChangeRef {
            position: self.position,
            actor: self.actor.clone(),
            what: self.describe(),
            at: self.at,
        }
    }
}

pub(crate) fn describe_change(
    path: &ScopePath,
    action: ScopeAction,
    from: Option<ScopeMode>,
    to: ScopeMode,
) -> String {
    match (action, from) {
        (ScopeAction::Create, _) => format!("create {path}"),
        (ScopeAction::SetMode, Some(from)) => format!("set_mode {path} {from} -> {to}"),
        (ScopeAction::SetMode, None) => format!("set_mode {path} {to}"),
    }
}

/// Which node decides a scope's effective mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum DecidedBy {
    /// The global kill switch, engaged.
    Root,
    /// A scope: the node itself or an ancestor.
    Scope(ScopePath),
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root => f.write_str("the kill switch"),
            Self::Scope(p) => write!(f, "{p}"),
        }
    }
}

/// What applies to a scope's orders: the strictest of the root (the kill switch),
/// every ancestor and the scope itself, and who/why/when of the node that decides
/// it — the root when engaged, otherwise the highest (closest to the root) node
/// holding the strictest mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveScope {
    /// The scope asked about.
    pub path: ScopePath,
    /// Its own mode.
    pub own: ScopeMode,
    /// The mode in force.
    pub effective: ScopeMode,
    /// The node that decides it.
    pub decided_by: DecidedBy,
    /// Who last changed the deciding node.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
    /// The position of the deciding node's last change.
    pub position: Position,
}

/// What changed after a version: enough to bring a reader's copy of the nodes from
/// `since` to `version` (see [`ScopeStore::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeDelta {
    /// The version the delta starts after (0: a full load).
    pub since: u64,
    /// The request id of the change at `since` as the store knows it (`None` for 0
    /// or when the store has no such version). A reader whose own history differs —
    /// changes lost in a failover — must reload fully.
    pub since_event: Option<Uuid>,
    /// The store's version when read: how many changes its history holds.
    pub version: u64,
    /// The store's position when read (of its newest change).
    pub position: Position,
    /// The request id of the change at `version` (`None` for 0).
    pub head_event: Option<Uuid>,
    /// Every node created or set after `since`, with its own mode at `version`
    /// (all nodes when `since` is 0), sorted by path.
    pub scopes: Vec<(ScopePath, ScopeMode)>,
}

impl Positioned for ScopeDelta {
    fn position(&self) -> Position {
        self.position
    }
}

/// What the scope change feed carries: the position of the newest change and, when
/// it came with the notification, the delta of that one change — so a reader at the
/// previous version applies it without reading the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeChange {
    /// The position of the newest change.
    pub position: Position,
    /// The change's delta after the previous version, when known.
    pub delta: Option<ScopeDelta>,
}

impl ScopeChange {
    /// A change known only by its position: readers fetch what changed.
    pub fn at(position: Position) -> Self {
        Self {
            position,
            delta: None,
        }
    }
}

impl Positioned for ScopeChange {
    fn position(&self) -> Position {
        self.position
    }
}

/// A stream of scope changes (see [`failover_core::feed`]).
pub type Subscription = failover_core::FeedSubscription<ScopeChange>;

fn unknown_message(path: &str, did_you_mean: &Option<ScopePath>) -> String {
    match did_you_mean {
        Some(p) => format!("no such scope {path}: did you mean {p}?"),
        None => format!("no such scope {path}: create it first (safetyctl scope create {path})"),
    }
}

/// Errors of every scope store ([`failover_core::StoreError`]). Each says what
/// happened and what to do; a refused call changed nothing.
pub type Error = failover_core::StoreError<ScopeRefusal>;

/// What only the scope store refuses ([`Error::Control`]); nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeRefusal {
    /// The path is not canonical.
    #[error("refused, nothing changed: {0}")]
    InvalidPath(#[from] PathError),
    /// No such scope.
    #[error("refused, nothing changed: {}", unknown_message(.path, .did_you_mean))]
    UnknownScope {
        /// The path asked for, verbatim.
        path: String,
        /// The known path it was most likely meant as.
        did_you_mean: Option<ScopePath>,
    },
    /// The parent of a scope being created does not exist.
    #[error("refused, nothing changed: the parent {parent} of {path} does not exist: create {parent} first")]
    ParentMissing {
        /// The scope being created.
        path: ScopePath,
        /// Its missing parent.
        parent: ScopePath,
    },
    /// The scope exists already (created by another request).
    #[error("refused, nothing changed: the scope {path} exists already")]
    AlreadyExists {
        /// The scope.
        path: ScopePath,
    },
    /// A new scope reads like an existing one (the same after folding case and
    /// treating `-`, `_` and `.` alike): two names people would confuse.
    #[error("refused, nothing changed: {path} reads like the existing scope {existing} (names that differ only in case or in - _ . are refused): use {existing}, or pick a name that differs")]
    NearMiss {
        /// The scope asked for.
        path: ScopePath,
        /// The existing scope it reads like.
        existing: ScopePath,
    },
    /// A relaxation from HALTED that skips CANCEL_ONLY.
    #[error("refused, nothing changed: {path} is {from}; {to} is more than one step: relax HALTED one step at a time: set CANCEL_ONLY first")]
    StepTooLarge {
        /// The scope.
        path: ScopePath,
        /// Its own mode.
        from: ScopeMode,
        /// The mode asked for.
        to: ScopeMode,
    },
}

impl failover_core::ControlRefusal for ScopeRefusal {
    const STORE: &'static str = "scope";
    const SCHEMA_MISSING: &'static str =
        "scope tables missing: run killswitch migrations (PostgresScopeStore::migrate)";

    fn outcome(&self) -> failover_core::Outcome<'_> {
        let (status, code) = match self {
            Self::InvalidPath(_) => (400, "invalid_scope"),
            Self::UnknownScope { .. } => (404, "unknown_scope"),
            Self::ParentMissing { .. } => (404, "parent_missing"),
            Self::AlreadyExists { .. } => (409, "already_exists"),
            Self::NearMiss { .. } => (409, "near_miss"),
            Self::StepTooLarge { .. } => (409, "step_too_large"),
        };
        failover_core::Outcome::Invalid { status, code }
    }
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Self {
        Self::Control(ScopeRefusal::InvalidPath(e))
    }
}

/// Where scopes, their modes and their trail live.
///
/// # Contract
/// * [`create_scope`](Self::create_scope): the parent must exist (a one-segment
///   path starts a tree); any operator may create (audited, action `create`, mode
///   NORMAL); a path that reads like a known one ([`ScopePath::fold`]) is
///   [`ScopeRefusal::NearMiss`]; one created by another request is
///   [`ScopeRefusal::AlreadyExists`].
/// * [`set_scope_mode`](Self::set_scope_mode) on an unknown path is
///   [`ScopeRefusal::UnknownScope`] (naming a near miss). Tightening (a mode at least as
///   strict as the scope's own) applies at once. Relaxing needs a ticket, supervisor
///   authority ([`Refusal::Forbidden`](crate::Refusal::Forbidden)), the scope still at the position the audit
///   expects ([`Audit::expecting`]), and goes from HALTED to CANCEL_ONLY only
///   ([`ScopeRefusal::StepTooLarge`]). A scope's own mode may be set below an ancestor's:
///   it is kept, and the effective mode stays the ancestor's.
/// * Four eyes: relaxing is the approvals action `scope.relax`; while it is
///   required a supervisor's relaxation answers [`Error::PendingApproval`], and
///   breaking the glass applies at once, marked. Every applied change closes the
///   requests pending against its scope as superseded.
/// * The same `Audit` again returns the state that request produced, marked
///   [`Applied::replayed`], while it is still the scope's latest change; after a
///   later change it is [`Refusal::Superseded`](crate::Refusal::Superseded); the id reused for another action,
///   path, mode or actor is [`Refusal::RequestReused`](crate::Refusal::RequestReused).
/// * Every applied call takes a new position, appends exactly one [`ScopeEvent`]
///   and is one feed item carrying its delta. A refused call changes nothing.
/// * Text (reason, actor, ticket) is stored and returned verbatim.
#[async_trait::async_trait]
pub trait ScopeStore:
    FeedSource<Item = ScopeChange, Error = Error> + std::fmt::Debug + 'static
{
    /// Creates a node (mode NORMAL) under an existing parent.
    async fn create_scope(
        &self,
        path: &ScopePath,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error>;
    /// Sets a node's own mode.
    async fn set_scope_mode(
        &self,
        path: &str,
        mode: ScopeMode,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error>;
    /// A node; `None` when it does not exist.
    async fn scope(&self, path: &str) -> Result<Option<ScopeState>, Error>;
    /// Every node (or every node at and below `under`), sorted by path.
    async fn scopes(&self, under: Option<&ScopePath>) -> Result<Vec<ScopeState>, Error>;
    /// The mode in force for a node, the kill switch included.
    async fn effective(&self, path: &str) -> Result<EffectiveScope, Error>;
    /// What changed after `since` (0: everything).
    async fn changes_since(&self, since: u64) -> Result<ScopeDelta, Error>;
    /// Events (of one node, or of all), newest first.
    async fn scope_history(
        &self,
        path: Option<&ScopePath>,
        limit: usize,
    ) -> Result<Vec<ScopeEvent>, Error>;
}

/// What relaxing a scope is called in refusals and approval requests.
pub(crate) fn relax_what(path: &ScopePath, from: ScopeMode, to: ScopeMode) -> String {
    format!("relax scope {path} from {from} to {to}")
}

/// Decides the effective mode of `path` from the root and its chain of nodes
/// (root-most first, `path` itself last).
pub(crate) fn decide(
    path: &ScopePath,
    root: &KillSwitchState,
    chain: &[&ScopeState],
) -> EffectiveScope {
    let own = chain.last().map_or(ScopeMode::Normal, |s| s.mode);
    if root.engaged {
        return EffectiveScope {
            path: path.clone(),
            own,
            effective: ScopeMode::Halted,
            decided_by: DecidedBy::Root,
            actor: root.updated_by.clone(),
            reason: root.reason.clone(),
            at: root.updated_at,
            position: root.position,
        };
    }
    let strictest = chain.iter().map(|s| s.mode).max().unwrap_or_default();
    let node = chain
        .iter()
        .find(|s| s.mode == strictest)
        .or(chain.last())
        .copied();
    match node {
        Some(n) => EffectiveScope {
            path: path.clone(),
            own,
            effective: strictest,
            decided_by: DecidedBy::Scope(n.path.clone()),
            actor: n.updated_by.clone(),
            reason: n.reason.clone(),
            at: n.updated_at,
            position: n.position,
        },
        None => EffectiveScope {
            path: path.clone(),
            own,
            effective: ScopeMode::Normal,
            decided_by: DecidedBy::Scope(path.clone()),
            actor: String::new(),
            reason: String::new(),
            at: SystemTime::UNIX_EPOCH,
            position: Position::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_a_ladder_with_an_action_matrix() {
        for (i, (mode, row)) in SCOPE_ACTIONS.iter().enumerate() {
            assert_eq!(*mode as usize, i);
            assert_eq!(ScopeMode::from_u8(i as u8), Some(*mode));
            assert_eq!(mode.as_str().parse::<ScopeMode>(), Ok(*mode));
            for (j, intent) in [OrderIntent::Open, OrderIntent::Reduce, OrderIntent::Cancel]
                .into_iter()
                .enumerate()
            {
                assert_eq!(mode.allows(intent), row[j]);
            }
        }
        assert!(ScopeMode::Normal < ScopeMode::ReduceOnly);
        assert_eq!(
            ScopeMode::CancelOnly.stricter(ScopeMode::ReduceOnly),
            ScopeMode::CancelOnly
        );
        let err = "halted".parse::<ScopeMode>().unwrap_err().to_string();
        assert!(err.contains("HALTED"), "{err}");
        assert_eq!(ScopeMode::from_u8(4), None);
        assert_eq!(
            serde_json::to_string(&ScopeMode::ReduceOnly).unwrap(),
            "\"REDUCE_ONLY\""
        );
    }
}
