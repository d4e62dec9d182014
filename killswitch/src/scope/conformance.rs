//! The contract of [`ScopeStore`], as one public async fn per behaviour.
//!
//! Every store runs the whole list through
//! [`scope_conformance_tests!`](crate::scope_conformance_tests), which expands into
//! individually named `#[tokio::test]`s so that a failure names the behaviour. The
//! in-memory store is held to exactly what PostgreSQL does.
//!
//! Each function expects a fresh [`ScopeFixture`]: no scopes, the kill switch
//! disengaged, no approval required.

use super::{
    DecidedBy, Error, PathError, ScopeAction, ScopeMode, ScopePath, ScopeRefusal, ScopeStore,
};
use crate::{Audit, Authority, KillSwitchStore};
use failover_core::conformance::{AuditedControl, Change, Recorded};
use failover_core::{ApprovalStore, Position, Refusal};
use std::sync::Arc;
use std::time::Duration;

/// What each conformance function runs against: the scope store, the kill switch it
/// hangs under, and the approvals its relaxations are subject to.
#[derive(Clone)]
pub struct ScopeFixture {
    /// The store under test.
    pub store: Arc<dyn ScopeStore>,
    /// The root of every tree.
    pub root: Arc<dyn KillSwitchStore>,
    /// The approvals (nothing required at the start).
    pub approvals: Arc<dyn ApprovalStore>,
}

impl std::fmt::Debug for ScopeFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeFixture")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn p(text: &str) -> ScopePath {
    ScopePath::parse(text).expect("a valid path")
}

/// One scope as the audited-store contract sees it
/// ([`failover_core::conformance`]): setting `CANCEL_ONLY` tightens, `NORMAL`
/// relaxes. The contract's behaviours run for every store through
/// [`scope_conformance_tests!`](crate::scope_conformance_tests).
#[derive(Debug, Clone)]
pub struct Audited {
    store: Arc<dyn ScopeStore>,
    path: ScopePath,
}

impl Audited {
    /// Creates the scope `contract` and describes its mode.
    pub async fn new(store: Arc<dyn ScopeStore>) -> Self {
        let path = p("contract");
        store
            .create_scope(&path, &operator("the contract's scope"))
            .await
            .expect("create the contract's scope");
        Self { store, path }
    }

    async fn set(&self, mode: ScopeMode, audit: &Audit) -> Result<Change, Error> {
        let applied = self
            .store
            .set_scope_mode(self.path.as_str(), mode, audit)
            .await?;
        Ok(Change {
            position: applied.position,
            replayed: applied.replayed,
        })
    }
}

#[async_trait::async_trait]
impl AuditedControl for Audited {
    type Error = Error;

    async fn tighten(&self, audit: &Audit) -> Result<Change, Error> {
        self.set(ScopeMode::CancelOnly, audit).await
    }

    async fn relax(&self, audit: &Audit) -> Result<Change, Error> {
        self.set(ScopeMode::Normal, audit).await
    }

    async fn position(&self) -> Result<Position, Error> {
        Ok(self
            .store
            .scope(self.path.as_str())
            .await?
            .map_or(Position::ZERO, |s| s.position))
    }

    async fn history(&self, limit: usize) -> Result<Vec<Recorded>, Error> {
        Ok(self
            .store
            .scope_history(Some(&self.path), usize::MAX)
            .await?
            .into_iter()
            .filter(|e| e.action == ScopeAction::SetMode)
            .take(limit)
            .map(|e| Recorded {
                position: e.position,
                request_id: e.request_id,
                actor: e.actor,
                reason: e.reason,
                ticket: e.ticket,
            })
            .collect())
    }
}

/// An operator's audit (may tighten only).
fn operator(reason: &str) -> Audit {
    Audit::new("ops:olivia", reason).with_authority(Authority::Operator)
}

/// A supervisor's audit with a ticket (may relax).
fn supervisor(reason: &str) -> Audit {
    Audit::new("ops:sam", reason)
        .with_ticket("CHG-1")
        .with_authority(Authority::Supervisor)
}

/// `acme`, `acme/eq`, `acme/eq/mm-1`, `acme/eq/mm-1/acct-42`, `acme/fx`.
async fn tree(store: &dyn ScopeStore) {
    for path in [
        "acme",
        "acme/eq",
        "acme/eq/mm-1",
        "acme/eq/mm-1/acct-42",
        "acme/fx",
    ] {
        store
            .create_scope(&p(path), &operator(&format!("register {path}")))
            .await
            .expect("create");
    }
}

