//! [`ScopeModes`]: the hot-path handle of scoped controls, and its [`ScopeGate`]s.
//!
//! An order path never asks "what is the mode of `acme/eq/mm-1/acct-42`?" per order.
//! It asks [`ScopeModes::gate`] once, at start-up, for a [`ScopeGate`] over the leaves
//! its orders belong to (one leaf per tree it uses), and then per order calls
//! [`ScopeGate::check`], [`ScopeGate::allows`] or [`ScopeGate::mode`]: **one atomic
//! load** — no lock, no allocation, no clock read, no hash lookup. The gate's word
//! holds the effective mode precomputed: the strictest of the root (the global kill
//! switch), every ancestor of every leaf, and the leaves themselves.
//!
//! A background part keeps those words right:
//!
//! * failover-core's watcher loads every scope's own mode, follows the store's change
//!   feed (NOTIFY for PostgreSQL) and polls as a fallback. A pushed change carries its
//!   delta, which is applied without reading the store when it continues the handle's
//!   version; otherwise the handle reads what changed after its version, and
//!   everything when the store's history no longer continues it (writes lost in an
//!   asynchronous failover: the database of record wins, so a lost relaxation returns
//!   the gates to the stricter mode).
//! * A change of one scope re-derives only the gates at or under it (gates are indexed
//!   by their leaf nodes); the tree is never re-read for one change.
//! * A change of the root ([`KillSwitch::subscribe`]) re-derives every gate.
//!
//! It fails closed: before the first load, once the last successful read is older than
//! the staleness window (default 5 minutes), and whenever the kill switch handle
//! itself fails closed, **every gate answers `HALTED`** (cancels stay allowed, as in
//! `HALTED`, so that traders can take risk off the book).
//!
//! A scope that the store no longer has after a full reload (its creation was lost in
//! a failover) counts as `HALTED` until it is created again: its gates cannot be
//! vouched for.
//!
//! Cancel notices: [`ScopeGate::subscribe`] pushes every change of the gate's effective
//! mode; an engine that sees `HALTED` must cancel the working orders of that scope.
//!
//! Health component `scope`: `failed` when the store cannot be reached now, when stale
//! or never loaded; `degraded` when reads work but push does not, or the history
//! diverged; `operational` when both work.

use super::{
    DecidedBy, Error, OrderIntent, ScopeChange, ScopeDelta, ScopeMode, ScopePath, ScopeRefusal,
    ScopeState, ScopeStore,
};
use crate::{KillSwitch, Trading};
use failover_core::handle::{self, lock, HandleState, Published};
use failover_core::receipt::Receipts;
use failover_core::watcher::{WatchConfig, Watcher};
use failover_core::{ChangeRef, DbError, DbErrorKind, Position};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The health component name reported by [`ScopeModes::health`].
pub const SCOPE_HEALTH_COMPONENT: &str = "scope";

/// Settings of the handle: staleness window (default 5 minutes) and poll interval
/// (default 1 s).
pub type ScopeModesConfig = WatchConfig;

const NOT_LOADED: u8 = 0;
const FRESH: u8 = 1;
const STALE: u8 = 2;

/// The effective mode of every gate while the handle fails closed.
pub const FAIL_CLOSED_MODE: ScopeMode = ScopeMode::Halted;

/// Why a gate holds the mode that refused an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GateCause {
    /// The mode of a node: the root (the kill switch) or a scope.
    Decided(DecidedBy),
    /// The scopes have not been loaded yet: fail closed.
    NotLoaded,
    /// The scopes are older than the staleness window: fail closed.
    Stale,
}

/// An order a [`ScopeGate`] refused: the intent, the effective mode, the node that
/// decides it and who set that mode, when and why. Built only when refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRejection {
    /// The refused intent.
    pub intent: OrderIntent,
    /// The gate's effective mode.
    pub mode: ScopeMode,
    /// Where that mode comes from.
    pub cause: GateCause,
    /// Who set the deciding mode, when, at which position; `None` when failing closed,
    /// or while the handle has not yet read the details of a change it applied.
    /// Boxed: the refusal stays small for the `Result` of every check.
    pub change: Option<Box<ChangeRef>>,
    /// Why the deciding mode was set (same availability as `change`).
    pub reason: Option<String>,
}

impl ScopeRejection {
    /// The deciding node, unless the gate fails closed.
    pub fn decided_by(&self) -> Option<&DecidedBy> {
        match &self.cause {
            GateCause::Decided(by) => Some(by),
            _ => None,
        }
    }
}

