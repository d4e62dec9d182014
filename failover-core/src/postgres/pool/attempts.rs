//! The attempt loop every operation shares: each attempt is bounded by the operation
//! timeout and the whole call by the retry budget; each outcome is classified,
//! counted in metrics and recorded as reachable or not; a statement cancelled by
//! `lock_timeout` comes back naming the sessions that hold the lock.

use super::checkout::{checkout_error, ClientGuard};
use super::{lock, PgClient, PgPool};
use crate::errors::{describe_blockers, Blocker, DbError, DbErrorKind, Reach};
use crate::postgres::error::{from_retry, lock_site, LockSite, PgFailure, LOCK_NOT_AVAILABLE};
use crate::postgres::manager::Object;
use crate::retry::{Classify, ErrorClass};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

impl PgPool {
    /// The retry loop every operation shares: each attempt checks a client out, runs
    /// `f` on it (which hands the client back), records whether the database was
    /// reached, and discards the client when the attempt failed.
    pub(super) async fn attempts<'a, T, F>(&'a self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: Fn(Object) -> BoxFuture<'a, (Object, Result<T, tokio_postgres::Error>)> + Send + Sync,
    {
        let component = self.inner.component;
        let span = tracing::debug_span!("pg", component, op);
        let started = Instant::now();
        let policy = self.inner.current.load().settings.retry.clone();
        // Inside the attempt, after a lock wait of at most three quarters of the
        // operation timeout: the look-up must not make the attempt time out.
        let lookup_bound = policy.attempt_timeout.mul_f64(0.2).min(LOCK_LOOKUP_BOUND);
        // How far the attempts got: a statement sent whose answer was lost (the
        // connection dropped, the attempt timed out) leaves a write's outcome unknown;
        // one the server refused or cancelled did not take effect.
        let uncertain = AtomicBool::new(false);
        let refused = AtomicBool::new(false);
        // Who held the lock a cancelled statement waited for, asked on its own
        // connection (idle again after the cancel) before that one is discarded.
        let holders: Mutex<Option<Result<Vec<Blocker>, String>>> = Mutex::new(None);
        let result = policy
            .run(|attempt| {
                let (f, uncertain, refused, holders) = (&f, &uncertain, &refused, &holders);
                async move {
                    metrics::counter!("failover_pg_attempts_total", "component" => component, "op" => op).increment(1);
                    if attempt > 1 {
                        metrics::counter!("failover_pg_retries_total", "component" => component, "op" => op).increment(1);
                    }
                    let object = match self.checkout().await {
                        Ok(object) => object,
                        Err(failure) => {
                            if self.is_connect_failure(&failure) {
                                self.not_reached(&failure.to_string());
                            }
                            return Err(failure);
                        }
                    };
                    let mut guard = ClientGuard(None, self.inner.epoch.clone());
                    // Dropped armed (the attempt timed out mid-statement), it marks
                    // the outcome unknown.
                    let mut sent = InFlight(Some(uncertain));
                    let (object, result) = f(object).await;
                    guard.0 = Some(object);
                    match result {
                        Ok(v) => {
                            sent.0 = None;
                            self.reached();
                            guard.keep();
                            Ok(v)
                        }
                        // The guard discards the connection: it may sit in an
                        // aborted transaction or point at a dead server.
                        Err(e) => {
                            let failure = PgFailure::Query(e);
                            if failure.refused_by_server() {
                                sent.0 = None;
                                refused.store(true, Ordering::Relaxed);
                            }
                            if let (PgFailure::Query(q), Some(client)) = (&failure, &guard.0) {
                                if q.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) {
                                    let found = crate::postgres::diagnose::blockers_on(
                                        client,
                                        &lock_site(q),
                                        lookup_bound,
                                    )
                                    .await;
                                    *lock(holders) = Some(found);
                                }
                            }
                            if failure.class() == ErrorClass::Retryable {
                                self.not_reached(&failure.to_string());
                            } else {
                                // The server answered: it is reachable.
                                self.reached();
                            }
                            Err(failure)
                        }
                    }
                }
            })
            .instrument(span)
            .await;
        let e = match result {
            Ok(value) => {
                metrics::histogram!("failover_pg_operation_seconds", "component" => component, "op" => op)
                    .record(started.elapsed().as_secs_f64());
                return Ok(value);
            }
            Err(e) => e,
        };
        if let crate::retry::AttemptError::TimedOut(bound) = &e.last {
            metrics::counter!("failover_pg_timeouts_total", "component" => component, "op" => op)
                .increment(1);
            self.not_reached(&format!(
                "timed out after {}",
                humantime::format_duration(*bound)
            ));
        }
        let class = e.last_class();
        metrics::counter!("failover_pg_errors_total", "component" => component, "op" => op, "class" => class).increment(1);
        let locked = match &e.last {
            crate::retry::AttemptError::Failed(PgFailure::Query(q))
                if q.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) =>
            {
                Some(lock_site(q))
            }
            _ => None,
        };
        let reach = if uncertain.load(Ordering::Relaxed) {
            Reach::Unknown
        } else if refused.load(Ordering::Relaxed) {
            Reach::Refused
        } else {
            Reach::NotConnected
        };
        let hint = self.last_connect_error();
        let mut err = from_retry(op, e, hint, reach);
        if let Some(site) = locked {
            metrics::counter!("failover_pg_lock_timeouts_total", "component" => component, "op" => op).increment(1);
            let asked = lock(&holders).take();
            err = self.name_blockers(err, site, asked).await;
        }
        metrics::histogram!("failover_pg_operation_seconds", "component" => component, "op" => op)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(component, op, error = %err, "postgres operation failed");
        Err(err)
    }

    /// Adds who holds the lock a cancelled statement waited for, looked up on one
    /// bounded attempt so that the error still comes back promptly.
    /// `asked`: the answer got on the failed statement's own connection, if any; when
    /// that did not work, another connection is asked.
    async fn name_blockers(
        &self,
        err: DbError,
        site: LockSite,
        asked: Option<Result<Vec<Blocker>, String>>,
    ) -> DbError {
        let bound = self
            .inner
            .current
            .load()
            .settings
            .operation_timeout
            .min(LOCK_LOOKUP_BOUND);
        let found = match asked {
            Some(Ok(blockers)) => Ok(blockers),
            _ => crate::postgres::diagnose::lookup_blockers(self, &site, bound).await,
        };
        let relation = site.relation;
        match found {
            Ok(blockers) => {
                let text = describe_blockers(relation.as_deref(), &blockers);
                tracing::warn!(component = self.inner.component, op = err.op(), "{text}");
                err.with_blockers(blockers, text)
            }
            Err(why) => {
                let text = format!(
                    "{} is locked by another session, which could not be named ({why}); look for it in pg_locks joined with pg_stat_activity",
                    relation.as_deref().unwrap_or("the row or table")
                );
                err.with_blockers(Vec::new(), text)
            }
        }
    }

    /// Runs `f` with a pooled client under the retry policy: every attempt bounded by
    /// the operation timeout, the whole call by the retry budget. `f` may run more
    /// than once, so the statement it sends must be idempotent.
    ///
    /// ```no_run
    /// # async fn demo(pool: tradepulse_failover_core::postgres::PgPool) -> Result<(), tradepulse_failover_core::postgres::DbError> {
    /// let n: i64 = pool
    ///     .run("demo.count", |c| Box::pin(async move {
    ///         let row = c.query_one("SELECT count(*) FROM kill_switch_events", &[]).await?;
    ///         Ok(row.get(0))
    ///     }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: for<'c> Fn(&'c PgClient) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send
            + Sync,
    {
        self.attempts(op, |client| {
            let f = &f;
            Box::pin(async move {
                let result = f(&client).await;
                (client, result)
            })
        })
        .await
    }

    /// Runs `f` inside `BEGIN … COMMIT` on a pooled connection under the retry
    /// policy, for writes that need the caller's own transaction (a fenced write: check
    /// the token, then write, atomically). Each attempt is bounded by the operation
    /// timeout and the whole call by the retry budget; a failed attempt rolls back and
    /// its connection is discarded, so `f` may run again in a fresh transaction.
    ///
    /// `f`'s error type decides what is retried through [`Classify`]: a refusal (a
    /// stale fencing token, say) is permanent and returned at once.
    ///
    /// A statement cancelled by `lock_timeout` reaches `f` as a tokio-postgres error
    /// with SQLSTATE 55P03; [`db_error`](crate::postgres::db_error) turns it into
    /// [`DbErrorKind::Locked`], which `E` may retry (a [`DbError`] says retryable) or
    /// not. The holders are not looked up here: ask [`blockers_of`](Self::blockers_of).
    pub async fn transaction<T, E, F>(&self, op: &'static str, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<DbError> + Classify + std::fmt::Display + Send,
        F: for<'a, 'b> Fn(&'a deadpool_postgres::Transaction<'b>) -> BoxFuture<'a, Result<T, E>>
            + Send
            + Sync,
    {
        let component = self.inner.component;
        let policy = self.inner.current.load().settings.retry.clone();
        let failed = |e: tokio_postgres::Error| E::from(crate::postgres::error::db_error(op, &e));
        let result = policy
            .run(|_| {
                let (f, failed) = (&f, &failed);
                async move {
                    metrics::counter!("failover_pg_attempts_total", "component" => component, "op" => op).increment(1);
                    let object = self.checkout().await.map_err(|f| {
                        if self.is_connect_failure(&f) {
                            self.not_reached(&f.to_string());
                        }
                        E::from(checkout_error(op, &f))
                    })?;
                    let mut guard = ClientGuard(Some(object), self.inner.epoch.clone());
                    let client = guard.0.as_mut().expect("guard holds the client until done");
                    let tx = client.transaction().await.map_err(failed)?;
                    let value = f(&tx).await?;
                    tx.commit().await.map_err(failed)?;
                    self.reached();
                    guard.keep();
                    Ok(value)
                }
            })
            .await;
        result.map_err(|e| match e.last {
            crate::retry::AttemptError::Failed(e) => e,
            crate::retry::AttemptError::TimedOut(bound) => E::from(DbError::new(
                DbErrorKind::Unavailable,
                op,
                None,
                format!(
                    "transaction timed out after {} ({} attempt(s)){}",
                    humantime::format_duration(bound),
                    e.attempts,
                    self.last_connect_error()
                        .map(|h| format!("; last connect: {h}"))
                        .unwrap_or_default()
                ),
            )),
        })
    }
}

trait LastClass {
    fn last_class(&self) -> &'static str;
}

impl LastClass for crate::retry::RetryError<PgFailure> {
    fn last_class(&self) -> &'static str {
        match &self.last {
            crate::retry::AttemptError::TimedOut(_) => "timeout",
            crate::retry::AttemptError::Failed(f) => match f.class() {
                ErrorClass::Retryable => "retryable",
                ErrorClass::Permanent => "permanent",
            },
        }
    }
}

/// Marks the operation's outcome unknown when dropped still armed: the statement
/// was sent and no answer came back (the attempt timed out or the connection died).
struct InFlight<'a>(Option<&'a AtomicBool>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Bound of the look-up of who holds a lock after a lock timeout.
const LOCK_LOOKUP_BOUND: Duration = Duration::from_millis(400);
