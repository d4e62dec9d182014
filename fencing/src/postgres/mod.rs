//! The PostgreSQL lease store and fenced writes (feature `postgres`, on by default):
//! the source of truth in production.
//!
//! * Table `fencing_leases`: one row per resource (holder, token, ttl, expiry). Each
//!   call is one round trip to a function (`fencing_acquire`, `fencing_renew`,
//!   `fencing_release`) that locks the row and judges expiry by the database clock
//!   (`clock_timestamp()` once the row is locked).
//! * Table `fencing_lease_events`: append-only record of every grant and release.
//! * Table `fencing_highest` and function `fencing_check(resource, token)`: the
//!   resource side, called by [`fence`] inside the caller's own transaction.
//! * Settings from `TRADEPULSE_FENCING_POSTGRES__*` ([`PostgresLeaseFencer::from_env`]).
//!
//! # Token scheme
//!
//! `token = (timeline << 40) | counter` in one BIGINT (so 23 bits of timeline, 40 of
//! counter, the sign bit unused), where *timeline* is the server's WAL timeline when
//! the token is issued and *counter* counts grants of the resource. A new token is
//! `greatest(last + 1, (timeline << 40) + 1)`.
//!
//! * On one server tokens rise by one per grant: `last` is read under the row lock and
//!   written in the same transaction, which is committed (flushed locally, whatever
//!   `synchronous_commit` says) before the token is returned.
//! * Promoting a replica always starts a timeline above every timeline the cluster has
//!   used. With asynchronous replication the replica may lack the last grants of the
//!   old primary; those tokens all carry the old timeline, so the first grant on the
//!   new primary, `(new timeline << 40) + 1` or more, is above every one of them.
//!
//! Limits: the scheme assumes the table's tokens come from this cluster's timelines.
//! Moving the table into another cluster (dump and restore, logical replication)
//! keeps tokens rising on that server, but until its timeline passes the moved tokens'
//! timeline a lossy failover there could issue a token again. Across a lossy
//! failover two holders may briefly both hold an unexpired lease (the one the replica
//! never heard of, and the one it grants); the token keeps their writes apart.

mod history;
pub use history::LeaseEvent;

use crate::{
    check_name, check_token, check_ttl, clamp_margin, CurrentLease, Error, Lease, LeaseFencer,
    LostReason, DEFAULT_SAFETY_MARGIN,
};
use failover_core::postgres::{
    db_error, migrate as apply, tokio_postgres::types::Type, Migration, MigrationReport, PgPool,
};

pub use failover_core::postgres::PgStore;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Transaction;

/// The env prefix of the store's settings: `TRADEPULSE_FENCING_POSTGRES__DSN` …
pub const ENV_PREFIX: &str = "TRADEPULSE_FENCING";

/// The SQLSTATE `fencing_check` raises for a stale token (message `FENCING_TOKEN: …`).
pub const FENCING_SQLSTATE: &str = "TF001";

/// Bits of a token that count grants within one timeline.
pub const TOKEN_COUNTER_BITS: u32 = 40;

/// The embedded migrations of this crate (`fencing/migrations/postgres/`).
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "fencing_leases",
        include_str!("../../migrations/postgres/0001_fencing_leases.sql"),
    ),
    Migration::new(
        2,
        "fenced_writes",
        include_str!("../../migrations/postgres/0002_fenced_writes.sql"),
    ),
    Migration::new(
        3,
        "audit_log",
        include_str!("../../migrations/postgres/0003_audit_log.sql"),
    ),
    Migration::new(
        4,
        "shared_functions",
        include_str!("../../migrations/postgres/0004_shared_functions.sql"),
    ),
    Migration::new(
        5,
        "viewer_reads",
        include_str!("../../migrations/postgres/0005_viewer_reads.sql"),
    ),
];

const COMPONENT: &str = "fencing";

const ACQUIRE: &str =
    "SELECT o_granted AS granted, o_holder AS holder, o_token AS token, o_expires_in_us AS expires_in_us \
     FROM fencing_acquire($1, $2, $3)";