fn intent_words(intent: OrderIntent) -> &'static str {
    match intent {
        OrderIntent::Open => "opening order",
        OrderIntent::Reduce => "reducing order",
        OrderIntent::Cancel => "cancel",
    }
}

impl std::fmt::Display for ScopeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} refused: effective scope mode {}",
            intent_words(self.intent),
            self.mode.as_str()
        )?;
        match &self.cause {
            GateCause::Decided(DecidedBy::Root) => f.write_str(", decided by the kill switch")?,
            GateCause::Decided(DecidedBy::Scope(path)) => write!(f, ", decided by scope {path}")?,
            GateCause::NotLoaded => {
                return f.write_str(" (scopes not loaded yet, failing closed)");
            }
            GateCause::Stale => {
                return f.write_str(
                    " (scopes are stale: store unreachable past the staleness window, failing closed)",
                );
            }
        }
        if let Some(change) = &self.change {
            write!(f, " ({change})")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScopeRejection {}

/// Freshness of the handle's scopes, for admin pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeSnapshotState {
    /// Nothing loaded yet.
    NotLoaded,
    /// Within the staleness window.
    Fresh,
    /// Past the staleness window.
    Stale,
}

/// A snapshot for admin pages and logs (not for the order path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeModesStatus {
    /// Whether the scopes are loaded and fresh.
    pub state: ScopeSnapshotState,
    /// The store version the handle holds (0 before the first load).
    pub version: u64,
    /// The position of the newest change the handle holds.
    pub position: Position,
    /// What the root contributes now: `HALTED` while the kill switch handle says
    /// halted (engaged, not loaded or stale), else `NORMAL`.
    pub root: ScopeMode,
    /// How many scopes the handle knows.
    pub scopes: usize,
    /// How many scopes hold an own mode stricter than `NORMAL`.
    pub restricted: usize,
    /// How many gates are alive.
    pub gates: usize,
    /// Wall-clock time of the last successful read.
    pub last_success: Option<SystemTime>,
    /// The error of the last failed refresh, cleared by the next success.
    pub last_error: Option<String>,
}

type NodeId = u32;

#[derive(Debug)]
struct Node {
    path: ScopePath,
    own: ScopeMode,
    /// Not in the store after a full reload: counted as `HALTED`.
    missing: bool,
    parent: Option<NodeId>,
    children: Vec<NodeId>,
    /// The strictest own mode of this node and its ancestors.
    chain: ScopeMode,
    /// The highest node holding `chain`.
    decider: NodeId,
    /// Who/why/when of the node's last change, read in the background.
    details: Option<ScopeState>,
    /// Gates with this node as a leaf.
    gates: Vec<Weak<GateCell>>,
}

impl Node {
    fn counted(&self) -> ScopeMode {
        if self.missing {
            ScopeMode::Halted
        } else {
            self.own
        }
    }
}

/// A gate's precomputed effective mode.
#[derive(Debug)]
struct GateCell {
    /// The effective mode as `ScopeMode as u8`: the hot path's only load.
    word: AtomicU8,
    /// The leaves.
    leaves: Box<[NodeId]>,
    /// Created by the first `subscribe`, under the tree lock.
    notice: OnceLock<watch::Sender<ScopeMode>>,
}

impl GateCell {
    fn mode(&self) -> ScopeMode {
        ScopeMode::from_u8(self.word.load(Ordering::Acquire)).unwrap_or(FAIL_CLOSED_MODE)
    }

    /// Stores `mode`; tells subscribers when it changed.
    fn set(&self, mode: ScopeMode) -> bool {
        let old = self.word.swap(mode as u8, Ordering::AcqRel);
        if old == mode as u8 {
            return false;
        }
        if let Some(tx) = self.notice.get() {
            tx.send_replace(mode);
        }
        true
    }
}

/// What the handle knows, changed only by the background tasks and by `gate`.
#[derive(Debug, Default)]
struct Tree {
    freshness: u8,
    version: u64,
    position: Position,
    head_event: Option<Uuid>,
    index: HashMap<ScopePath, NodeId>,
    nodes: Vec<Node>,
    /// What the root contributes (`HALTED` while the kill switch handle says halted).
    root: ScopeMode,
    root_trading: Option<Trading>,
    /// Every gate, for root and freshness changes.
    gates: Vec<Weak<GateCell>>,
}

