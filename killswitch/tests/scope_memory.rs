//! The in-memory scope store runs the whole scope conformance suite, and loses
//! changes the way an asynchronous failover does.

use std::sync::Arc;
use tradepulse_killswitch::scope::conformance::ScopeFixture;
use tradepulse_killswitch::{
    Audit, Authority, FeedSource, MemoryKillSwitchStore, MemoryScopeStore, ScopeMode, ScopePath,
    ScopeStore,
};

async fn setup() -> (ScopeFixture, ()) {
    let root = Arc::new(MemoryKillSwitchStore::new());
    let approvals = Arc::new(failover_core::approvals::MemoryApprovals::new());
    let store = MemoryScopeStore::with_approvals(root.clone(), approvals.clone());
    (
        ScopeFixture {
            store,
            root,
            approvals,
        },
        (),
    )
}

tradepulse_killswitch::scope_conformance_tests!(setup);

/// A lost relaxation of a desk returns its leaves to the stricter mode, and a
/// reader holding the lost position learns that the store no longer has it.
#[tokio::test]
async fn lossy_failover_returns_a_desk_to_the_stricter_mode() {
    let store = MemoryScopeStore::new(Arc::new(MemoryKillSwitchStore::new()));
    let ops = |r: &str| Audit::new("ops:olivia", r).with_authority(Authority::Operator);
    for path in ["acme", "acme/eq", "acme/eq/mm-1"] {
        store
            .create_scope(&ScopePath::parse(path).unwrap(), &ops("register"))
            .await
            .unwrap();
    }
    store
        .set_scope_mode("acme/eq", ScopeMode::CancelOnly, &ops("desk stop"))
        .await
        .unwrap();
    let relaxed = store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::Normal,
            &Audit::new("ops:sam", "resume").with_ticket("CHG-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.effective("acme/eq/mm-1").await.unwrap().effective,
        ScopeMode::Normal
    );
    let mut sub = store.subscribe().await.unwrap();
    assert_eq!(sub.next().await.unwrap().position, relaxed.position);
    let lost = store.simulate_lossy_failover(1);
    assert_eq!(lost, vec![relaxed.position]);
    let leaf = store.effective("acme/eq/mm-1").await.unwrap();
    assert_eq!(leaf.effective, ScopeMode::CancelOnly);
    assert!(!store.contains(relaxed.position).await.unwrap());
    let resynced = sub.next().await.unwrap();
    assert!(
        resynced.position < relaxed.position,
        "resynced to what remains"
    );
    // The next change is numbered above the lost one.
    let next = store
        .set_scope_mode("acme/eq", ScopeMode::Halted, &ops("again"))
        .await
        .unwrap();
    assert!(next.position > relaxed.position);
    assert_eq!(store.changes_since(0).await.unwrap().version, 5);
}
