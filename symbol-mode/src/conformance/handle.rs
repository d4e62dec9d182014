//! The contract of the hot-path [`SymbolModes`] handle over a store, and of the
//! store's push subscription it follows.

use super::{known, ops, ticketed, WAIT};
use crate::{
    ModeSnapshot, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig, Throttle,
    TradingAction,
};
use std::sync::Arc;
use std::time::Duration;
use SymbolMode::{CancelOnly, Normal, SoftHalt};

/// For every (global, symbol) pair the effective mode — from the store's snapshot
/// and from a [`SymbolModes`] handle — is the more severe of the two.
pub async fn effective_mode_is_the_more_severe_for_every_pair(store: Arc<dyn SymbolModeStore>) {
    known(&*store, &["SYM-0", "SYM-1", "SYM-2", "SYM-3"]).await;
    for (i, mode) in SymbolMode::ALL.into_iter().enumerate() {
        store
            .set_symbol_mode(&format!("SYM-{i}"), mode, &ops("pair setup"))
            .await
            .expect("set");
    }
    let handle = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    assert!(handle.ready(WAIT).await, "handle loads");
    for global in SymbolMode::ALL {
        let event = store
            .set_global_mode(global, &ops("global step"))
            .await
            .expect("tighten global");
        let snapshot = ModeSnapshot::from_delta(&store.changes_since(0).await.expect("changes"));
        assert!(
            handle.wait_for_version(event.version, WAIT).await,
            "handle catches up"
        );
        for (i, own) in SymbolMode::ALL.into_iter().enumerate() {
            let symbol = format!("SYM-{i}");
            let expected = global.max(own);
            assert_eq!(
                snapshot.effective(&symbol),
                expected,
                "global {global}, symbol {own}"
            );
            assert_eq!(
                handle.mode(&symbol),
                expected,
                "global {global}, symbol {own}"
            );
            for action in TradingAction::ALL {
                assert_eq!(handle.allows(&symbol, action), expected.allows(action));
            }
        }
        assert_eq!(
            handle.mode("NEVER-SET"),
            global,
            "unknown symbols follow the global mode"
        );
    }
}

/// A handle admits a throttled symbol's burst, refuses the next order with when
/// to retry, counts the refusal, and admits freely once the throttle is cleared;
/// other symbols are never throttled.
pub async fn handle_admits_the_burst_then_throttles(store: Arc<dyn SymbolModeStore>) {
    known(&*store, &["BTC-USD", "ETH-USD"]).await;
    let handle = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    assert!(handle.ready(WAIT).await);
    let gate = handle.gate("BTC-USD");
    assert_eq!(gate.admit(), Ok(()), "no limit yet");
    let event = store
        .set_throttle(
            "BTC-USD",
            Some(Throttle::new(5, 5).expect("limit")),
            &ops("throttle"),
        )
        .await
        .expect("throttle");
    assert!(handle.wait_for_version(event.version, WAIT).await);
    let mut reader = handle.reader();
    for i in 0..5 {
        assert_eq!(reader.admit("BTC-USD"), Ok(()), "order {i} of the burst");
    }
    let refused = handle.admit("BTC-USD").expect_err("the sixth is throttled");
    assert!(
        refused.retry_after > Duration::from_millis(100)
            && refused.retry_after <= Duration::from_millis(200),
        "{refused:?}"
    );
    assert!(gate.admit().is_err(), "the gate shares the symbol's bucket");
    assert_eq!(handle.admit("ETH-USD"), Ok(()));
    assert_eq!(handle.status().throttled_symbols, 1);
    assert_eq!(
        handle.throttle_refusals(),
        vec![("BTC-USD".to_owned(), 2)],
        "refusals counted per symbol"
    );
    let event = store
        .set_throttle("BTC-USD", None, &ticketed("clear"))
        .await
        .expect("clear");
    assert!(handle.wait_for_version(event.version, WAIT).await);
    for _ in 0..100 {
        assert_eq!(handle.admit("BTC-USD"), Ok(()));
        assert_eq!(gate.admit(), Ok(()));
    }
}