impl Tree {
    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    /// The node of `path`, inserting it (and missing ancestors, as `NORMAL`).
    fn upsert(&mut self, path: &ScopePath) -> NodeId {
        if let Some(&id) = self.index.get(path) {
            return id;
        }
        let parent = path.parent().map(|p| self.upsert(&p));
        let id = NodeId::try_from(self.nodes.len()).expect("fewer than 2^32 scopes");
        let (chain, decider) = match parent {
            Some(p) => (self.node(p).chain, self.node(p).decider),
            None => (ScopeMode::Normal, id),
        };
        let (chain, decider) = if chain == ScopeMode::Normal {
            (ScopeMode::Normal, id)
        } else {
            (chain, decider)
        };
        self.nodes.push(Node {
            path: path.clone(),
            own: ScopeMode::Normal,
            missing: false,
            parent,
            children: Vec::new(),
            chain,
            decider,
            details: None,
            gates: Vec::new(),
        });
        if let Some(p) = parent {
            self.node_mut(p).children.push(id);
        }
        self.index.insert(path.clone(), id);
        id
    }

    /// Recomputes `id`'s chain from its parent's.
    fn derive_chain(&mut self, id: NodeId) {
        let node = self.node(id);
        let counted = node.counted();
        let (chain, decider) = match node.parent {
            // The ancestor wins ties: the highest node holding the strictest mode.
            Some(p) if self.node(p).chain >= counted => (self.node(p).chain, self.node(p).decider),
            _ => (counted, id),
        };
        let node = self.node_mut(id);
        node.chain = chain;
        node.decider = decider;
    }

    /// The effective mode of a gate with `leaves` now.
    fn effective(&self, leaves: &[NodeId]) -> ScopeMode {
        if self.freshness != FRESH {
            return FAIL_CLOSED_MODE;
        }
        leaves
            .iter()
            .fold(self.root, |m, &leaf| m.stricter(self.node(leaf).chain))
    }

    /// Re-derives every gate (root or freshness changed); returns how many changed.
    fn publish_all(&mut self) -> usize {
        let mut changed = 0;
        let mut gates = std::mem::take(&mut self.gates);
        let tree = &*self;
        gates.retain(|weak| match weak.upgrade() {
            Some(cell) => {
                changed += usize::from(cell.set(tree.effective(&cell.leaves)));
                true
            }
            None => false,
        });
        self.gates = gates;
        changed
    }