async fn set(store: &dyn ScopeStore, path: &str, mode: ScopeMode, audit: &Audit) -> Position {
    store
        .set_scope_mode(path, mode, audit)
        .await
        .unwrap_or_else(|e| panic!("set {path} {mode}: {e}"))
        .position
}

async fn events(store: &dyn ScopeStore) -> usize {
    store
        .scope_history(None, 1000)
        .await
        .expect("history")
        .len()
}

async fn own(store: &dyn ScopeStore, path: &str) -> ScopeMode {
    store
        .scope(path)
        .await
        .expect("scope")
        .expect("exists")
        .mode
}

/// A one-segment path starts a tree; a child needs its parent; a creation is
/// audited as `create` with mode NORMAL; the same path created again by another
/// request is `AlreadyExists`; a path that reads like a known one is refused naming
/// it. Refusals write nothing.
pub async fn create_needs_the_parent_and_refuses_near_misses(f: &ScopeFixture) {
    let store = &*f.store;
    let created = store
        .create_scope(&p("acme"), &operator("new firm tree"))
        .await
        .expect("a tree");
    assert_eq!(created.mode, ScopeMode::Normal);
    assert_eq!(created.created_by, "ops:olivia");
    assert!(created.position > Position::ZERO);
    let err = store
        .create_scope(&p("acme/eq/mm-1"), &operator("too deep"))
        .await
        .expect_err("the parent is missing");
    match &err {
        Error::Control(ScopeRefusal::ParentMissing { path, parent }) => {
            assert_eq!(
                (path.as_str(), parent.as_str()),
                ("acme/eq/mm-1", "acme/eq")
            );
        }
        other => panic!("expected ParentMissing, got {other:?}"),
    }
    assert!(err.to_string().contains("create acme/eq first"), "{err}");
    store
        .create_scope(&p("acme/eq-desk"), &operator("desk"))
        .await
        .expect("a child");
    for near in ["acme/eq_desk", "acme/eq.desk"] {
        match store.create_scope(&p(near), &operator("typo")).await {
            Err(Error::Control(ScopeRefusal::NearMiss { existing, .. })) => {
                assert_eq!(existing.as_str(), "acme/eq-desk")
            }
            other => panic!("{near}: expected NearMiss, got {other:?}"),
        }
    }
    match store
        .create_scope(&p("acme/eq-desk"), &operator("again"))
        .await
    {
        Err(Error::Control(ScopeRefusal::AlreadyExists { path })) => {
            assert_eq!(path.as_str(), "acme/eq-desk")
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let history = store.scope_history(None, 10).await.expect("history");
    assert_eq!(history.len(), 2, "two creations, no refusal written");
    assert_eq!(history[0].action, ScopeAction::Create);
    assert_eq!(history[0].from_mode, None);
    assert_eq!(history[0].to_mode, ScopeMode::Normal);
    let listed: Vec<String> = store
        .scopes(None)
        .await
        .expect("scopes")
        .into_iter()
        .map(|s| s.path.to_string())
        .collect();
    assert_eq!(listed, ["acme", "acme/eq-desk"]);
}

/// Paths that are not canonical are refused with what to write instead, before
/// anything is read or written.
pub async fn invalid_paths_are_refused(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    let before = events(store).await;
    let nine = "a/b/c/d/e/f/g/h/i";
    for text in [
        "",
        "Acme/Eq",
        "acme/ eq",
        "acme\u{200B}/eq",
        "a//b",
        nine,
        "acme/eq ",
    ] {
        match store
            .set_scope_mode(text, ScopeMode::Halted, &operator("halt"))
            .await
        {
            Err(Error::Control(ScopeRefusal::InvalidPath(_))) => {}
            other => panic!("{text:?}: expected InvalidPath, got {other:?}"),
        }
        assert!(
            matches!(
                store.scope(text).await,
                Err(Error::Control(ScopeRefusal::InvalidPath(_)))
            ),
            "{text:?}"
        );
    }
    let upper = store
        .set_scope_mode("Acme/Eq", ScopeMode::Halted, &operator("halt"))
        .await
        .expect_err("upper case");
    assert!(
        matches!(&upper, Error::Control(ScopeRefusal::InvalidPath(PathError::NotCanonical { canonical })) if canonical == "acme/eq"),
        "{upper:?}"
    );
    assert!(upper.to_string().contains("write acme/eq"), "{upper}");
    assert!(matches!(
        ScopePath::parse(nine),
        Err(PathError::TooDeep { segments: 9 })
    ));
    assert_eq!(events(store).await, before, "nothing written");
}

/// An operator tightens at once, without a ticket; the event records from/to and
/// the authority.
pub async fn operator_tightens_at_once(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    let applied = store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::ReduceOnly,
            &operator("risk limit hit"),
        )
        .await
        .expect("tighten");
    assert_eq!(applied.mode, ScopeMode::ReduceOnly);
    assert!(!applied.replayed);
    set(store, "acme/eq", ScopeMode::Halted, &operator("runaway")).await;
    assert_eq!(own(store, "acme/eq").await, ScopeMode::Halted);
    // Re-asserting the same mode is a tightening too: audited.
    set(store, "acme/eq", ScopeMode::Halted, &operator("still")).await;
    let e = &store
        .scope_history(Some(&p("acme/eq")), 1)
        .await
        .expect("history")[0];
    assert_eq!(e.action, ScopeAction::SetMode);
    assert_eq!(
        (e.from_mode, e.to_mode),
        (Some(ScopeMode::Halted), ScopeMode::Halted)
    );
    assert_eq!(e.authority, Some(Authority::Operator));
    assert_eq!(e.actor, "ops:olivia");
}

/// HALTED relaxes to CANCEL_ONLY only (`StepTooLarge` otherwise, saying so); from
/// CANCEL_ONLY any lower mode.
pub async fn halted_relaxes_one_step_at_a_time(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    set(store, "acme/eq", ScopeMode::Halted, &operator("halt")).await;
    let before = events(store).await;
    for to in [ScopeMode::Normal, ScopeMode::ReduceOnly] {
        let err = store
            .set_scope_mode("acme/eq", to, &supervisor("all clear"))
            .await
            .expect_err("too large a step");
        assert!(
            matches!(&err, Error::Control(ScopeRefusal::StepTooLarge { from: ScopeMode::Halted, to: t, .. }) if *t == to),
            "{err:?}"
        );
        assert!(err.to_string().contains("set CANCEL_ONLY first"), "{err}");
    }
    assert_eq!(events(store).await, before, "nothing written");
    set(
        store,
        "acme/eq",
        ScopeMode::CancelOnly,
        &supervisor("step 1"),
    )
    .await;
    set(store, "acme/eq", ScopeMode::Normal, &supervisor("step 2")).await;
    assert_eq!(own(store, "acme/eq").await, ScopeMode::Normal);
}

/// A relaxation decided on a state that has moved since is refused naming the change
/// in between, even when the step rule would also refuse it: the caller read
/// CANCEL_ONLY, an operator halted the scope, and the answer names that halt (who,
/// what), not a step from a mode the caller never saw. Nothing is written.
pub async fn a_moved_state_is_named_before_the_step_rule(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    let seen = set(
        store,
        "acme/eq",
        ScopeMode::CancelOnly,
        &operator("contain"),
    )
    .await;
    let halted = set(store, "acme/eq", ScopeMode::Halted, &operator("breach")).await;
    let before = events(store).await;
    let err = store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::ReduceOnly,
            &supervisor("cleared").expecting(seen),
        )
        .await
        .expect_err("the state moved");
    match &err {
        Error::Refused(Refusal::PreconditionFailed {
            expected, current, ..
        }) => {
            assert_eq!(*expected, seen, "{err}");
            assert_eq!(current.position, halted, "{err}");
            assert_eq!(current.actor, "ops:olivia", "{err}");
            assert!(current.what.contains("HALTED"), "names the halt: {err}");
        }
        other => panic!("expected PreconditionFailed naming the halt, got {other:?}"),
    }
    assert_eq!(events(store).await, before, "nothing written");
    assert_eq!(own(store, "acme/eq").await, ScopeMode::Halted);
    // Read afresh, the step rule speaks.
    let err = store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::ReduceOnly,
            &supervisor("cleared").expecting(halted),
        )
        .await
        .expect_err("too large a step");
    assert!(
        matches!(err, Error::Control(ScopeRefusal::StepTooLarge { .. })),
        "{err:?}"
    );
}

