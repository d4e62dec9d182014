//! The PostgreSQL scope store runs the whole scope conformance suite against a real
//! server (one shared cluster, a fresh database per test), and what only PostgreSQL
//! has: a competing change held open in another transaction, the Merkle audit log,
//! and a lossy asynchronous failover.

mod support;

use std::sync::Arc;
use std::time::Duration;
use tradepulse_killswitch::scope::conformance::ScopeFixture;
use tradepulse_killswitch::{
    Audit, Authority, FeedSource, PostgresKillSwitchStore, PostgresScopeStore, ScopeMode,
    ScopePath, ScopeStore,
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
    let snapshot = failover_core::audit_log::read_log(root.pool(), |_, _| {})
        .await
        .expect("read the log");
    let mut bytes = Vec::new();
    for line in &snapshot.lines {
        serde_json::to_writer(&mut bytes, line).unwrap();
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(snapshot.head.line().as_bytes());
    bytes.push(b'\n');
    let verified = failover_core::audit_log::verify_export(&bytes[..], |_| {})
        .unwrap_or_else(|f| panic!("the export verifies: {f:?}"));
    assert_eq!(verified.head.size, 4, "three creations and one halt");
    let entry = snapshot
        .lines
        .iter()
        .find(|l| l.record.control == "scope" && l.record.position == halted.position.0)
        .expect("the halt is in the log");
    let text = entry.entry.as_deref().expect("its canonical entry");
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

/// A lost relaxation of a desk (committed on the primary, never replicated) returns
/// its leaves to the stricter mode on the promoted replica; the lost position is no
/// longer in the history, and the next change is numbered above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_failover_lost_relaxation_returns_the_desk_to_the_stricter_mode() {
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    let dsn = cluster.multi_host_dsn(&db);
    let (store, _root) = stores(&dsn).await;
    desk(&store).await;
    store
        .set_scope_mode("acme/eq", ScopeMode::CancelOnly, &operator("desk stop"))
        .await
        .unwrap();
    cluster
        .wait_replica_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    cluster.replica().unwrap().stop().await.unwrap();
    let lost = store
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
    cluster.primary().kill9().await.unwrap();
    let replica = cluster.replica().unwrap();
    replica.start().await.unwrap();
    replica.promote().await.unwrap();
    // The store follows the promoted replica (multi-host DSN) within its bounds.
    let start = std::time::Instant::now();
    let leaf = loop {
        match store.effective("acme/eq/mm-1").await {
            Ok(leaf) => break leaf,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the promoted replica did not answer within 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        leaf.effective,
        ScopeMode::CancelOnly,
        "the relaxation was lost"
    );
    assert_eq!(
        leaf.decided_by,
        tradepulse_killswitch::DecidedBy::Scope(ScopePath::parse("acme/eq").unwrap())
    );
    assert!(!store.contains(lost.position).await.unwrap());
    let next = store
        .set_scope_mode("acme/eq", ScopeMode::Halted, &operator("again"))
        .await
        .unwrap();
    assert!(next.position > lost.position);
    assert!(next.position.timeline() > lost.position.timeline());
}

/// The scope store as failover-core's shared store suite drives it: a tightening
/// halts scope `suite` (created on first use), a relaxation steps it down.
struct ScopeSuite;

#[async_trait::async_trait]
impl tradepulse_testkit::suite::SuiteStore for ScopeSuite {
    type Store = PostgresScopeStore;
    type Error = tradepulse_killswitch::scope::Error;
    const AUDIT_TABLE: &'static str = "scope_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<failover_core::Position, Self::Error> {
        match store
            .create_scope(&ScopePath::parse("suite").unwrap(), &operator("suite"))
            .await
        {
            Ok(_) | Err(tradepulse_killswitch::scope::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(store
            .set_scope_mode("suite", ScopeMode::Halted, &operator(&format!("halt {n}")))
            .await?
            .position)
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<failover_core::Position, Self::Error> {
        let audit = Audit::new("suite:ops", format!("resume {n}")).with_ticket("CHG-1");
        Ok(store
            .set_scope_mode("suite", ScopeMode::CancelOnly, &audit)
            .await?
            .position)
    }

    fn is_schema_missing(error: &Self::Error) -> bool {
        matches!(
            error,
            tradepulse_killswitch::scope::Error::SchemaMissing { .. }
        )
    }

    fn is_unavailable(error: &Self::Error) -> bool {
        matches!(
            error,
            tradepulse_killswitch::scope::Error::Unavailable { .. }
        )
    }
}

#[tokio::test]
async fn suite_scope_events_are_append_only() {
    tradepulse_testkit::suite::audit_trail_is_append_only::<ScopeSuite>(
        tradepulse_testkit::suite::Route::Direct,
    )
    .await;
}

#[tokio::test]
async fn suite_unmigrated_database_says_run_migrations() {
    tradepulse_testkit::suite::unmigrated_database_says_run_migrations::<ScopeSuite>(
        tradepulse_testkit::suite::Route::Direct,
    )
    .await;
}

#[tokio::test]
async fn suite_concurrent_migrations_apply_once() {
    tradepulse_testkit::suite::concurrent_migrations_apply_once::<ScopeSuite>(
        tradepulse_testkit::suite::Route::Direct,
    )
    .await;
}