    /// Re-derives the chains at and under `roots` and the gates indexed there;
    /// returns how many gates changed.
    fn publish_under(&mut self, roots: &[NodeId]) -> usize {
        let mut seen = HashSet::new();
        let mut stack: Vec<NodeId> = Vec::new();
        let mut cells: Vec<Arc<GateCell>> = Vec::new();
        for &root in roots {
            if !seen.insert(root) {
                continue;
            }
            stack.push(root);
            while let Some(id) = stack.pop() {
                self.derive_chain(id);
                let node = self.node_mut(id);
                node.gates.retain(|weak| match weak.upgrade() {
                    Some(cell) => {
                        cells.push(cell);
                        true
                    }
                    None => false,
                });
                for &child in &self.node(id).children {
                    if seen.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        cells
            .iter()
            .filter(|cell| cell.set(self.effective(&cell.leaves)))
            .count()
    }

    /// Applies a read; returns whether it was newer than what the tree holds.
    fn apply(&mut self, delta: &ScopeDelta) -> bool {
        if self.freshness == NOT_LOADED || delta.since == 0 {
            self.reload(delta);
            return true;
        }
        let fits = delta.since <= self.version
            && delta.version > self.version
            && (delta.since < self.version || delta.since_event == self.head_event);
        if !fits {
            return false;
        }
        let mut changed = Vec::new();
        for (path, mode) in &delta.scopes {
            let id = self.upsert(path);
            let node = self.node_mut(id);
            if node.own != *mode || node.missing {
                node.own = *mode;
                node.missing = false;
                changed.push(id);
            }
        }
        self.version = delta.version;
        self.position = delta.position;
        self.head_event = delta.head_event;
        self.publish_under(&changed);
        true
    }

    /// A full load: every node takes the store's mode; a node the store no longer
    /// has counts as `HALTED`.
    fn reload(&mut self, delta: &ScopeDelta) {
        let mut present = vec![false; self.nodes.len()];
        for (path, mode) in &delta.scopes {
            let id = self.upsert(path);
            if let Some(seen) = present.get_mut(id as usize) {
                *seen = true;
            } else {
                present.resize(id as usize + 1, false);
                present[id as usize] = true;
            }
            let node = self.node_mut(id);
            node.own = *mode;
            node.missing = false;
        }
        for (id, seen) in present.iter().enumerate() {
            let node = &mut self.nodes[id];
            if !seen && !node.missing {
                tracing::error!(
                    scope = %node.path,
                    "scope no longer in the store (its creation was lost in a failover?): its gates are HALTED until it is created again"
                );
                node.missing = true;
                node.own = ScopeMode::Halted;
            }
        }
        self.version = delta.version;
        self.position = delta.position;
        self.head_event = delta.head_event;
        // Parents were inserted before their children: one pass in order.
        for id in 0..self.nodes.len() {
            self.derive_chain(id as NodeId);
        }
    }

    /// The node holding `leaves`' strictest mode (the one a refusal names).
    fn decider(&self, leaves: &[NodeId]) -> Option<NodeId> {
        let mut best: Option<NodeId> = None;
        for &leaf in leaves {
            let node = self.node(leaf);
            if best.is_none_or(|b| node.chain > self.node(b).chain) {
                best = Some(leaf);
            }
        }
        best.map(|leaf| self.node(leaf).decider)
    }

    fn did_you_mean(&self, wanted: &str) -> Option<ScopePath> {
        ScopePath::near_miss(
            wanted,
            self.nodes.iter().filter(|n| !n.missing).map(|n| &n.path),
        )
    }
}

#[derive(Debug)]
struct Shared {
    tree: Mutex<Tree>,
    /// The version of every applied read, and the receipt.
    published: Published,
    store: Arc<dyn ScopeStore>,
    root: KillSwitch,
}

impl Shared {
    fn set_root(&self, trading: Trading) {
        let mut tree = lock(&self.tree);
        tree.root_trading = Some(trading);
        let root = if trading.is_halted() {
            ScopeMode::Halted
        } else {
            ScopeMode::Normal
        };
        if tree.root != root {
            tree.root = root;
            tree.publish_all();
        }
    }

    /// Reads who/why/when of the scopes `delta` made stricter than `NORMAL`, off the
    /// order path and after their modes are in force: only refusals read them.
    fn fetch_details(self: &Arc<Self>, delta: &ScopeDelta) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let full = delta.since == 0;
        let paths: Vec<ScopePath> = delta
            .scopes
            .iter()
            .filter(|(_, mode)| *mode != ScopeMode::Normal)
            .map(|(path, _)| path.clone())
            .collect();
        if paths.is_empty() {
            return;
        }
        let shared = Arc::downgrade(self);
        let store = self.store.clone();
        runtime.spawn(async move {
            let states = if full {
                store.scopes(None).await
            } else {
                let mut states = Vec::with_capacity(paths.len());
                for path in &paths {
                    match store.scope(path.as_str()).await {
                        Ok(Some(state)) => states.push(state),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "reading scope details failed");
                            return;
                        }
                    }
                }
                Ok(states)
            };
            let (Some(shared), Ok(states)) = (shared.upgrade(), states) else {
                return;
            };
            let mut tree = lock(&shared.tree);
            for state in states {
                if let Some(&id) = tree.index.get(&state.path) {
                    let node = tree.node_mut(id);
                    if node
                        .details
                        .as_ref()
                        .is_none_or(|d| d.position <= state.position)
                    {
                        node.details = Some(state);
                    }
                }
            }
        });
    }

