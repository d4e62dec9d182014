//! Shared setup of the Postgres tests: real throw-away clusters from the testkit.
#![allow(dead_code, unreachable_pub)]

use failover_core::postgres::{PgSettings, PgSettingsBuilder};
use failover_core::testkit::Cluster;
use std::time::{Duration, Instant};
use symbol_mode::PostgresSymbolModeStore;

/// Settings over `dsn` with short bounds so fault tests finish quickly.
pub fn settings(dsn: &str) -> PgSettingsBuilder {
    PgSettings::builder()
        .with_dsn(dsn)
        .with_pool_size(4)
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_millis(700))
        .with_retry_budget(Duration::from_secs(3))
}

/// A migrated store over `dsn`.
pub async fn store(dsn: &str) -> PostgresSymbolModeStore {
    let store =
        PostgresSymbolModeStore::new(settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// A primary-only cluster with a fresh database; returns (cluster, dbname).
pub async fn primary() -> (Cluster, String) {
    let cluster = Cluster::start().await.expect("start cluster");
    let db = cluster.create_database().await.expect("create database");
    (cluster, db)
}

/// Polls `f` every 20 ms until true, or panics after `timeout`.
pub async fn wait_until<F: Fn() -> bool>(what: &str, timeout: Duration, f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
