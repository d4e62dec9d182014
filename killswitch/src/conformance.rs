//! The contract of [`KillSwitchStore`], as one public async fn per behaviour.
//!
//! Every store runs the whole list through [`conformance_tests!`](crate::conformance_tests),
//! which expands into individually named `#[tokio::test]`s so that a failure names
//! the behaviour. The in-memory store is held to exactly what PostgreSQL does.
//!
//! Each function expects a fresh store (disengaged, version 0, no history).

use crate::{Action, Audit, Authority, Error, KillSwitchStore};
use failover_core::ApprovalStore;
use std::sync::Arc;
use std::time::Duration;

pub use failover_core::audited_contract_tests;
pub use failover_core::conformance::{AuditedControl, Change, Recorded};

/// The kill switch as the audited-store contract sees it
/// ([`failover_core::conformance`]): engaging tightens, disengaging relaxes; the
/// contract's behaviours run for every store through
/// [`conformance_tests!`](crate::conformance_tests).
#[derive(Debug, Clone)]
pub struct Audited(pub Arc<dyn KillSwitchStore>);

#[async_trait::async_trait]
impl AuditedControl for Audited {
    type Error = Error;

    async fn tighten(&self, audit: &Audit) -> Result<Change, Error> {
        let applied = self.0.engage(audit).await?;
        Ok(Change {
            position: applied.position,
            replayed: applied.replayed,
        })
    }

    async fn relax(&self, audit: &Audit) -> Result<Change, Error> {
        let applied = self.0.disengage(audit).await?;
        Ok(Change {
            position: applied.position,
            replayed: applied.replayed,
        })
    }

    async fn position(&self) -> Result<failover_core::Position, Error> {
        Ok(self.0.load().await?.position)
    }

