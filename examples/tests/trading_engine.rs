//! The trading-engine example's scripted incident gives the same summary in memory
//! and on a real PostgreSQL.

use tradepulse_examples::trading_engine::{run, Stores, Summary};
use tradepulse_testkit::{fast_settings, own_primary};

fn expected() -> Summary {
    Summary {
        accepted: 16,
        refused_by_kill_switch: 1,
        refused_by_mode: 2,
        cancels: 1,
        cancelled_by_cancel_all: 1,
        cancelled_by_kill_switch: 2,
        fills_by_engine: [("engine-a".to_string(), 3), ("engine-b".to_string(), 4)].into(),
        stale_fills_refused: 1,
        // 3 symbol registrations at the engine's start, then the incident's 7 commands.
        audit_events: 10,
    }
}

#[tokio::test]
async fn in_memory_incident_summary() {
    let mut lines = Vec::new();
    let summary = run(Stores::memory(), |l| lines.push(l)).await.unwrap();
    assert_eq!(summary, expected());
    let text = lines.join("\n");
    assert!(
        text.contains("REFUSED: FENCING_TOKEN: token 1 is older than 2"),
        "{text}"
    );
    assert!(
        text.contains("halt pushed: cancelling all 2 working orders"),
        "{text}"
    );
}

#[tokio::test]
async fn postgres_incident_summary_is_the_same() {
    let (cluster, db) = own_primary().await.unwrap();
    let settings = fast_settings(&cluster.primary().dsn(&db)).build().unwrap();
    let stores = Stores::postgres(settings).await.unwrap();
    let summary = run(stores, |_| {}).await.unwrap();
    assert_eq!(summary, expected());
}