    /// Why a gate with `leaves` refuses at `mode` (cold path: takes the lock).
    fn rejection(&self, leaves: &[NodeId], intent: OrderIntent, mode: ScopeMode) -> ScopeRejection {
        let tree = lock(&self.tree);
        let refused = |cause, change, reason| ScopeRejection {
            intent,
            mode,
            cause,
            change,
            reason,
        };
        match tree.freshness {
            NOT_LOADED => return refused(GateCause::NotLoaded, None, None),
            STALE => return refused(GateCause::Stale, None, None),
            _ => {}
        }
        let scoped = tree.decider(leaves).map(|id| tree.node(id));
        let root_decides = tree.root >= scoped.map_or(ScopeMode::Normal, |n| n.chain)
            && tree.root > ScopeMode::Normal;
        if root_decides || scoped.is_none() {
            let trading = tree.root_trading;
            drop(tree);
            let state = self.root.status().state;
            let (change, reason) = match (trading, state) {
                (Some(Trading::Halted(crate::Halt::Engaged)) | None, Some(state)) => (
                    Some(Box::new(ChangeRef {
                        position: state.position,
                        actor: state.updated_by.clone(),
                        what: "engage".to_owned(),
                        at: state.updated_at,
                    })),
                    Some(state.reason),
                ),
                (Some(Trading::Halted(halt)), _) => (None, Some(halt.to_string())),
                _ => (None, None),
            };
            return refused(GateCause::Decided(DecidedBy::Root), change, reason);
        }
        let node = scoped.expect("checked above");
        let details = node
            .details
            .as_ref()
            .filter(|d| d.mode == node.own && !node.missing);
        let reason = if node.missing {
            Some("the store no longer has this scope (lost in a failover?): counted as HALTED until created again".to_owned())
        } else {
            details.map(|d| d.reason.clone())
        };
        refused(
            GateCause::Decided(DecidedBy::Scope(node.path.clone())),
            details.map(|d| {
                Box::new(ChangeRef {
                    position: d.position,
                    actor: d.updated_by.clone(),
                    what: format!("set {} {}", d.path, d.mode.as_str()),
                    at: d.updated_at,
                })
            }),
            reason,
        )
    }
}

/// Stops a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Running {
    watcher: Watcher,
    _root_task: AbortOnDrop,
}

/// The process-wide handle of scoped controls. Cheap to clone; its background tasks
/// stop when the last clone and the last [`ScopeGate`] are dropped.
#[derive(Debug, Clone)]
pub struct ScopeModes {
    shared: Arc<Shared>,
    running: Arc<Running>,
}

impl ScopeModes {
    /// Starts the watcher of `store` and follows the root `root` on the current tokio
    /// runtime. Every gate answers `HALTED` until the first load succeeds.
    ///
    /// # Panics
    /// Outside a tokio runtime, and when the settings contradict each other (see
    /// [`try_spawn`](Self::try_spawn)): a configuration defect, refused at start-up
    /// rather than run unsafely.
    pub fn spawn(store: Arc<dyn ScopeStore>, root: KillSwitch, config: ScopeModesConfig) -> Self {
        handle::must_start(Self::try_spawn(store, root, config))
    }

    /// Like [`spawn`](Self::spawn), refusing settings that contradict each other: a
    /// zero window or poll interval, or a store retry budget at or above the
    /// staleness window (one failed read would outlast the window).
    pub fn try_spawn(
        store: Arc<dyn ScopeStore>,
        root: KillSwitch,
        config: ScopeModesConfig,
    ) -> Result<Self, failover_core::WatchConfigError> {
        let mut trading = root.subscribe();
        let shared = Arc::new(Shared {
            tree: Mutex::new(Tree {
                root: ScopeMode::Halted,
                ..Tree::default()
            }),
            published: Published::new(),
            store: store.clone(),
            root,
        });
        // The watcher first: when the settings are refused, nothing is left running.
        let watcher = handle::start(SCOPE_HEALTH_COMPONENT, store, shared.clone(), config)?;
        let follower = Arc::downgrade(&shared);
        let root_task = tokio::spawn(async move {
            loop {
                let now = *trading.borrow_and_update();
                match follower.upgrade() {
                    Some(shared) => shared.set_root(now),
                    None => return,
                }
                if trading.changed().await.is_err() {
                    // The kill switch handle is gone: nothing can vouch for the root.
                    if let Some(shared) = follower.upgrade() {
                        shared.set_root(Trading::Halted(crate::Halt::NotLoaded));
                    }
                    return;
                }
            }
        });
        Ok(Self {
            shared,
            running: Arc::new(Running {
                watcher,
                _root_task: AbortOnDrop(root_task),
            }),
        })
    }

