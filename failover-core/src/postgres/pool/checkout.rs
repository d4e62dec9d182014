//! Checking a connection out of the pool: a failed checkout may mean a failover, so
//! every pooled connection is verified again (a demoted primary is dropped); a
//! connection whose operation did not finish cleanly is discarded, never reused.

use super::{PgClient, PgPool};
use crate::errors::{DbError, DbErrorKind, Reach};
use crate::postgres::error::{PgFailure, NO_PRIMARY};
use crate::postgres::manager::Object;
use crate::retry::{Classify, ErrorClass};
use deadpool_postgres::PoolError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

impl PgPool {
    /// A client from the pool. Bounded by the pool's wait/create/recycle timeouts; not
    /// retried, and a connection whose backend was just terminated may still be handed
    /// out: for a transaction of your own prefer [`transaction`](Self::transaction),
    /// which retries it.
    pub async fn get(&self) -> Result<PgClient, DbError> {
        self.checkout()
            .await
            .map_err(|f| checkout_error("pool.get", &f))
    }

    /// A checkout failure that says the database cannot be reached (a failed connect),
    /// as opposed to a busy pool or a pool replaced by a DSN swap.
    pub(super) fn is_connect_failure(&self, failure: &PgFailure) -> bool {
        match failure {
            PgFailure::Query(e) => crate::postgres::error::classify(e) == ErrorClass::Retryable,
            PgFailure::Pool(text, ErrorClass::Retryable) => {
                text.starts_with("no writable host") || self.last_connect_error().is_some()
            }
            PgFailure::Pool(_, ErrorClass::Permanent) => false,
            PgFailure::Connect(..) | PgFailure::NoPrimary(_) => true,
        }
    }

    /// A retryable failure may mean a failover: verify every pooled connection
    /// before its next use.
    pub(super) fn suspect_failover(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(in crate::postgres) async fn checkout(&self) -> Result<Object, PgFailure> {
        let generation = self.inner.current.load_full();
        let result = generation.pool.get().await;
        if result.is_err() {
            self.suspect_failover();
        }
        result.map_err(|e| match e {
            PoolError::Backend(e) => match self.last_connect_error() {
                // A connect failure: name every host's reason, not only the last one.
                Some(hosts) if hosts.starts_with(NO_PRIMARY) => PgFailure::NoPrimary(hosts),
                Some(hosts) if crate::postgres::error::classify(&e) == ErrorClass::Retryable => {
                    let what = if self.inner.standby {
                        "no host answered"
                    } else {
                        "no writable host"
                    };
                    PgFailure::Connect(
                        format!("{what}: {hosts}"),
                        e.code().map(|c| c.code().to_owned()),
                    )
                }
                _ => PgFailure::Query(e),
            },
            PoolError::Timeout(t) => PgFailure::Pool(
                format!(
                    "timed out waiting for a connection ({t:?}){}",
                    self.last_connect_error()
                        .map(|h| format!("; last connect: {h}"))
                        .unwrap_or_default()
                ),
                ErrorClass::Retryable,
            ),
            PoolError::Closed => PgFailure::Pool(
                "pool closed (DSN swapped); retrying on the new pool".into(),
                ErrorClass::Retryable,
            ),
            other => PgFailure::Pool(other.to_string(), ErrorClass::Retryable),
        })
    }
}

/// Discards the connection unless the operation finished cleanly: a timed-out or
/// failed connection may have a request in flight or point at a dead server. Its
/// failure may be a failover, so every other pooled connection is verified again.
pub(super) struct ClientGuard(pub(super) Option<Object>, pub(super) Arc<AtomicU64>);

impl ClientGuard {
    pub(super) fn keep(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
            self.1.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A failed checkout as a [`DbError`]: no connection, so nothing was sent.
pub(super) fn checkout_error(op: &'static str, f: &PgFailure) -> DbError {
    let kind = match f.class() {
        ErrorClass::Retryable => DbErrorKind::Unavailable,
        ErrorClass::Permanent => DbErrorKind::Permanent,
    };
    let err = DbError::new(kind, op, f.sqlstate().map(str::to_owned), f.to_string())
        .with_reach(Reach::NotConnected);
    match f {
        PgFailure::NoPrimary(_) => err.with_no_primary(),
        _ => err,
    }
}
