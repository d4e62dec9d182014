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