    /// A gate over `leaves` (one leaf per tree the order uses; any node of a tree may
    /// serve as a leaf) for the order path. Call it at start-up, after
    /// [`ready`](Self::ready): the leaves are checked against the scopes the handle
    /// holds.
    ///
    /// Refused: a path that is not canonical ([`ScopeRefusal::InvalidPath`]), a scope the
    /// store does not have ([`ScopeRefusal::UnknownScope`], naming a near miss), and any
    /// call before the first load ([`Error::Unavailable`]: retry after `ready`).
    pub fn gate(&self, leaves: &[&str]) -> Result<ScopeGate, Error> {
        let paths = leaves
            .iter()
            .map(|leaf| ScopePath::parse(leaf).map_err(Error::from))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tree = lock(&self.shared.tree);
        if tree.freshness == NOT_LOADED {
            return Err(Error::Unavailable {
                source: DbError::new(
                    DbErrorKind::Unavailable,
                    "scope gate",
                    None,
                    "the scopes have not been loaded yet: await ScopeModes::ready, then ask again"
                        .to_owned(),
                ),
            });
        }
        let mut ids = Vec::with_capacity(paths.len());
        for path in &paths {
            match tree.index.get(path) {
                Some(&id) if !tree.node(id).missing => ids.push(id),
                _ => {
                    return Err(Error::Control(ScopeRefusal::UnknownScope {
                        path: path.to_string(),
                        did_you_mean: tree.did_you_mean(path.as_str()),
                    }))
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let cell = Arc::new(GateCell {
            word: AtomicU8::new(FAIL_CLOSED_MODE as u8),
            leaves: ids.into_boxed_slice(),
            notice: OnceLock::new(),
        });
        cell.set(tree.effective(&cell.leaves));
        let weak = Arc::downgrade(&cell);
        for &leaf in cell.leaves.iter() {
            let gates = &mut tree.node_mut(leaf).gates;
            prune_at_power_of_two(gates);
            gates.push(weak.clone());
        }
        prune_at_power_of_two(&mut tree.gates);
        tree.gates.push(weak);
        drop(tree);
        Ok(ScopeGate {
            cell,
            handle: self.clone(),
        })
    }

    /// The effective mode of `path` now (cold path: takes a lock; `None` for a scope
    /// the handle does not hold), including the root and the fail-closed rule.
    pub fn mode(&self, path: &str) -> Option<ScopeMode> {
        let path = ScopePath::parse(path).ok()?;
        let tree = lock(&self.shared.tree);
        let id = *tree.index.get(&path)?;
        Some(tree.effective(&[id]))
    }

    /// Waits until the scopes and the kill switch are loaded, bounded by `timeout`.
    /// True when both are (then every gate answers what the store says).
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        self.shared.ready(timeout).await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let root = self.shared.root.ready(remaining).await;
        root && self.shared.loaded()
    }

    /// Waits until the handle holds store version `version` (e.g. the version after
    /// an admin command), bounded by `timeout`. True when reached.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        self.shared
            .published
            .wait_for_version(version, timeout)
            .await
    }

    /// A snapshot for admin pages (takes locks; not for the order path).
    pub fn status(&self) -> ScopeModesStatus {
        let freshness = self.running.watcher.freshness();
        let tree = lock(&self.shared.tree);
        ScopeModesStatus {
            state: match tree.freshness {
                NOT_LOADED => ScopeSnapshotState::NotLoaded,
                FRESH => ScopeSnapshotState::Fresh,
                _ => ScopeSnapshotState::Stale,
            },
            version: tree.version,
            position: tree.position,
            root: tree.root,
            scopes: tree.nodes.iter().filter(|n| !n.missing).count(),
            restricted: tree
                .nodes
                .iter()
                .filter(|n| n.counted() != ScopeMode::Normal)
                .count(),
            gates: tree.gates.iter().filter(|g| g.strong_count() > 0).count(),
            last_success: freshness.last_success(),
            last_error: freshness.last_error(),
        }
    }

    /// Reports every change this handle applies to `receipts` (component `scope`,
    /// target `""`), from the watcher, never the order path: what `safetyctl scope
    /// set --wait` counts. Call once per handle.
    #[must_use]
    pub fn with_receipts(self, receipts: &Receipts) -> Self {
        self.shared
            .install_receipts(receipts, SCOPE_HEALTH_COMPONENT);
        self
    }
}

failover_core::handle_health!(ScopeModes, |handle| handle.running.watcher);

/// Drops the entries of dropped gates whenever a list reaches a power of two, so a
/// list never holds more than twice the gates alive at its last pruning.
fn prune_at_power_of_two(gates: &mut Vec<Weak<GateCell>>) {
    if gates.len() >= 64 && gates.len().is_power_of_two() {
        gates.retain(|g| g.strong_count() > 0);
    }
}

/// The order path's view of its scopes: the effective mode of its leaves, their
/// ancestors and the root, precomputed in one atomic word that the handle re-derives
/// whenever one of them changes.
///
/// [`mode`](Self::mode), [`allows`](Self::allows) and a successful
/// [`check`](Self::check) are one atomic load: no lock, no allocation, no clock read.
/// Cheap to clone (clones share the word); keeps the handle's background tasks alive.
#[derive(Debug, Clone)]
pub struct ScopeGate {
    cell: Arc<GateCell>,
    handle: ScopeModes,
}

impl ScopeGate {
    /// The effective mode now (`HALTED` while the handle fails closed).
    #[inline]
    pub fn mode(&self) -> ScopeMode {
        self.cell.mode()
    }

