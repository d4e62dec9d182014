//! The Postgres lease store and fenced writes run the whole conformance suites
//! against a real server.

mod support;

use std::sync::Arc;
use tradepulse_fencing::conformance::FencedLog;
use tradepulse_fencing::LeaseFencer;
use tradepulse_testkit::Cluster;

async fn setup() -> (Arc<dyn LeaseFencer>, Arc<Cluster>) {
    let (cluster, db) = support::shared_primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    (Arc::new(store), cluster)
}

tradepulse_fencing::conformance_tests!(setup);

async fn log_setup() -> (Arc<dyn FencedLog>, Arc<Cluster>) {
    let (cluster, db) = support::shared_primary().await;
    let log = support::PgFencedLog::new(&cluster.primary().dsn(&db)).await;
    (Arc::new(log), cluster)
}

tradepulse_fencing::fence_conformance_tests!(log_setup);
