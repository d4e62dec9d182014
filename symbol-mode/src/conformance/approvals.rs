//! Four eyes (`failover_core::approvals`): each function expects a fresh store and the
//! approvals it is subject to (nothing required yet). Actors differ per person; in
//! PostgreSQL the suite's login is a service login, behind which the actor is the
//! principal.

use super::{known, ops};
use crate::{Audit, AuditEvent, Authority, Error, SymbolMode, SymbolModeStore, Throttle};
use SymbolMode::{CancelOnly, HardHalt, Normal, SoftHalt};

fn supervisor(actor: &str) -> Audit {
    Audit::new(actor, "recovered")
        .with_ticket("INC-9")
        .with_authority(Authority::Supervisor)
}

fn pending_of(
    outcome: Result<failover_core::Applied<AuditEvent>, Error>,
) -> failover_core::PendingApproval {
    match outcome {
        Err(Error::PendingApproval(p)) => p,
        other => panic!("a required relaxation must wait for approval, got {other:?}"),
    }
}

/// Every relaxation whose action is required waits and changes nothing; another
/// supervisor's approval applies exactly the command asked for (the mode, the
/// global mode, the withdrawals halt, the throttle, new strategy activations), the
/// requester's is refused. Each applied event names the request it was approved
/// through and did not break glass.
pub async fn required_relaxations_wait_for_a_second_supervisor(
    store: &dyn SymbolModeStore,
    approvals: &dyn failover_core::ApprovalStore,
) {
    known(store, &["BTC-USD"]).await;
    approvals
        .require(
            &[
                "mode.relax".to_owned(),
                "global-mode.relax".to_owned(),
                "withdrawals.lift".to_owned(),
                "throttle.relax".to_owned(),
                "strategies.enable-new".to_owned(),
            ],
            None,
            &ops("four eyes").with_authority(Authority::Operator),
        )
        .await
        .expect("an operator requires approval");
    store
        .set_global_mode(HardHalt, &ops("x"))
        .await
        .expect("halt");
    store
        .set_symbol_mode("BTC-USD", SoftHalt, &ops("x"))
        .await
        .expect("halt");
    store.withdrawals_halt(true, &ops("x")).await.expect("halt");
    store
        .new_strategies_halt(true, &ops("x"))
        .await
        .expect("halt");
    let five = Throttle::new(5, 5).expect("limit");
    let fifty = Throttle::new(50, 100).expect("limit");
    store
        .set_throttle("BTC-USD", Some(five), &ops("x"))
        .await
        .expect("throttle");
    let before = store.history(100).await.expect("history").len();

    let alice = || supervisor("ops:alice");
    let global = pending_of(store.set_global_mode(CancelOnly, &alice()).await);
    assert_eq!(global.action, "global-mode.relax");
    let mode = pending_of(store.set_symbol_mode("BTC-USD", CancelOnly, &alice()).await);
    assert_eq!(mode.action, "mode.relax");
    let lift = pending_of(store.withdrawals_halt(false, &alice()).await);
    assert_eq!(lift.action, "withdrawals.lift");
    let raise = pending_of(store.set_throttle("BTC-USD", Some(fifty), &alice()).await);
    assert_eq!(raise.action, "throttle.relax");
    let enable = pending_of(store.new_strategies_halt(false, &alice()).await);
    assert_eq!(enable.action, "strategies.enable-new");
    assert_eq!(store.history(100).await.expect("history").len(), before);
    assert_eq!(store.venue().await.expect("venue").global, HardHalt);

    let own = approvals
        .approve(mode.id, "ops:alice", Authority::Supervisor)
        .await
        .expect_err("self-approval");
    assert_eq!(own.code(), "self_approval", "{own}");
    assert!(store.venue().await.expect("venue").new_strategies_disabled);
    for p in [&global, &mode, &lift, &raise, &enable] {
        approvals
            .approve(p.id, "ops:bob", Authority::Supervisor)
            .await
            .unwrap_or_else(|e| panic!("approving {}: {e}", p.what));
    }
    let venue = store.venue().await.expect("venue");
    assert_eq!(venue.global, CancelOnly);
    assert!(!venue.withdrawals_halted);
    assert!(!venue.new_strategies_disabled);
    let own_mode = store.symbol_state("BTC-USD").await.expect("state");
    assert_eq!(own_mode.map(|s| s.mode), Some(CancelOnly));
    let throttle = store
        .throttles()
        .await
        .expect("throttles")
        .into_iter()
        .find(|t| t.symbol == "BTC-USD")
        .and_then(|t| t.limit);
    assert_eq!(throttle, Some(fifty));
    let events = store.history(5).await.expect("history");
    assert!(events.iter().all(|e| e.actor == "ops:alice"), "{events:?}");
    let mut approved: Vec<_> = events.iter().map(|e| e.approval_id).collect();
    let mut asked: Vec<_> = [&global, &mode, &lift, &raise, &enable]
        .iter()
        .map(|p| Some(p.id))
        .collect();
    approved.sort();
    asked.sort();
    assert_eq!(approved, asked, "each event names its approval request");
    assert!(events.iter().all(|e| !e.break_glass), "{events:?}");
}

