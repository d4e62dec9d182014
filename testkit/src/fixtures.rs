//! Ready-made setups for store tests, shared by every crate's test suite.

use super::{Cluster, TestkitError};
use failover_core::postgres::{PgSettings, PgSettingsBuilder};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Settings over `dsn` with short bounds (connect 500 ms, operation 700 ms, retry
/// budget 3 s, pool of 4) so that fault tests finish quickly.
pub fn fast_settings(dsn: &str) -> PgSettingsBuilder {
    PgSettings::builder()
        .with_dsn(dsn)
        .with_pool_size(4)
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_millis(700))
        .with_retry_budget(Duration::from_secs(3))
}

/// A primary-only cluster of its own with a fresh database: for tests that inflict
/// faults on the server.
pub async fn own_primary() -> Result<(Cluster, String), TestkitError> {
    let cluster = Cluster::start().await?;
    let db = cluster.create_database().await?;
    Ok((cluster, db))
}

/// The cluster shared by the tests of one binary that run at the same time.
static SHARED: tokio::sync::Mutex<Weak<Cluster>> = tokio::sync::Mutex::const_new(Weak::new());

/// A fresh database on a primary shared with the tests of this binary that run at the
/// same time — for tests that inflict no fault on the server (a conformance suite, say).
/// Starting a cluster per test (initdb) would triple such suites' time. The cluster
/// stops and is removed when the last test holding it ends, so nothing outlives the
/// test binary.
pub async fn shared_primary() -> Result<(Arc<Cluster>, String), TestkitError> {
    let cluster = {
        let mut slot = SHARED.lock().await;
        match slot.upgrade() {
            Some(cluster) => cluster,
            None => {
                let cluster = Arc::new(Cluster::start().await?);
                *slot = Arc::downgrade(&cluster);
                cluster
            }
        }
    };
    let db = cluster.create_database().await?;
    Ok((cluster, db))
}

/// Like [`wait_until`], and on timeout the panic also says what `seen` shows then
/// (a health component, say), so a failure names its cause.
pub async fn wait_until_seeing<F: Fn() -> bool, D: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    f: F,
    seen: impl Fn() -> D,
) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; seen: {:?}",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after `timeout`.
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