const RENEW: &str = "SELECT o_renewed AS renewed, o_holder AS holder, o_token AS token \
     FROM fencing_renew($1, $2, $3, $4)";
const RELEASE: &str = "SELECT fencing_release($1, $2, $3)";
const CURRENT: &str = "SELECT holder, token, \
     (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::BIGINT AS expires_in_us \
     FROM fencing_leases \
     WHERE resource = $1 AND holder IS NOT NULL AND expires_at > clock_timestamp()";
const CHECK: &str = "SELECT fencing_check($1, $2)";

/// The WAL timeline a token was issued on (a token is a
/// [`Position`](failover_core::Position)).
pub fn token_timeline(token: u64) -> u64 {
    failover_core::Position(token).timeline()
}

/// The per-timeline counter of a token.
pub fn token_counter(token: u64) -> u64 {
    failover_core::Position(token).counter()
}

/// Applies the embedded migrations (leases and fenced writes) on `pool`'s database:
/// idempotent, safe under concurrent start. Use it on the database of a fenced
/// resource when that is not the lease store's.
pub async fn migrate(pool: &PgPool) -> Result<MigrationReport, Error> {
    Ok(apply(pool, COMPONENT, MIGRATIONS).await?)
}

/// The fenced write check, inside the caller's transaction: refuses `token` if it is
/// older than the newest token `resource` has accepted ([`Error::FencingToken`], code
/// `FENCING_TOKEN`, naming the resource and both tokens), otherwise records it as the
/// newest. Call it before the write, in the same transaction.
///
/// The resource's row stays locked until the transaction ends, so fenced writes to one
/// resource commit in token order; a rolled-back transaction leaves the highest token
/// as it was. After a refusal the transaction is aborted: roll it back. One round
/// trip; not retried (the transaction is the caller's).
///
/// ```no_run
/// # async fn demo(client: &mut tokio_postgres::Client, token: u64) -> Result<(), Box<dyn std::error::Error>> {
/// let tx = client.transaction().await?;
/// tradepulse_fencing::postgres::fence(&tx, "btc-usd", token).await?; // Err(FencingToken) for a stale leader
/// tx.execute("INSERT INTO fills (symbol, qty) VALUES ('btc-usd', 1)", &[]).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// Without a `Transaction` (for instance inside [`PgPool::run`]), call the SQL
/// function yourself after `BEGIN`: `SELECT fencing_check($1, $2)`; the resulting
/// [`DbError`](failover_core::DbError) converts into [`Error::FencingToken`] with `?`.
pub async fn fence(tx: &Transaction<'_>, resource: &str, token: u64) -> Result<(), Error> {
    check_name("resource", resource)?;
    check_token(token)?;
    let signed = token as i64;
    tx.execute_typed(CHECK, &[(&resource, Type::TEXT), (&signed, Type::INT8)])
        .await
        .map(drop)
        .map_err(|e| {
            let err = fence_error(&e);
            if matches!(err, Error::FencingToken { .. }) {
                metrics::counter!("fencing_writes_refused_total").increment(1);
            }
            err
        })
}

/// Classifies a failure of `fencing_check`.
fn fence_error(e: &tokio_postgres::Error) -> Error {
    let error = db_error("fencing.fence", e);
    if error.sqlstate() == Some(FENCING_SQLSTATE) {
        if let Some(fencing) = Error::parse_fencing(error.message()) {
            return fencing;
        }
    }
    Error::from(error)
}

/// Leases in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresLeaseFencer {
    pool: PgPool,
    safety_margin: f64,
}

impl PgStore for PostgresLeaseFencer {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const COMPONENT: &'static str = COMPONENT;
    const MIGRATION_SET: &'static str = COMPONENT;
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;
    type Error = Error;

    fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            safety_margin: DEFAULT_SAFETY_MARGIN,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

failover_core::pg_store_inherent!(PostgresLeaseFencer);

impl PostgresLeaseFencer {
    /// Sets the share of the ttl by which a lease's local deadline precedes its expiry
    /// (default [`DEFAULT_SAFETY_MARGIN`], clamped to 0.0..=0.5). Widen it when the
    /// database host's clock may run fast against this host's.
    #[must_use]
    pub fn with_safety_margin(mut self, share: f64) -> Self {
        self.safety_margin = clamp_margin(share);
        self
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl LeaseFencer for PostgresLeaseFencer {
    async fn acquire(&self, resource: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        check_name("resource", resource)?;
        check_name("holder", holder)?;
        check_ttl(ttl)?;
        let ttl_us = micros(ttl);
        let sent_at = Instant::now();
        let row = self
            .pool
            .query_one(
                "fencing.acquire",
                ACQUIRE,
                &[
                    (&resource, Type::TEXT),
                    (&holder, Type::TEXT),
                    (&ttl_us, Type::INT8),
                ],
            )
            .await?;
        let token = row.get::<_, i64>("token") as u64;
        if !row.get::<_, bool>("granted") {
            return Err(Error::Held {
                resource: resource.to_owned(),
                holder: row.get("holder"),
                token,
                expires_in: Duration::from_micros(row.get::<_, i64>("expires_in_us").max(0) as u64),
            });
        }
        Ok(Lease::issued(
            resource,
            holder,
            token,
            ttl,
            sent_at,
            self.safety_margin,
        ))
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, Error> {
        let (resource, holder) = (lease.resource(), lease.holder());
        let token = lease.token() as i64;
        let ttl_us = micros(lease.ttl());
        let sent_at = Instant::now();
        let row = self
            .pool
            .query_one(
                "fencing.renew",
                RENEW,
                &[
                    (&resource, Type::TEXT),
                    (&holder, Type::TEXT),
                    (&token, Type::INT8),
                    (&ttl_us, Type::INT8),
                ],
            )
            .await?;
        if row.get::<_, bool>("renewed") {
            return Ok(Lease::issued(
                resource,
                holder,
                lease.token(),
                lease.ttl(),
                sent_at,
                self.safety_margin,
            ));
        }
        let current_holder: Option<String> = row.get("holder");
        let current_token = row.get::<_, i64>("token") as u64;
        let reason = if current_token > lease.token() {
            LostReason::Superseded {
                token: current_token,
            }
        } else if current_token < lease.token()
            || current_holder.as_deref().is_some_and(|h| h != holder)
        {
            LostReason::Unrecorded
        } else if current_holder.is_none() {
            LostReason::Released
        } else {
            LostReason::Expired
        };
        Err(Error::LeaseLost {
            resource: resource.to_owned(),
            token: lease.token(),
            reason,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let (resource, holder) = (lease.resource(), lease.holder());
        let token = lease.token() as i64;
        self.pool
            .execute(
                "fencing.release",
                RELEASE,
                &[
                    (&resource, Type::TEXT),
                    (&holder, Type::TEXT),
                    (&token, Type::INT8),
                ],
            )
            .await?;
        Ok(())
    }

    async fn current(&self, resource: &str) -> Result<Option<CurrentLease>, Error> {
        check_name("resource", resource)?;
        let row = self
            .pool
            .query_opt("fencing.current", CURRENT, &[(&resource, Type::TEXT)])
            .await?;
        Ok(row.map(|r| CurrentLease {
            resource: resource.to_owned(),
            holder: r.get("holder"),
            token: r.get::<_, i64>("token") as u64,
            expires_in: Duration::from_micros(r.get::<_, i64>("expires_in_us").max(0) as u64),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_splits_into_timeline_and_counter() {
        let token = (3 << TOKEN_COUNTER_BITS) | 17;
        assert_eq!(token_timeline(token), 3);
        assert_eq!(token_counter(token), 17);
        // The largest timeline still leaves the sign bit of a BIGINT clear.
        assert!((((1u64 << 23) - 1) << TOKEN_COUNTER_BITS | ((1 << 40) - 1)) <= i64::MAX as u64);
    }
}