    async fn history(&self, limit: usize) -> Result<Vec<Recorded>, Error> {
        Ok(self
            .0
            .history(limit)
            .await?
            .into_iter()
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

fn engage_audit(reason: &str) -> Audit {
    Audit::new("ops:conformance", reason)
}

fn disengage_audit(reason: &str) -> Audit {
    Audit::new("ops:conformance", reason).with_ticket("INC-1")
}

/// A fresh store is disengaged at version 0 with no history.
pub async fn fresh_store_is_disengaged_at_version_zero(store: &dyn KillSwitchStore) {
    let state = store.load().await.expect("load");
    assert!(!state.engaged);
    assert_eq!(state.version, 0);
    assert!(store.history(10).await.expect("history").is_empty());
}

/// Engage then disengage round-trips every field through `load`.
pub async fn engage_then_disengage_round_trips(store: &dyn KillSwitchStore) {
    let engaged = store
        .engage(&Audit::new("ops:alice", "runaway algo").with_ticket("INC-42"))
        .await
        .expect("engage");
    assert!(engaged.engaged);
    assert_eq!(engaged.reason, "runaway algo");
    assert_eq!(engaged.updated_by, "ops:alice");
    assert_eq!(engaged.ticket.as_deref(), Some("INC-42"));
    assert_eq!(engaged.version, 1);
    assert_eq!(store.load().await.expect("load"), *engaged);

    let released = store
        .disengage(&Audit::new("ops:bob", "algo fixed").with_ticket("INC-43"))
        .await
        .expect("disengage");
    assert!(!released.engaged);
    assert_eq!(released.reason, "algo fixed");
    assert_eq!(released.updated_by, "ops:bob");
    assert_eq!(released.version, 2);
    assert!(released.updated_at >= engaged.updated_at);
    assert_eq!(store.load().await.expect("load"), *released);
}

/// Engaging an engaged switch is accepted: it stays engaged, the version advances
/// and the repeat is audited (an operator re-confirming with a new reason).
pub async fn repeated_engage_stays_engaged_and_is_audited(store: &dyn KillSwitchStore) {
    let first = store.engage(&engage_audit("first")).await.expect("engage");
    let second = store
        .engage(&engage_audit("second"))
        .await
        .expect("engage again");
    assert!(second.engaged);
    assert_eq!(second.reason, "second");
    assert_eq!(second.version, first.version + 1);
    assert_eq!(store.history(10).await.expect("history").len(), 2);
}

/// Every successful change bumps the version by exactly one.
pub async fn versions_strictly_increase(store: &dyn KillSwitchStore) {
    let mut last = store.load().await.expect("load").version;
    for i in 0..6 {
        let state = if i % 2 == 0 {
            store.engage(&engage_audit("up")).await
        } else {
            store.disengage(&disengage_audit("down")).await
        }
        .expect("change");
        assert_eq!(state.version, last + 1);
        last = state.version;
    }
}

/// History is newest first, bounded by `limit`, and mirrors each change.
pub async fn history_is_newest_first_and_limited(store: &dyn KillSwitchStore) {
    store.engage(&engage_audit("one")).await.expect("engage");
    store
        .disengage(&disengage_audit("two"))
        .await
        .expect("disengage");
    store.engage(&engage_audit("three")).await.expect("engage");
    let all = store.history(100).await.expect("history");
    let reasons: Vec<&str> = all.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["three", "two", "one"]);
    let versions: Vec<u64> = all.iter().map(|e| e.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(all[1].action, Action::Disengage);
    assert!(!all[1].engaged);
    assert_eq!(all[1].ticket.as_deref(), Some("INC-1"));
    assert_eq!(all[0].actor, "ops:conformance");
    let two = store.history(2).await.expect("history");
    assert_eq!(two, all[..2].to_vec());
    assert!(store.history(0).await.expect("history").is_empty());
}

/// Exactly one audit row per successful call; refused calls write none.
pub async fn one_audit_row_per_successful_call(store: &dyn KillSwitchStore) {
    let mut ok = 0;
    for i in 0..8 {
        let result = match i % 4 {
            0 => store.engage(&engage_audit("e")).await,
            1 => store.disengage(&Audit::new("ops", "no ticket")).await,
            2 => store.disengage(&disengage_audit("d")).await,
            _ => store.engage(&Audit::new("", "no actor")).await,
        };
        if result.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 4);
    let history = store.history(100).await.expect("history");
    assert_eq!(history.len(), ok);
    assert_eq!(store.load().await.expect("load").version, ok as u64);
}

/// 50 concurrent engage/disengage calls: all succeed, versions 1..=50 are each used
/// once, and the final state equals the newest audit event.
pub async fn concurrent_changes_leave_state_equal_to_newest_event(store: Arc<dyn KillSwitchStore>) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store.engage(&engage_audit(&format!("engage {i}"))).await
            } else {
                store
                    .disengage(&disengage_audit(&format!("disengage {i}")))
                    .await
            }
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("change");
    }
    let history = store.history(100).await.expect("history");
    assert_eq!(history.len(), 50);
    let mut versions: Vec<u64> = history.iter().map(|e| e.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
    let newest = &history[0];
    let state = store.load().await.expect("load");
    assert_eq!(state.version, 50);
    assert_eq!(state.version, newest.version);
    assert_eq!(state.engaged, newest.engaged);
    assert_eq!(state.reason, newest.reason);
    assert_eq!(state.updated_by, newest.actor);
    assert_eq!(state.ticket, newest.ticket);
    assert_eq!(state.updated_at, newest.at);
}

/// A subscriber first gets the current state, then each change (engagement pushed).
pub async fn subscribers_see_changes(store: &dyn KillSwitchStore) {
    let mut sub = store.subscribe().await.expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("initial state in time")
        .expect("open");
    assert!(!first.engaged);
    store
        .engage(&engage_audit("push me"))
        .await
        .expect("engage");
    let pushed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sub.next().await {
                Some(s) if s.engaged => return s,
                Some(_) => continue,
                None => panic!("subscription closed"),
            }
        }
    })
    .await
    .expect("engagement pushed in time");
    assert_eq!(pushed.reason, "push me");
}

