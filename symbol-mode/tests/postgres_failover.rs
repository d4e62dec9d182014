//! Symbol modes through a primary failure, on a real primary + streaming replica: the
//! same store object and the same handle are used before and after the fault, no
//! restart.

mod support;

use failover_core::ComponentStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::wait_until;
use tradepulse_symbol_mode::{
    Audit, StartAt, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig,
};
use tradepulse_testkit::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_primary_and_promote_replica_then_set_symbol_mode_succeeds_and_the_handle_converges()
{
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    let store = Arc::new(support::store(&cluster.multi_host_dsn(&db)).await);
    store
        .register_symbols(&["BTC-USD"], &Audit::new("ops", "listing"))
        .await
        .unwrap();
    let modes = SymbolModes::spawn(
        store.clone(),
        SymbolModesConfig::default().with_poll_interval(Duration::from_millis(200)),
    );
    let mut engine = store.subscribe_cancel_all(StartAt::Now).await.unwrap();
    let before = store
        .set_symbol_mode(
            "BTC-USD",
            SymbolMode::SoftHalt,
            &Audit::new("ops", "settlement lag"),
        )
        .await
        .unwrap();
    assert!(
        modes
            .wait_for_version(before.version, Duration::from_secs(5))
            .await
    );
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();

    cluster.primary().kill9().await.unwrap();
    let replica = cluster.replica().unwrap();
    replica.promote().await.unwrap();

    let start = Instant::now();
    let event = store
        .set_symbol_mode(
            "BTC-USD",
            SymbolMode::HardHalt,
            &Audit::new("ops:alice", "primary lost"),
        )
        .await
        .expect("SetSymbolMode after promotion, same store object");
    let took = start.elapsed();
    let budget = store.pool().settings().retry_policy().budget;
    assert!(took <= budget + Duration::from_millis(500), "took {took:?}");
    assert_eq!(
        event.version,
        before.version + 1,
        "the pre-failover change survived"
    );
    eprintln!("first SetSymbolMode after promotion took {took:?}");

    // The handle converges without a restart and reports healthy again.
    assert!(
        modes
            .wait_for_version(event.version, Duration::from_secs(10))
            .await,
        "handle converged"
    );
    assert_eq!(modes.mode("BTC-USD"), SymbolMode::HardHalt);
    wait_until("operational", Duration::from_secs(10), || {
        modes.health().status == ComponentStatus::Operational
    })
    .await;

    // CancelAll still reaches the subscriber made before the failover.
    let command = store
        .cancel_all(
            "BTC-USD",
            &Audit::new("ops:alice", "flatten after failover"),
        )
        .await
        .unwrap()
        .into_inner();
    let delivered = tokio::time::timeout(Duration::from_secs(10), engine.next())
        .await
        .expect("delivered after failover")
        .unwrap();
    assert_eq!(delivered, command);

    let rows = replica
        .query(
            &db,
            "SELECT mode FROM symbol_modes WHERE symbol = 'BTC-USD'",
        )
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("HARD_HALT"));
}