/// A child's own mode may be set below an ancestor's: the write is kept, the
/// effective mode stays the ancestor's and names it. Ties go to the node closest to
/// the root.
pub async fn child_below_an_ancestor_keeps_the_ancestor_mode(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    set(
        store,
        "acme/eq",
        ScopeMode::CancelOnly,
        &operator("desk stop"),
    )
    .await;
    set(
        store,
        "acme/eq/mm-1",
        ScopeMode::ReduceOnly,
        &operator("strategy"),
    )
    .await;
    let leaf = store
        .effective("acme/eq/mm-1/acct-42")
        .await
        .expect("effective");
    assert_eq!(leaf.own, ScopeMode::Normal);
    assert_eq!(leaf.effective, ScopeMode::CancelOnly);
    assert_eq!(leaf.decided_by, DecidedBy::Scope(p("acme/eq")));
    assert_eq!(leaf.reason, "desk stop");
    let mm = store.effective("acme/eq/mm-1").await.expect("effective");
    assert_eq!(
        (mm.own, mm.effective),
        (ScopeMode::ReduceOnly, ScopeMode::CancelOnly)
    );
    assert_eq!(
        store.effective("acme/fx").await.expect("fx").effective,
        ScopeMode::Normal,
        "a sibling is not affected"
    );
    // The leaf halts itself: it decides.
    set(
        store,
        "acme/eq/mm-1/acct-42",
        ScopeMode::Halted,
        &operator("acct"),
    )
    .await;
    let leaf = store
        .effective("acme/eq/mm-1/acct-42")
        .await
        .expect("effective");
    assert_eq!(
        (leaf.effective, leaf.decided_by),
        (
            ScopeMode::Halted,
            DecidedBy::Scope(p("acme/eq/mm-1/acct-42"))
        )
    );
    // The firm halts: a tie, decided by the node closest to the root.
    set(store, "acme", ScopeMode::Halted, &operator("firm")).await;
    let leaf = store
        .effective("acme/eq/mm-1/acct-42")
        .await
        .expect("effective");
    assert_eq!(leaf.decided_by, DecidedBy::Scope(p("acme")));
    assert_eq!(leaf.actor, "ops:olivia");
}