/// A supervisor who breaks glass relaxes at once although approval is required:
/// the event says so (and names no approval), in the answer, in the audit trail and
/// when the same request is sent again; a relaxation approved by a second
/// supervisor names its request and breaks no glass.
pub async fn break_glass_applies_at_once_and_its_event_says_so(
    store: &dyn SymbolModeStore,
    approvals: &dyn failover_core::ApprovalStore,
) {
    approvals
        .require(
            &[
                "withdrawals.lift".to_owned(),
                "strategies.enable-new".to_owned(),
            ],
            None,
            &ops("four eyes"),
        )
        .await
        .expect("require");
    store.withdrawals_halt(true, &ops("x")).await.expect("halt");
    store
        .new_strategies_halt(true, &ops("x"))
        .await
        .expect("halt");
    let glass = supervisor("ops:alice").breaking_glass();
    let lifted = store
        .withdrawals_halt(false, &glass)
        .await
        .expect("break glass applies at once");
    assert!(lifted.break_glass, "{lifted:?}");
    assert_eq!(lifted.approval_id, None);
    assert!(!store.venue().await.expect("venue").withdrawals_halted);
    let trail = store.history(1).await.expect("history").remove(0);
    assert_eq!(trail.position, lifted.position);
    assert!(trail.break_glass, "{trail:?}");
    assert_eq!(trail.approval_id, None);
    let again = store.withdrawals_halt(false, &glass).await.expect("replay");
    assert!(again.replayed);
    assert!(
        again.break_glass,
        "a replay answers the event as it is: {again:?}"
    );

    let enable = pending_of(
        store
            .new_strategies_halt(false, &supervisor("ops:alice"))
            .await,
    );
    approvals
        .approve(enable.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("approve");
    assert!(!store.venue().await.expect("venue").new_strategies_disabled);
    let approved = store.history(1).await.expect("history").remove(0);
    assert_eq!(
        approved.command,
        crate::Command::NewStrategiesHalt { on: false }
    );
    assert_eq!(approved.approval_id, Some(enable.id));
    assert!(!approved.break_glass);
}

/// A tightening of a target never waits and closes the relaxation pending against
/// it; approving that one is refused as stale. A relaxation of another target
/// stays pending.
pub async fn tightening_supersedes_only_its_own_target(
    store: &dyn SymbolModeStore,
    approvals: &dyn failover_core::ApprovalStore,
) {
    known(store, &["BTC-USD", "ETH-USD"]).await;
    approvals
        .require(&["mode.relax".to_owned()], None, &ops("four eyes"))
        .await
        .expect("require");
    for s in ["BTC-USD", "ETH-USD"] {
        store
            .set_symbol_mode(s, SoftHalt, &ops("x"))
            .await
            .expect("halt");
    }
    let btc = pending_of(
        store
            .set_symbol_mode("BTC-USD", Normal, &supervisor("ops:alice"))
            .await,
    );
    let eth = pending_of(
        store
            .set_symbol_mode("ETH-USD", Normal, &supervisor("ops:alice"))
            .await,
    );
    store
        .set_symbol_mode(
            "BTC-USD",
            HardHalt,
            &Audit::new("ops:dave", "worse").with_authority(Authority::Operator),
        )
        .await
        .expect("a tightening applies at once");
    let err = approvals
        .approve(btc.id, "ops:bob", Authority::Supervisor)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), "stale_request", "{err}");
    assert!(err.to_string().contains("ops:dave"), "{err}");
    approvals
        .approve(eth.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("the other target's request is still pending");
    let btc_mode = store.symbol_state("BTC-USD").await.expect("state");
    assert_eq!(btc_mode.map(|s| s.mode), Some(HardHalt));
}