/// Expands into one named `#[tokio::test]` per behaviour of the contract.
///
/// `$setup` is an async fn returning `(Arc<dyn KillSwitchStore>, guard)`, where the
/// guard keeps whatever the store needs alive (a database, say) until the test ends.
///
/// ```
/// use std::sync::Arc;
/// use tradepulse_killswitch::{KillSwitchStore, MemoryKillSwitchStore};
/// async fn setup() -> (Arc<dyn KillSwitchStore>, ()) {
///     (Arc::new(MemoryKillSwitchStore::new()), ())
/// }
/// tradepulse_killswitch::conformance_tests!(setup);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@tests $setup;
            fresh_store_is_disengaged_at_version_zero,
            engage_then_disengage_round_trips,
            repeated_engage_stays_engaged_and_is_audited,
            versions_strictly_increase,
            history_is_newest_first_and_limited,
            one_audit_row_per_successful_call,
            subscribers_see_changes,
        );
        async fn __audited() -> (::std::sync::Arc<$crate::conformance::Audited>, impl Sized) {
            let (store, guard) = $setup().await;
            (::std::sync::Arc::new($crate::conformance::Audited(store)), guard)
        }
        $crate::conformance::audited_contract_tests!(__audited);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_changes_leave_state_equal_to_newest_event() {
            let (store, _guard) = $setup().await;
            $crate::conformance::concurrent_changes_leave_state_equal_to_newest_event(store).await;
        }
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $setup().await;
                $crate::conformance::$name(&*store).await;
            }
        )*
    };
}

// Four eyes (`failover_core::approvals`): each function expects a fresh store and the
// approvals it is subject to (nothing required yet). Actors differ per person; in
// PostgreSQL the suite's login is a service login, behind which the actor is the
// principal.

fn required() -> Vec<String> {
    vec!["kill-switch.disengage".to_owned()]
}

async fn require_and_engage(store: &dyn KillSwitchStore, approvals: &dyn ApprovalStore) {
    approvals
        .require(
            &required(),
            None,
            &Audit::new("ops:carol", "four eyes").with_authority(Authority::Operator),
        )
        .await
        .expect("an operator requires approval");
    store.engage(&engage_audit("stop")).await.expect("engage");
}

fn alice_disengages() -> Audit {
    Audit::new("ops:alice", "feed fixed")
        .with_ticket("INC-7")
        .with_authority(Authority::Supervisor)
}

async fn pending(store: &dyn KillSwitchStore, audit: &Audit) -> failover_core::PendingApproval {
    match store.disengage(audit).await {
        Err(Error::PendingApproval(p)) => p,
        other => panic!("a required disengage must wait for approval, got {other:?}"),
    }
}

/// A required disengage changes nothing and answers the pending request (the same
/// audit again answers the same request); the requester cannot approve it, an
/// operator cannot, another supervisor applies it in the requester's name.
pub async fn required_disengage_waits_for_a_second_supervisor(
    store: &dyn KillSwitchStore,
    approvals: &dyn ApprovalStore,
) {
    require_and_engage(store, approvals).await;
    let audit = alice_disengages();
    let request = pending(store, &audit).await;
    assert_eq!(request.action, "kill-switch.disengage");
    assert_eq!(
        pending(store, &audit).await.id,
        request.id,
        "the same request again"
    );
    assert!(
        store.load().await.expect("load").engaged,
        "pending changes nothing"
    );
    assert_eq!(store.history(10).await.expect("history").len(), 1);
    let listed = approvals.list(false).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, request.id);

    let own = approvals
        .approve(request.id, "ops:alice", Authority::Supervisor)
        .await
        .expect_err("self-approval");
    assert_eq!(own.code(), "self_approval", "{own}");
    let operator = approvals
        .approve(request.id, "ops:carol", Authority::Operator)
        .await
        .expect_err("an operator may not approve");
    assert_eq!(operator.code(), "forbidden", "{operator}");
    assert!(store.load().await.expect("load").engaged);

    let approved = approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("another supervisor approves");
    let state = store.load().await.expect("load");
    assert!(!state.engaged, "the approval applied the disengage");
    assert_eq!(approved.position, state.position);
    assert_eq!(state.updated_by, "ops:alice", "in the requester's name");
    let event = &store.history(1).await.expect("history")[0];
    assert_eq!(event.approval_id, Some(request.id));
    assert!(!event.break_glass);
    let trail: Vec<String> = approvals
        .events(Some(request.id), 10)
        .await
        .expect("events")
        .into_iter()
        .map(|e| format!("{} {}", e.event, e.actor))
        .collect();
    assert_eq!(trail, ["approved ops:bob", "requested ops:alice"]);
    let again = approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect_err("applied once");
    assert_eq!(again.code(), "not_pending", "{again}");
}