/// Engaging the kill switch makes every scope effectively HALTED, decided by the
/// root; disengaging returns each to its own and its ancestors' modes.
pub async fn root_engaged_halts_every_scope(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    set(store, "acme/eq", ScopeMode::ReduceOnly, &operator("limit")).await;
    let engaged = f
        .root
        .engage(&Audit::new("ops:root", "market-wide stop"))
        .await
        .expect("engage");
    for s in store.scopes(None).await.expect("scopes") {
        let e = store.effective(s.path.as_str()).await.expect("effective");
        assert_eq!(e.effective, ScopeMode::Halted, "{}", s.path);
        assert_eq!(e.decided_by, DecidedBy::Root);
        assert_eq!(e.actor, "ops:root");
        assert_eq!(e.reason, "market-wide stop");
        assert_eq!(e.position, engaged.position);
        assert_eq!(e.own, s.mode);
    }
    f.root
        .disengage(&Audit::new("ops:root", "over").with_ticket("INC-9"))
        .await
        .expect("disengage");
    let leaf = store.effective("acme/eq/mm-1").await.expect("effective");
    assert_eq!(
        (leaf.effective, leaf.decided_by),
        (ScopeMode::ReduceOnly, DecidedBy::Scope(p("acme/eq")))
    );
    assert_eq!(
        store.effective("acme/fx").await.expect("fx").effective,
        ScopeMode::Normal
    );
}