    /// Whether an order of `intent` may be sent now.
    #[inline]
    pub fn allows(&self, intent: OrderIntent) -> bool {
        self.mode().allows(intent)
    }

    /// Like [`allows`](Self::allows), naming the deciding node, who set its mode,
    /// when and why when refused (built only then: the refusal takes a lock and
    /// allocates).
    #[inline]
    pub fn check(&self, intent: OrderIntent) -> Result<(), ScopeRejection> {
        let mode = self.mode();
        if mode.allows(intent) {
            Ok(())
        } else {
            Err(self.rejection(intent, mode))
        }
    }

    #[cold]
    #[inline(never)]
    fn rejection(&self, intent: OrderIntent, mode: ScopeMode) -> ScopeRejection {
        self.handle
            .shared
            .rejection(&self.cell.leaves, intent, mode)
    }

    /// Cancel notices: pushes every change of this gate's effective mode, starting
    /// with the current one. An engine awaits `changed()` and, when the mode turns
    /// `HALTED` (its scope, an ancestor or the kill switch halted, or the handle
    /// failed closed), cancels every working order of this scope at once; at
    /// `CANCEL_ONLY` or `REDUCE_ONLY` it stops sending what the mode refuses.
    pub fn subscribe(&self) -> watch::Receiver<ScopeMode> {
        // Under the lock every change is published under: no change is missed
        // between reading the word and creating the sender.
        let _tree = lock(&self.handle.shared.tree);
        self.cell
            .notice
            .get_or_init(|| watch::channel(self.cell.mode()).0)
            .subscribe()
    }

    /// The leaves of this gate (those given to [`ScopeModes::gate`], each once).
    pub fn leaves(&self) -> Vec<ScopePath> {
        let tree = lock(&self.handle.shared.tree);
        self.cell
            .leaves
            .iter()
            .map(|&id| tree.node(id).path.clone())
            .collect()
    }

    /// The handle this gate belongs to.
    pub fn handle(&self) -> &ScopeModes {
        &self.handle
    }
}

/// Reads what changed after the handle's version; everything when the store's
/// history no longer continues it (writes lost in a failover).
async fn fetch(store: &dyn ScopeStore, shared: &Shared) -> Result<ScopeDelta, Error> {
    let (since, head) = {
        let tree = lock(&shared.tree);
        if tree.freshness == NOT_LOADED {
            (0, None)
        } else {
            (tree.version, tree.head_event)
        }
    };
    let delta = store.changes_since(since).await?;
    if since == 0 || (delta.since == since && delta.since_event == head) {
        Ok(delta)
    } else {
        tracing::warn!(
            held = since,
            store = delta.version,
            "scope history diverged from the handle's (failover?); reloading everything"
        );
        store.changes_since(0).await
    }
}

/// The scopes as the watcher keeps them: a pushed change carries its delta, applied
/// without a read when it continues the handle's version.
#[async_trait::async_trait]
impl HandleState for Shared {
    type Store = dyn ScopeStore;
    type State = ScopeDelta;

    async fn read(&self, store: &dyn ScopeStore) -> Result<ScopeDelta, Error> {
        fetch(store, self).await
    }

    async fn resolve(
        &self,
        store: &dyn ScopeStore,
        pushed: ScopeChange,
    ) -> Result<Option<ScopeDelta>, Error> {
        if self.held() == Some(pushed.position) {
            return Ok(None);
        }
        // The notification's delta continues the handle's version: apply it without
        // a read.
        if let Some(delta) = pushed.delta {
            let tree = lock(&self.tree);
            if tree.freshness != NOT_LOADED
                && delta.since == tree.version
                && delta.since_event == tree.head_event
            {
                return Ok(Some(delta));
            }
        }
        fetch(store, self).await.map(Some)
    }

    fn held(&self) -> Option<Position> {
        let tree = lock(&self.tree);
        (tree.freshness != NOT_LOADED).then_some(tree.position)
    }

