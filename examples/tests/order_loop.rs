//! The order loop example's summary, in memory and on a real PostgreSQL.

use killswitch::{KillSwitchStore, MemoryKillSwitchStore, PostgresKillSwitchStore};
use std::sync::Arc;
use tradepulse_examples::order_loop::run;

fn check(summary: &tradepulse_examples::order_loop::Summary) {
    // 90 orders: engaged at order 30, resumed at order 60.
    assert_eq!(summary.rejected, 30, "{summary:?}");
    assert_eq!(summary.accepted, 60, "{summary:?}");
    assert_eq!(summary.cancelled_on_halt, 29, "{summary:?}");
    let actions: Vec<&str> = summary.audit.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(actions, ["disengage", "engage"]);
}

#[tokio::test]
async fn in_memory_run_halts_cancels_and_resumes() {
    let mut lines = Vec::new();
    let summary = run(Arc::new(MemoryKillSwitchStore::new()), 90, |l| {
        lines.push(l)
    })
    .await
    .unwrap();
    check(&summary);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cancelling 29 working orders")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn postgres_run_gives_the_same_summary() {
    let cluster = tradepulse_testkit::Cluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let store = PostgresKillSwitchStore::from_lookup(|k| {
        (k == "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN").then(|| dsn.clone())
    })
    .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn KillSwitchStore> = Arc::new(store);
    let summary = run(store, 90, |_| {}).await.unwrap();
    check(&summary);
}
