//! Shared setup of the Postgres tests: real throw-away clusters from the testkit.
#![allow(dead_code, unused_imports, unreachable_pub)]

use failover_core::postgres::PgPool;
use failover_core::postgres::PgStore;
use std::time::Duration;
use tradepulse_fencing::conformance::FencedLog;
use tradepulse_fencing::{Error, PostgresLeaseFencer};
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
pub async fn store(dsn: &str) -> PostgresLeaseFencer {
    let store = PostgresLeaseFencer::new(settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// The resource side in PostgreSQL: a log table whose appends are fenced writes, each
/// one transaction of `fence` + INSERT, the way a matching engine writes its fills.
#[derive(Debug, Clone)]
pub struct PgFencedLog {
    pub pool: PgPool,
}

pub const LOG_TABLE: &str = "CREATE TABLE IF NOT EXISTS fenced_log (
    id       BIGSERIAL PRIMARY KEY,
    resource TEXT      NOT NULL,
    token    BIGINT    NOT NULL,
    entry    TEXT      NOT NULL
)";

impl PgFencedLog {
    /// Migrates `dsn`'s database (fencing + the log table).
    pub async fn new(dsn: &str) -> Self {
        let pool = PgPool::new("fencing-test", settings(dsn).build().unwrap()).unwrap();
        tradepulse_fencing::postgres::migrate(&pool)
            .await
            .expect("migrate");
        pool.get()
            .await
            .unwrap()
            .batch_execute(LOG_TABLE)
            .await
            .unwrap();
        Self { pool }
    }

    async fn write(
        &self,
        resource: &str,
        token: u64,
        entry: &str,
        commit: bool,
    ) -> Result<(), Error> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.expect("begin");
        tradepulse_fencing::postgres::fence(&tx, resource, token).await?;
        tx.execute(
            "INSERT INTO fenced_log (resource, token, entry) VALUES ($1, $2, $3)",
            &[&resource, &(token as i64), &entry],
        )
        .await
        .expect("insert");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl FencedLog for PgFencedLog {
    async fn append(&self, resource: &str, token: u64, entry: &str) -> Result<(), Error> {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.write(resource, token, entry, true),
        )
        .await
        .expect("bounded")
    }

    async fn append_then_abort(
        &self,
        resource: &str,
        token: u64,
        entry: &str,
    ) -> Result<(), Error> {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.write(resource, token, entry, false),
        )
        .await
        .expect("bounded")
    }

    async fn entries(&self, resource: &str) -> Vec<(u64, String)> {
        let client = self.pool.get().await.unwrap();
        client
            .query(
                "SELECT token, entry FROM fenced_log WHERE resource = $1 ORDER BY id",
                &[&resource],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect()
    }
}