    fn adopt(self: &Arc<Self>, delta: ScopeDelta) {
        let mut tree = lock(&self.tree);
        let was = tree.freshness;
        let newer = tree.apply(&delta);
        tree.freshness = FRESH;
        if was != FRESH {
            if was == STALE {
                tracing::info!("scopes: fresh again");
            }
            tree.publish_all();
        } else if delta.since == 0 && newer {
            tree.publish_all();
        }
        let (version, position) = (tree.version, tree.position);
        drop(tree);
        if newer {
            self.published.announce(version, position);
            self.fetch_details(&delta);
        }
    }

    fn fail_closed(&self) {
        let mut tree = lock(&self.tree);
        if tree.freshness == FRESH {
            tracing::error!("scopes: stale, failing closed (every gate HALTED)");
            tree.freshness = STALE;
            tree.publish_all();
        }
    }

    fn published(&self) -> &Published {
        &self.published
    }

    fn loaded(&self) -> bool {
        lock(&self.tree).freshness != NOT_LOADED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> ScopePath {
        ScopePath::parse(p).expect("canonical")
    }

    fn delta(since: u64, version: u64, scopes: &[(&str, ScopeMode)]) -> ScopeDelta {
        ScopeDelta {
            since,
            since_event: (since > 0).then(|| Uuid::from_u128(since.into())),
            version,
            position: Position::new(1, version),
            head_event: Some(Uuid::from_u128(version.into())),
            scopes: scopes.iter().map(|(p, m)| (path(p), *m)).collect(),
        }
    }

    fn gate(tree: &mut Tree, leaves: &[&str]) -> Arc<GateCell> {
        let ids: Vec<NodeId> = leaves.iter().map(|l| tree.index[&path(l)]).collect();
        let cell = Arc::new(GateCell {
            word: AtomicU8::new(FAIL_CLOSED_MODE as u8),
            leaves: ids.into_boxed_slice(),
            notice: OnceLock::new(),
        });
        cell.set(tree.effective(&cell.leaves));
        for &leaf in cell.leaves.iter() {
            tree.node_mut(leaf).gates.push(Arc::downgrade(&cell));
        }
        tree.gates.push(Arc::downgrade(&cell));
        cell
    }

    fn loaded() -> Tree {
        let mut tree = Tree {
            root: ScopeMode::Normal,
            ..Tree::default()
        };
        tree.apply(&delta(
            0,
            5,
            &[
                ("acme", ScopeMode::Normal),
                ("acme/eq", ScopeMode::Normal),
                ("acme/eq/mm-1", ScopeMode::Normal),
                ("acme/eq/mm-1/acct-42", ScopeMode::Normal),
                ("acme/fx", ScopeMode::Normal),
                ("venue", ScopeMode::Normal),
                ("venue/xnys", ScopeMode::Normal),
            ],
        ));
        tree.freshness = FRESH;
        tree
    }

    #[test]
    fn the_strictest_of_ancestors_decides_and_the_highest_wins_ties() {
        let mut tree = loaded();
        let leaf = gate(&mut tree, &["acme/eq/mm-1/acct-42", "venue/xnys"]);
        let fx = gate(&mut tree, &["acme/fx"]);
        assert!(tree.apply(&delta(5, 6, &[("acme/eq/mm-1", ScopeMode::CancelOnly)])));
        assert_eq!(leaf.mode(), ScopeMode::CancelOnly);
        assert!(tree.apply(&delta(6, 7, &[("acme/eq", ScopeMode::CancelOnly)])));
        assert_eq!(
            tree.decider(&leaf.leaves)
                .map(|id| tree.node(id).path.as_str().to_owned())
                .as_deref(),
            Some("acme/eq")
        );
        assert!(tree.apply(&delta(7, 8, &[("venue", ScopeMode::Halted)])));
        assert_eq!(leaf.mode(), ScopeMode::Halted);
        assert_eq!(fx.mode(), ScopeMode::Normal);
        assert!(!tree.apply(&delta(3, 8, &[])), "not newer");
        assert!(!tree.apply(&delta(9, 10, &[])), "a gap");
    }

    #[test]
    fn a_scope_lost_from_the_store_counts_as_halted() {
        let mut tree = loaded();
        let fx = gate(&mut tree, &["acme/fx"]);
        tree.apply(&delta(0, 4, &[("acme", ScopeMode::Normal)]));
        tree.publish_all();
        assert_eq!(fx.mode(), ScopeMode::Halted);
    }
}
