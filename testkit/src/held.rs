//! A competing change held open in another transaction — how tests of an authority
//! rule put a concurrent writer in between deterministically: the change is made
//! and left uncommitted, the request under test is started, and the change commits
//! only once the request is seen waiting on its lock (not after a sleep).

use failover_core::postgres::tokio_postgres::{self, Client, NoTls};
use std::future::Future;
use std::time::{Duration, Instant};

/// A session that made a change in a transaction and keeps it (and its row locks)
/// open. Panics on failure: it is a test fixture.
#[derive(Debug)]
pub struct Held {
    holder: Client,
    observer: Client,
    pid: i32,
}

async fn session(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    tokio::spawn(connection);
    client
}

impl Held {
    /// Begins a transaction on a session of its own and runs `sql` in it.
    pub async fn begin(dsn: &str, sql: &str) -> Self {
        let holder = session(dsn).await;
        let observer = session(dsn).await;
        holder.batch_execute("BEGIN").await.expect("BEGIN");
        holder
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("the held change {sql:?}: {e}"));
        let pid = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        Self {
            holder,
            observer,
            pid,
        }
    }

    /// The holding session's backend pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits (at most `timeout`) until another session waits on a lock this one holds.
    pub async fn until_waited_on(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let waiting: i64 = self
                .observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&self.pid],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting > 0 {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "nothing waited on the held change within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Commits the change.
    pub async fn commit(self) {
        self.holder.batch_execute("COMMIT").await.expect("COMMIT");
    }

    /// Rolls the change back.
    pub async fn rollback(self) {
        self.holder
            .batch_execute("ROLLBACK")
            .await
            .expect("ROLLBACK");
    }

    /// Runs `request` while the change is held, commits the change once the request
    /// waits on it, and returns the request's outcome: the request is decided
    /// against the committed change, never against what it saw before.
    pub async fn race<T: Send + 'static>(
        self,
        request: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let task = tokio::spawn(request);
        self.until_waited_on(Duration::from_secs(10)).await;
        self.commit().await;
        task.await.expect("the request under test panicked")
    }
}