/// An unknown scope is `UnknownScope`, naming a near miss when there is one and
/// saying how to create it otherwise; nothing is written.
pub async fn unknown_scope_names_a_near_miss(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    store
        .create_scope(&p("acme/eq-desk"), &operator("desk"))
        .await
        .expect("create");
    let before = events(store).await;
    match store
        .set_scope_mode("acme/eq_desk", ScopeMode::Halted, &operator("halt"))
        .await
    {
        Err(Error::Control(ScopeRefusal::UnknownScope { path, did_you_mean })) => {
            assert_eq!(path, "acme/eq_desk");
            assert_eq!(did_you_mean, Some(p("acme/eq-desk")));
        }
        other => panic!("expected UnknownScope, got {other:?}"),
    }
    let err = store
        .set_scope_mode("nope/x", ScopeMode::Halted, &operator("halt"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(
            &err,
            Error::Control(ScopeRefusal::UnknownScope {
                did_you_mean: None,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("safetyctl scope create nope/x"),
        "{err}"
    );
    assert!(matches!(
        store.effective("nope/x").await,
        Err(Error::Control(ScopeRefusal::UnknownScope { .. }))
    ));
    assert_eq!(store.scope("nope/x").await.expect("scope"), None);
    assert_eq!(events(store).await, before, "nothing written");
}

/// History is newest first, per scope or for all, limited, and text is verbatim.
pub async fn history_is_newest_first_and_verbatim(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    let reason = "desk \"eq\" — ünïcode ✓ 'quotes' \\ backslash";
    let audit = Audit::new("ops:ana ✓", reason)
        .with_ticket("INC-ü 1")
        .with_authority(Authority::Operator);
    set(store, "acme/eq", ScopeMode::Halted, &audit).await;
    set(store, "acme/fx", ScopeMode::ReduceOnly, &operator("fx")).await;
    let all = store.scope_history(None, 100).await.expect("history");
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].position > w[1].position));
    assert_eq!(all[0].path.as_str(), "acme/fx");
    let eq = store
        .scope_history(Some(&p("acme/eq")), 100)
        .await
        .expect("history");
    assert_eq!(eq.len(), 2);
    assert_eq!(eq[0].reason, reason);
    assert_eq!(eq[0].actor, "ops:ana ✓");
    assert_eq!(eq[0].ticket.as_deref(), Some("INC-ü 1"));
    assert_eq!(eq[1].action, ScopeAction::Create);
    let state = store
        .scope("acme/eq")
        .await
        .expect("scope")
        .expect("exists");
    assert_eq!(
        (state.reason.as_str(), state.updated_by.as_str()),
        (reason, "ops:ana ✓")
    );
    assert_eq!(state.created_by, "ops:olivia");
    assert_eq!(store.scope_history(None, 3).await.expect("limit").len(), 3);
    let under: Vec<String> = store
        .scopes(Some(&p("acme/eq")))
        .await
        .expect("scopes")
        .into_iter()
        .map(|s| s.path.to_string())
        .collect();
    assert_eq!(under, ["acme/eq", "acme/eq/mm-1", "acme/eq/mm-1/acct-42"]);
}

/// `changes_since(v)` names every node created or set after `v` with its mode now,
/// and the events at `v` and at the head.
pub async fn changes_since_returns_deltas(f: &ScopeFixture) {
    let store = &*f.store;
    let empty = store.changes_since(0).await.expect("delta");
    assert_eq!((empty.version, empty.position), (0, Position::ZERO));
    assert!(empty.scopes.is_empty() && empty.head_event.is_none());
    tree(store).await;
    let full = store.changes_since(0).await.expect("delta");
    assert_eq!(full.version, 5);
    assert_eq!(full.scopes.len(), 5);
    assert!(full.scopes.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    let mark = full.version;
    let audit = operator("halt");
    set(store, "acme/eq", ScopeMode::Halted, &audit).await;
    set(store, "acme/eq", ScopeMode::CancelOnly, &supervisor("step")).await;
    let head = supervisor("fx");
    set(store, "acme/fx", ScopeMode::ReduceOnly, &operator("fx")).await;
    let _ = head;
    let delta = store.changes_since(mark).await.expect("delta");
    assert_eq!(delta.since, mark);
    assert_eq!(delta.version, mark + 3);
    assert_eq!(
        delta.scopes,
        vec![
            (p("acme/eq"), ScopeMode::CancelOnly),
            (p("acme/fx"), ScopeMode::ReduceOnly)
        ]
    );
    let history = store.scope_history(None, 10).await.expect("history");
    assert_eq!(delta.head_event, Some(history[0].request_id));
    assert_eq!(delta.position, history[0].position);
    assert_eq!(delta.since_event, Some(history[3].request_id));
    let none = store.changes_since(delta.version).await.expect("delta");
    assert!(none.scopes.is_empty());
}

/// A subscriber sees each change with the delta of that one change.
pub async fn subscribers_see_each_change_with_its_delta(f: &ScopeFixture) {
    let store = &*f.store;
    let mut sub = store.subscribe().await.expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the current item")
        .expect("open");
    assert_eq!(first.position, Position::ZERO);
    let mut version = 0;
    for (path, mode) in [
        ("acme", None),
        ("acme/eq", None),
        ("acme/eq", Some(ScopeMode::Halted)),
        ("acme/eq", Some(ScopeMode::CancelOnly)),
    ] {
        let applied = match mode {
            None => store
                .create_scope(&p(path), &operator("new"))
                .await
                .expect("create"),
            Some(m) if m == ScopeMode::CancelOnly => store
                .set_scope_mode(path, m, &supervisor("step"))
                .await
                .expect("relax"),
            Some(m) => store
                .set_scope_mode(path, m, &operator("halt"))
                .await
                .expect("tighten"),
        };
        version += 1;
        let item = loop {
            let item = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("a change within 5 s")
                .expect("open");
            if item.position >= applied.position {
                break item;
            }
        };
        assert_eq!(item.position, applied.position);
        let delta = item.delta.expect("the change carries its delta");
        assert_eq!((delta.since, delta.version), (version - 1, version));
        assert_eq!(delta.scopes, vec![(p(path), applied.mode)]);
        let history = store.scope_history(None, 2).await.expect("history");
        assert_eq!(delta.head_event, Some(history[0].request_id));
        assert_eq!(delta.since_event, history.get(1).map(|e| e.request_id));
    }
    assert!(store.contains(Position::ZERO).await.expect("contains"));
    let newest = store.scope_history(None, 1).await.expect("history")[0].position;
    assert!(store.contains(newest).await.expect("contains"));
}

/// Positions strictly increase, one event per applied call, none per refusal.
pub async fn one_event_per_applied_call(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    let mut last = Position::ZERO;
    for i in 0..6 {
        let result = match i % 3 {
            0 => {
                store
                    .set_scope_mode("acme/eq", ScopeMode::Halted, &operator("h"))
                    .await
            }
            1 => {
                store
                    .set_scope_mode("acme/eq", ScopeMode::Normal, &supervisor("n"))
                    .await
            }
            _ => {
                store
                    .set_scope_mode("acme/eq", ScopeMode::CancelOnly, &supervisor("c"))
                    .await
            }
        };
        if let Ok(applied) = result {
            assert!(applied.position > last);
            last = applied.position;
        }
    }
    // h, (n refused: too large a step), c, h, (n refused), c.
    assert_eq!(events(store).await, 5 + 4);
}

// Four eyes: the suite's PostgreSQL login is a superuser (every role, acting for
// any actor), behind which the actor is the principal.

async fn require(f: &ScopeFixture) {
    f.approvals
        .require(
            &["scope.relax".to_owned()],
            None,
            &Audit::new("ops:carol", "four eyes").with_authority(Authority::Operator),
        )
        .await
        .expect("an operator requires approval");
}

fn alice_relaxes() -> Audit {
    Audit::new("ops:alice", "desk fixed")
        .with_ticket("INC-7")
        .with_authority(Authority::Supervisor)
}

/// With `scope.relax` required, a supervisor's relaxation changes nothing and
/// answers the pending request (the same audit again the same request); another
/// supervisor's approval applies it in the requester's name.
pub async fn required_relaxation_waits_for_a_second_supervisor(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    require(f).await;
    set(store, "acme/eq", ScopeMode::CancelOnly, &operator("stop")).await;
    let before = events(store).await;
    let audit = alice_relaxes();
    let pending = |r: Result<_, Error>| match r {
        Err(Error::PendingApproval(p)) => p,
        other => panic!("a required relaxation must wait, got {other:?}"),
    };
    let request = pending(
        store
            .set_scope_mode("acme/eq", ScopeMode::Normal, &audit)
            .await,
    );
    assert_eq!(request.action, "scope.relax");
    assert!(request.what.contains("acme/eq"), "{}", request.what);
    let again = pending(
        store
            .set_scope_mode("acme/eq", ScopeMode::Normal, &audit)
            .await,
    );
    assert_eq!(again.id, request.id);
    assert_eq!(own(store, "acme/eq").await, ScopeMode::CancelOnly);
    assert_eq!(events(store).await, before, "pending writes nothing");
    let own_approval = f
        .approvals
        .approve(request.id, "ops:alice", Authority::Supervisor)
        .await
        .expect_err("self-approval");
    assert_eq!(own_approval.code(), "self_approval");
    let approved = f
        .approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("another supervisor approves");
    let state = store
        .scope("acme/eq")
        .await
        .expect("scope")
        .expect("exists");
    assert_eq!(state.mode, ScopeMode::Normal);
    assert_eq!(state.updated_by, "ops:alice");
    assert_eq!(approved.position, state.position);
    let event = &store.scope_history(None, 1).await.expect("history")[0];
    assert_eq!(event.approval_id, Some(request.id));
    assert!(!event.break_glass);
}

/// Break-glass applies at once, marked in the event and listed for review.
pub async fn break_glass_applies_at_once(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    require(f).await;
    set(store, "acme/eq", ScopeMode::ReduceOnly, &operator("stop")).await;
    let audit = alice_relaxes().breaking_glass();
    let applied = store
        .set_scope_mode("acme/eq", ScopeMode::Normal, &audit)
        .await
        .expect("break-glass applies");
    assert_eq!(applied.mode, ScopeMode::Normal);
    assert!(store.scope_history(None, 1).await.expect("history")[0].break_glass);
    let review = f.approvals.review().await.expect("review");
    assert_eq!(review.len(), 1);
    assert_eq!(review[0].id, audit.request_id());
}

/// A tightening of the scope applies at once and supersedes the pending
/// relaxation; approving it then is stale, naming the tightening.
pub async fn tightening_supersedes_a_pending_relaxation(f: &ScopeFixture) {
    let store = &*f.store;
    tree(store).await;
    require(f).await;
    set(store, "acme/eq", ScopeMode::CancelOnly, &operator("stop")).await;
    let request = match store
        .set_scope_mode("acme/eq", ScopeMode::Normal, &alice_relaxes())
        .await
    {
        Err(Error::PendingApproval(p)) => p,
        other => panic!("expected pending, got {other:?}"),
    };
    set(store, "acme/eq", ScopeMode::Halted, &operator("worse")).await;
    let err = f
        .approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), "stale_request", "{err}");
    assert!(err.to_string().contains("ops:olivia"), "{err}");
    assert_eq!(own(store, "acme/eq").await, ScopeMode::Halted);
}