/// A subscriber first gets the current position, then each newer one.
pub async fn subscribers_see_new_versions(store: &dyn SymbolModeStore) {
    known(store, &["A"]).await;
    let start = store.venue().await.expect("venue").position;
    let mut sub = store.subscribe().await.expect("subscribe");
    let first = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(first.position, start);
    let event = store
        .set_symbol_mode("A", SoftHalt, &ops("push"))
        .await
        .expect("set");
    let pushed = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("pushed in time")
        .expect("open");
    assert_eq!(pushed.position, event.position);
    assert!(pushed.position > first.position);
}

/// A [`SymbolModes`] handle loads, follows every kind of change, and answers the
/// action matrix for the effective mode.
pub async fn handle_follows_the_store(store: Arc<dyn SymbolModeStore>) {
    known(&*store, &["BTC-USD"]).await;
    store
        .set_symbol_mode("BTC-USD", CancelOnly, &ops("before start"))
        .await
        .expect("set");
    let handle = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    assert!(handle.ready(WAIT).await);
    assert_eq!(handle.mode("BTC-USD"), CancelOnly);
    assert!(handle.allows("BTC-USD", TradingAction::ReduceOnlyAmend));
    let refusal = handle
        .check("BTC-USD", TradingAction::Place)
        .expect_err("no new orders");
    assert_eq!(
        (refusal.mode, refusal.cause),
        (CancelOnly, crate::Cause::Symbol)
    );
    assert!(refusal.to_string().contains("CANCEL_ONLY"), "{refusal}");
    assert_eq!(handle.mode("ETH-USD"), Normal);
    assert!(!handle.withdrawals_halted());

    let event = store
        .set_global_mode(SoftHalt, &ops("global"))
        .await
        .expect("global");
    assert!(handle.wait_for_version(event.version, WAIT).await);
    assert_eq!(handle.mode("ETH-USD"), SoftHalt);
    let refusal = handle
        .check("ETH-USD", TradingAction::Matching)
        .expect_err("no matching");
    assert_eq!(refusal.cause, crate::Cause::Global);
    let event = store
        .withdrawals_halt(true, &ops("custody"))
        .await
        .expect("halt");
    assert!(handle.wait_for_version(event.version, WAIT).await);
    assert!(handle.withdrawals_halted());
    let event = store
        .set_symbol_mode("BTC-USD", Normal, &ticketed("resume"))
        .await
        .expect("resume");
    assert!(handle.wait_for_version(event.version, WAIT).await);
    assert_eq!(
        handle.mode("BTC-USD"),
        SoftHalt,
        "still under the global SOFT_HALT"
    );
    let status = handle.status();
    assert_eq!(status.version, event.version);
    assert_eq!(status.restricted_symbols, 0);
    // `operational` once reads and push both work.
    let deadline = std::time::Instant::now() + WAIT;
    while handle.health().status != crate::ComponentStatus::Operational {
        assert!(
            std::time::Instant::now() < deadline,
            "never operational: {:?}",
            handle.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.health().name, crate::HEALTH_COMPONENT);
}

/// A handle answers whether a new strategy may be activated: no before the first
/// load (fail closed), yes while new activations run, no once they are halted,
/// yes again once a supervisor enables them — from the handle and from a
/// per-thread reader alike.
pub async fn handle_answers_whether_a_strategy_may_be_activated(store: Arc<dyn SymbolModeStore>) {
    let handle = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    let mut reader = handle.reader();
    assert!(handle.ready(WAIT).await, "handle loads");
    assert!(handle.may_activate_strategy());
    assert!(reader.may_activate_strategy());
    let halted = store
        .new_strategies_halt(true, &ops("runaway strategies"))
        .await
        .expect("halt");
    assert!(handle.wait_for_version(halted.version, WAIT).await);
    assert!(!handle.may_activate_strategy(), "halted");
    assert!(!reader.may_activate_strategy(), "halted, per reader");
    assert!(handle.status().new_strategies_disabled);
    assert!(
        handle.allows("ANY", TradingAction::Place),
        "orders of running strategies go on"
    );
    let enabled = store
        .new_strategies_halt(false, &ticketed("resume").expecting(halted.position))
        .await
        .expect("enable");
    assert!(handle.wait_for_version(enabled.version, WAIT).await);
    assert!(handle.may_activate_strategy());
    assert!(reader.may_activate_strategy());
}
