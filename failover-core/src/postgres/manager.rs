//! The pool's connection manager: deadpool-postgres's, plus a verification that a
//! reused connection still reaches a writable primary.

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, Manager};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Fails the recycle check on a standby or a read-only primary, so the connection is
/// replaced by one to the writable server.
pub(super) const RECYCLE_CHECK: &str = "DO $$ BEGIN \
    IF pg_is_in_recovery() THEN RAISE EXCEPTION 'server is a standby' USING ERRCODE = '25006'; END IF; \
    IF current_setting('transaction_read_only') = 'on' THEN RAISE EXCEPTION 'server is read-only' USING ERRCODE = '25006'; END IF; \
    END $$";

/// How long a verified connection is trusted before it is verified again.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

pub(super) type Pool = managed::Pool<VerifyingManager>;
pub(super) type Object = managed::Object<VerifyingManager>;

/// A client checked out of the pool (derefs to `tokio_postgres::Client`, with a
/// prepared-statement cache through `prepare_cached`).
pub type PgClient = Object;

/// A pooled connection and when it was last proven to reach a writable primary.
#[derive(Debug)]
pub struct VerifiedClient {
    client: ClientWrapper,
    verified_at: Instant,
    epoch: u64,
}

impl std::ops::Deref for VerifiedClient {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl std::ops::DerefMut for VerifiedClient {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

/// deadpool-postgres's manager (connect, statement caches) plus a verification that
/// runs only when due: older than [`VERIFY_EVERY`], or a failure was seen since.
pub struct VerifyingManager {
    pub(super) inner: Manager,
    pub(super) epoch: Arc<AtomicU64>,
}

impl managed::Manager for VerifyingManager {
    type Type = VerifiedClient;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<VerifiedClient, tokio_postgres::Error> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let client = managed::Manager::create(&self.inner).await?;
        // A fresh connection went through target_session_attrs=read-write (or
        // `any` for a pool that reads from standbys, which recycles with a plain
        // round trip instead of the standby check).
        Ok(VerifiedClient {
            client,
            verified_at: Instant::now(),
            epoch,
        })
    }

    async fn recycle(
        &self,
        obj: &mut VerifiedClient,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if obj.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        if obj.epoch == epoch && obj.verified_at.elapsed() < VERIFY_EVERY {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut obj.client, metrics).await?;
        obj.verified_at = Instant::now();
        obj.epoch = epoch;
        Ok(())
    }

    fn detach(&self, obj: &mut VerifiedClient) {
        managed::Manager::detach(&self.inner, &mut obj.client);
    }
}
