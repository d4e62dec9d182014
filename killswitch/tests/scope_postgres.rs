//! The PostgreSQL scope store runs the whole scope conformance suite against a real
//! server (one shared cluster, a fresh database per test), and what only PostgreSQL
//! has: a competing change held open in another transaction, the Merkle audit log and
//! approvals applied through the database. The guarantees every PostgreSQL store
//! gives (migrations, the append-only trail, outages, push, failovers, pgbouncer) are
//! in `scope_suite.rs`, which runs failover-core's shared suite.

mod support;

use std::sync::Arc;
use tradepulse_killswitch::scope::conformance::ScopeFixture;
use tradepulse_killswitch::{
    Audit, Authority, PostgresKillSwitchStore, PostgresScopeStore, ScopeMode, ScopePath, ScopeStore,
};
use tradepulse_testkit::Cluster;

/// A migrated scope store and kill switch over `dsn` (one database).
async fn stores(dsn: &str) -> (PostgresScopeStore, PostgresKillSwitchStore) {
    let root = support::store(dsn).await;
    let scopes = PostgresScopeStore::from_pool(root.pool().clone());
    scopes.migrate().await.expect("migrate");
    (scopes, root)
}

async fn setup() -> (ScopeFixture, Arc<Cluster>) {
    let (cluster, db) = support::shared_primary().await;
    let (scopes, root) = stores(&cluster.primary().dsn(&db)).await;
    let approvals = failover_core::approvals::PostgresApprovals::new(root.pool().clone());
    (
        ScopeFixture {
            store: Arc::new(scopes),
            root: Arc::new(root),
            approvals: Arc::new(approvals),
        },
        cluster,
    )
}

tradepulse_killswitch::scope_conformance_tests!(setup);

fn operator(reason: &str) -> Audit {
    Audit::new("ops:olivia", reason).with_authority(Authority::Operator)
}

async fn desk(store: &PostgresScopeStore) {
    for path in ["acme", "acme/eq", "acme/eq/mm-1"] {
        store
            .create_scope(&ScopePath::parse(path).unwrap(), &operator("register"))
            .await
            .expect("create");
    }
}

/// A relaxation waits for a competing tightening held open in another transaction,
/// then refuses naming it; the tightening stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxation_waits_for_a_held_tightening_then_refuses_naming_it() {
    use tradepulse_killswitch::scope::Error;
    use tradepulse_testkit::Held;
    let (cluster, db) = support::shared_primary().await;
    let dsn = cluster.primary().dsn(&db);
    let (store, _root) = stores(&dsn).await;
    let store = Arc::new(store);
    desk(&store).await;
    let seen = store
        .set_scope_mode("acme/eq", ScopeMode::CancelOnly, &operator("desk stop"))
        .await
        .unwrap();
    // Dave re-asserts the desk's stop (a tightening) in a transaction left open.
    let stop_by_dave = "SELECT * FROM scope_apply(gen_random_uuid(), 'set_mode', 'acme/eq', \
                        'CANCEL_ONLY', 'second incident', 'ops:dave', NULL)";
    let s = store.clone();
    let position = seen.position;
    let refused = Held::begin(&dsn, stop_by_dave)
        .await
        .race(async move {
            s.set_scope_mode(
                "acme/eq",
                ScopeMode::Normal,
                &Audit::new("ops:sam", "resume")
                    .with_ticket("CHG-1")
                    .expecting(position),
            )
            .await
        })
        .await
        .expect_err("the scope moved while the relaxation waited");
    match &refused {
        Error::Refused(failover_core::Refusal::PreconditionFailed { current, .. }) => {
            assert_eq!(current.actor, "ops:dave");
            assert_eq!(current.what, "set_mode acme/eq CANCEL_ONLY -> CANCEL_ONLY");
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }
    let now = store.scope("acme/eq").await.unwrap().unwrap();
    assert_eq!(now.mode, ScopeMode::CancelOnly, "nothing was relaxed");
    assert_eq!(now.reason, "second incident");
    assert_eq!(
        store.effective("acme/eq/mm-1").await.unwrap().effective,
        ScopeMode::CancelOnly
    );
}

/// Scope events are entries of the tamper-evident audit log: the export verifies and
/// holds them with their canonical entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_events_are_entries_of_the_audit_log() {
    let (cluster, db) = support::shared_primary().await;
    let (store, root) = stores(&cluster.primary().dsn(&db)).await;
    desk(&store).await;
    let halted = store
        .set_scope_mode("acme/eq", ScopeMode::Halted, &operator("desk \"eq\" ✓"))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    failover_core::audit_log::write_log(root.pool(), &mut bytes, |_, _| {})
        .await
        .expect("export the log");
    let verified = failover_core::audit_log::verify_export(&bytes[..], |_| {})
        .unwrap_or_else(|f| panic!("the export verifies: {f:?}"));
    assert_eq!(verified.head.size, 4, "three creations and one halt");
    let halt = format!("\"position\":{}", halted.position.0);
    let text = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .find(|l| l.contains("\"control\":\"scope\"") && l.contains(&halt))
        .expect("the halt is in the log")
        .to_owned();
    assert!(text.contains("\"path\":\"acme/eq\""), "{text}");
    assert!(text.contains("\"to_mode\":\"HALTED\""), "{text}");
    assert!(text.contains("desk \\\"eq\\\" ✓"), "{text}");
}

/// An approval request of a scope is applied through the approvals'
/// `tradepulse_approve` (what `safetyctl approvals approve` calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_applies_a_scope_relaxation_through_tradepulse_approve() {
    use failover_core::ApprovalStore;
    let (cluster, db) = support::shared_primary().await;
    let (store, root) = stores(&cluster.primary().dsn(&db)).await;
    desk(&store).await;
    let approvals = failover_core::approvals::PostgresApprovals::new(root.pool().clone());
    approvals
        .require(&["scope.relax".to_owned()], None, &operator("four eyes"))
        .await
        .unwrap();
    store
        .set_scope_mode("acme/eq", ScopeMode::ReduceOnly, &operator("limit"))
        .await
        .unwrap();
    let request = match store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::Normal,
            &Audit::new("ops:alice", "fixed").with_ticket("INC-1"),
        )
        .await
    {
        Err(tradepulse_killswitch::scope::Error::PendingApproval(p)) => p,
        other => panic!("expected pending, got {other:?}"),
    };
    let listed = approvals.list(false).await.unwrap();
    assert_eq!(listed[0].control, "scope");
    assert_eq!(listed[0].target, "acme/eq");
    let approved = approvals
        .approve(request.id, "ops:bob", Authority::Supervisor)
        .await
        .expect("approved");
    let state = store.scope("acme/eq").await.unwrap().unwrap();
    assert_eq!(state.mode, ScopeMode::Normal);
    assert_eq!(state.position, approved.position);
}