/// A tightening never waits: an engage while a disengage is pending applies at
/// once and closes the request; approving it then is refused as stale, naming the
/// engage.
pub async fn tightening_supersedes_pending_and_its_approval_is_stale(
    store: &dyn KillSwitchStore,
    approvals: &dyn ApprovalStore,
) {
    require_and_engage(store, approvals).await;
    let request = pending(store, &alice_disengages()).await;
    store
        .engage(&Audit::new("ops:dave", "second runaway").with_authority(Authority::Operator))
        .await
        .expect("a tightening applies at once");
    let all = approvals.list(true).await.expect("list");
    assert_eq!(all[0].status, "superseded");
    let err = approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), "stale_request", "{err}");
    assert!(err.to_string().contains("engage by ops:dave"), "{err}");
    assert!(store.load().await.expect("load").engaged);
}

/// Break-glass applies at once, marked in the event, and stays in the review until
/// another supervisor acknowledges it.
pub async fn break_glass_applies_at_once_and_waits_for_acknowledgement(
    store: &dyn KillSwitchStore,
    approvals: &dyn ApprovalStore,
) {
    require_and_engage(store, approvals).await;
    let audit = alice_disengages().breaking_glass();
    let applied = store.disengage(&audit).await.expect("break-glass applies");
    assert!(!applied.engaged);
    assert!(store.history(1).await.expect("history")[0].break_glass);
    let review = approvals.review().await.expect("review");
    assert_eq!(review.len(), 1);
    assert_eq!(review[0].id, audit.request_id());
    let own = approvals
        .acknowledge(audit.request_id(), "ops:alice", Authority::Supervisor)
        .await
        .expect_err("self-acknowledgement");
    assert_eq!(own.code(), "self_approval", "{own}");
    approvals
        .acknowledge(audit.request_id(), "ops:bob", Authority::Supervisor)
        .await
        .expect("acknowledged");
    assert!(approvals.review().await.expect("review").is_empty());
}

/// An expired request cannot be approved and is closed as expired.
pub async fn expired_request_cannot_be_approved(
    store: &dyn KillSwitchStore,
    approvals: &dyn ApprovalStore,
) {
    approvals
        .require(
            &required(),
            Some(Duration::from_secs(1)),
            &Audit::new("ops:carol", "four eyes, fast"),
        )
        .await
        .expect("require");
    store.engage(&engage_audit("stop")).await.expect("engage");
    let request = pending(store, &alice_disengages()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect_err("expired");
    assert_eq!(err.code(), "expired", "{err}");
    assert!(store.load().await.expect("load").engaged);
    assert_eq!(
        approvals.list(true).await.expect("list")[0].status,
        "expired"
    );
}

/// Waiving a required action takes two supervisors; afterwards a disengage applies
/// at once.
pub async fn waiving_a_required_action_needs_a_second_supervisor(
    store: &dyn KillSwitchStore,
    approvals: &dyn ApprovalStore,
) {
    require_and_engage(store, approvals).await;
    let waive = Audit::new("ops:alice", "drill over").with_ticket("CHG-1");
    let request = match approvals.waive(&required(), &waive).await {
        Err(failover_core::ApprovalError::PendingApproval(p)) => p,
        other => panic!("waiving while required must wait, got {other:?}"),
    };
    let own = approvals
        .approve(request.id, "ops:alice", Authority::Supervisor)
        .await
        .expect_err("self-approval");
    assert_eq!(own.code(), "self_approval", "{own}");
    approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("another supervisor approves the waiver");
    let policy = approvals.policy().await.expect("policy");
    assert!(policy
        .iter()
        .all(|p| p.action != "kill-switch.disengage" || !p.required));
    store
        .disengage(&alice_disengages())
        .await
        .expect("no longer required: applies at once");
}

/// Runs the four-eyes suite: `$setup` is an async fn returning
/// `(Arc<dyn KillSwitchStore>, Arc<dyn ApprovalStore>, guard)`, the store subject to
/// the approvals.
#[macro_export]
macro_rules! approval_conformance_tests {
    ($setup:path) => {
        $crate::approval_conformance_tests!(@tests $setup;
            required_disengage_waits_for_a_second_supervisor,
            tightening_supersedes_pending_and_its_approval_is_stale,
            break_glass_applies_at_once_and_waits_for_acknowledgement,
            expired_request_cannot_be_approved,
            waiving_a_required_action_needs_a_second_supervisor,
        );
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, approvals, _guard) = $setup().await;
                $crate::conformance::$name(&*store, &*approvals).await;
            }
        )*
    };
}
