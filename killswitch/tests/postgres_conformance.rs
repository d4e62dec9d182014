//! The Postgres store runs the whole conformance suite against a real server (one
//! shared cluster, a fresh database per test).

mod support;

use std::sync::Arc;
use tradepulse_killswitch::KillSwitchStore;
use tradepulse_testkit::Cluster;

async fn setup() -> (Arc<dyn KillSwitchStore>, Arc<Cluster>) {
    let (cluster, db) = support::shared_primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    (Arc::new(store), cluster)
}

tradepulse_killswitch::conformance_tests!(setup);

async fn approvals_setup() -> (
    Arc<dyn KillSwitchStore>,
    Arc<dyn failover_core::ApprovalStore>,
    Arc<Cluster>,
) {
    let (cluster, db) = support::shared_primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    let approvals = failover_core::approvals::PostgresApprovals::new(store.pool().clone());
    (Arc::new(store), Arc::new(approvals), cluster)
}

tradepulse_killswitch::approval_conformance_tests!(approvals_setup);
