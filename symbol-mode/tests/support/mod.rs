//! Shared setup of the Postgres tests: real throw-away clusters from the testkit.
#![allow(dead_code, unused_imports, unreachable_pub)]

use failover_core::postgres::PgStore;
use tradepulse_symbol_mode::PostgresSymbolModeStore;
use tradepulse_testkit::Cluster;

/// Short-bound settings over `dsn` (see `tradepulse_testkit::fast_settings`).
pub use tradepulse_testkit::{fast_settings as settings, wait_until};

/// A primary-only cluster of its own with a fresh database; returns (cluster, dbname).
pub async fn primary() -> (Cluster, String) {
    tradepulse_testkit::own_primary()
        .await
        .expect("start cluster")
}

/// A fresh database on a primary shared by the concurrently running tests of this
/// binary (for tests that inflict no fault on the server).
pub async fn shared_primary() -> (std::sync::Arc<Cluster>, String) {
    tradepulse_testkit::shared_primary()
        .await
        .expect("start cluster")
}

/// A migrated store over `dsn`.
pub async fn store(dsn: &str) -> PostgresSymbolModeStore {
    let store =
        PostgresSymbolModeStore::new(settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
}