/// Expands into one named `#[tokio::test]` per behaviour of the scope store
/// contract. `$setup` is an async fn returning `(ScopeFixture, guard)`, the guard
/// kept alive for the test (a database cluster, or `()`).
///
/// ```no_run
/// use std::sync::Arc;
/// use tradepulse_killswitch::scope::conformance::ScopeFixture;
/// use tradepulse_killswitch::{MemoryKillSwitchStore, MemoryScopeStore};
/// async fn setup() -> (ScopeFixture, ()) {
///     let root = Arc::new(MemoryKillSwitchStore::new());
///     let approvals = Arc::new(failover_core::approvals::MemoryApprovals::new());
///     let store = MemoryScopeStore::with_approvals(root.clone(), approvals.clone());
///     (ScopeFixture { store, root, approvals }, ())
/// }
/// tradepulse_killswitch::scope_conformance_tests!(setup);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! scope_conformance_tests {
    ($setup:path) => {
        $crate::scope_conformance_tests!(@tests $setup;
            create_needs_the_parent_and_refuses_near_misses,
            invalid_paths_are_refused,
            operator_tightens_at_once,
            halted_relaxes_one_step_at_a_time,
            a_moved_state_is_named_before_the_step_rule,
            child_below_an_ancestor_keeps_the_ancestor_mode,
            root_engaged_halts_every_scope,
            unknown_scope_names_a_near_miss,
            history_is_newest_first_and_verbatim,
            changes_since_returns_deltas,
            subscribers_see_each_change_with_its_delta,
            one_event_per_applied_call,
            required_relaxation_waits_for_a_second_supervisor,
            break_glass_applies_at_once,
            tightening_supersedes_a_pending_relaxation,
        );
        async fn __audited() -> (
            ::std::sync::Arc<$crate::scope::conformance::Audited>,
            impl Sized,
        ) {
            let (fixture, guard) = $setup().await;
            let audited = $crate::scope::conformance::Audited::new(fixture.store.clone()).await;
            (::std::sync::Arc::new(audited), (guard, fixture))
        }
        $crate::conformance::audited_contract_tests!(__audited);
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (fixture, _guard) = $setup().await;
                $crate::scope::conformance::$name(&fixture).await;
            }
        )*
    };
}
