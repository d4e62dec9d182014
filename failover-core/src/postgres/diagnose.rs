//! Questions an operator's `doctor` asks the database: who holds a lock, how many
//! connection slots are left, and which server answered (and how far behind it is).

use super::error::{describe, LockSite, PgFailure};
use super::pool::{PgClient, PgPool};
use crate::errors::{Blocker, DbError};
use std::time::Duration;
use tokio_postgres::types::Type;

/// Sessions holding a lock on a relation that can stand in a writer's way: any
/// granted relation lock but `AccessShareLock` (a plain read), i.e. `SELECT … FOR
/// UPDATE`/`FOR SHARE`, an `UPDATE`/`DELETE` in an open transaction, a `LOCK TABLE` or
/// DDL. Row locks themselves are not listed in `pg_locks` once nobody waits, so the
/// holders of the table-level lock that comes with them are named. `$1` NULL: every
/// relation of the current database. `$2`: only the session whose transaction id it
/// is (the locker of a row, from the row's `xmax`).
const BLOCKERS: &str = "\
SELECT DISTINCT ON (a.pid) a.pid, coalesce(a.application_name, ''), a.usename::text, a.state, \
       extract(epoch FROM clock_timestamp() - a.state_change)::float8, c.relname::text \
FROM pg_locks l \
JOIN pg_class c ON c.oid = l.relation \
JOIN pg_stat_activity a ON a.pid = l.pid \
WHERE l.granted AND l.locktype = 'relation' AND l.mode <> 'AccessShareLock' \
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
  AND a.pid <> pg_backend_pid() \
  AND ($1::text IS NULL OR c.relname = $1::text) \
  AND ($2::text IS NULL OR a.pid IN (SELECT h.pid FROM pg_locks h \
       WHERE h.locktype = 'transactionid' AND h.granted AND h.transactionid::text = $2::text)) \
ORDER BY a.pid";

fn blocker_from(row: &tokio_postgres::Row) -> Blocker {
    Blocker {
        pid: row.get(0),
        application_name: row.get(1),
        user: row.get(2),
        state: row.get(3),
        state_for: row
            .get::<_, Option<f64>>(4)
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.max(0.0))),
        relation: row.get(5),
    }
}

/// `name` quoted as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The holders of the lock at `site`. When the row is known, the transaction that
/// locked it (the row's `xmax`) names exactly its session; when that does not work
/// (several lockers share the row, the table is not on the search path, no right to
/// read it), every session holding a lock on the relation that can block a writer.
async fn ask(client: &PgClient, site: &LockSite) -> Result<Vec<Blocker>, String> {
    let relation = site.relation.as_deref();
    if let (Some(name), Some(tuple)) = (relation, site.tuple.as_deref()) {
        let sql = format!(
            "SELECT xmax::text FROM {} WHERE ctid = $1::text::tid",
            quote_ident(name)
        );
        if let Ok(rows) = client.query_typed(&sql, &[(&tuple, Type::TEXT)]).await {
            let xmax: Option<String> = rows.first().and_then(|r| r.get(0));
            if let Some(xmax) = xmax.filter(|x| x != "0") {
                let rows = client
                    .query_typed(
                        BLOCKERS,
                        &[(&relation, Type::TEXT), (&Some(xmax.as_str()), Type::TEXT)],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                if !rows.is_empty() {
                    return Ok(rows.iter().map(blocker_from).collect());
                }
            }
        }
    }
    let none: Option<&str> = None;
    let rows = client
        .query_typed(BLOCKERS, &[(&relation, Type::TEXT), (&none, Type::TEXT)])
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(blocker_from).collect())
}

/// The look-up on `client`, bounded (no retry): the look-up that follows a lock
/// timeout must not stretch the failed call much further. Sent unnamed, so that a
/// transaction pooler in between does not matter.
pub(super) async fn blockers_on(
    client: &PgClient,
    site: &LockSite,
    bound: Duration,
) -> Result<Vec<Blocker>, String> {
    bounded(bound, ask(client, site)).await
}

/// Like [`blockers_on`], on a connection checked out of `pool` (one attempt).
pub(super) async fn lookup_blockers(
    pool: &PgPool,
    site: &LockSite,
    bound: Duration,
) -> Result<Vec<Blocker>, String> {
    bounded(bound, async {
        let client = pool
            .checkout()
            .await
            .map_err(|f: PgFailure| f.to_string())?;
        ask(&client, site).await
    })
    .await
}

async fn bounded<T>(
    bound: Duration,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(bound, f).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the look-up timed out after {}",
            humantime::format_duration(bound)
        )),
    }
}

/// How many connection slots the server has and how many are taken: what a `doctor`
/// shows before "every connection slot is taken" (SQLSTATE 53300) happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// `max_connections`.
    pub max_connections: i32,
    /// Client connections open now (`pg_stat_activity`, client backends).
    pub in_use: i32,
    /// `superuser_reserved_connections`: slots only superusers may take.
    pub superuser_reserved: i32,
    /// `reserved_connections` (PostgreSQL 16+): slots for members of
    /// `pg_use_reserved_connections`; `None` on older servers.
    pub reserved: Option<i32>,
    /// `server_version_num`, e.g. 160004.
    pub server_version_num: i32,
    /// Whether this login is a superuser.
    pub login_is_superuser: bool,
    /// Whether this login is a member of `pg_use_reserved_connections` (PostgreSQL
    /// 16+); `None` on older servers.
    pub login_may_use_reserved: Option<bool>,
}

impl Headroom {
    /// Slots still open to an ordinary login (neither superuser nor reserved-role
    /// member): `max_connections` minus both reserves minus those in use.
    pub fn free_for_ordinary_logins(&self) -> i32 {
        (self.max_connections - self.superuser_reserved - self.reserved.unwrap_or(0) - self.in_use)
            .max(0)
    }
}

/// Which server answered a read, and how far behind the primary it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredBy {
    /// `host:port` of the server as it sees itself (`inet_server_addr()`), or the
    /// host the pool last connected to when that is unknown (a unix socket).
    pub host: String,
    /// True on a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
    /// `now() - pg_last_xact_replay_timestamp()` on a standby: how old the last
    /// replayed transaction is (on an idle primary this grows although nothing is
    /// missing). `None` on a primary, or on a standby that has replayed nothing yet.
    pub replay_lag: Option<Duration>,
}

impl std::fmt::Display for AnsweredBy {
    /// `answered by standby 127.0.0.1:5433, replay lag 0.4 s` or `answered by primary
    /// 127.0.0.1:5432`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.in_recovery {
            return write!(f, "answered by primary {}", self.host);
        }
        write!(f, "answered by standby {}", self.host)?;
        match self.replay_lag {
            Some(lag) => write!(f, ", replay lag {:.1} s", lag.as_secs_f64()),
            None => f.write_str(", replay lag unknown (nothing replayed yet)"),
        }
    }
}

const HEADROOM: &str = "\
SELECT current_setting('max_connections')::int, \
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int, \
       current_setting('superuser_reserved_connections')::int, \
       (SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), \
       current_setting('server_version_num')::int, \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
       CASE WHEN current_setting('server_version_num')::int >= 160000 \
            THEN pg_has_role(current_user, 'pg_use_reserved_connections', 'MEMBER') END";

const ANSWERED_BY: &str = "\
SELECT pg_is_in_recovery(), \
       CASE WHEN pg_is_in_recovery() \
            THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END, \
       host(inet_server_addr()), inet_server_port()";

impl PgPool {
    /// The sessions holding a lock on `relation` (a table name as PostgreSQL prints
    /// it in lock errors, unqualified), or on any relation of the database when
    /// `None`, that can stand in a writer's way: pid, `application_name`, login, state
    /// and how long in it. Runs under the retry policy like any read.
    pub async fn blockers_of(&self, relation: Option<&str>) -> Result<Vec<Blocker>, DbError> {
        let none: Option<&str> = None;
        let rows = self
            .query(
                "pool.blockers_of",
                BLOCKERS,
                &[(&relation, Type::TEXT), (&none, Type::TEXT)],
            )
            .await?;
        Ok(rows.iter().map(blocker_from).collect())
    }

    /// `max_connections`, the connections in use, both reserves and whether this
    /// login may use the reserved slots: for a `doctor` that warns before every slot
    /// is taken. Runs under the retry policy like any read.
    pub async fn connection_headroom(&self) -> Result<Headroom, DbError> {
        let row = self
            .query_one("pool.connection_headroom", HEADROOM, &[])
            .await?;
        Ok(Headroom {
            max_connections: row.get(0),
            in_use: row.get(1),
            superuser_reserved: row.get(2),
            reserved: row.get(3),
            server_version_num: row.get(4),
            login_is_superuser: row.get::<_, Option<bool>>(5).unwrap_or(false),
            login_may_use_reserved: row.get(6),
        })
    }

    /// Which server answers this pool's reads — primary or standby — and, on a
    /// standby, its replay lag: for a CLI to say "answered by standby host:port,
    /// replay lag 0.4 s" beside what it read through
    /// [`read_only_from_standby`](Self::read_only_from_standby). With several hosts,
    /// another pooled connection could sit on another server; the hosts are tried in
    /// the same order, so they agree unless a host failed in between.
    pub async fn answered_by(&self) -> Result<AnsweredBy, DbError> {
        let row = self.query_one("pool.answered_by", ANSWERED_BY, &[]).await?;
        let in_recovery: bool = row.get(0);
        let lag: Option<f64> = row.get(1);
        let addr: Option<String> = row.get(2);
        let port: Option<i32> = row.get(3);
        let host = match (addr, port) {
            (Some(addr), Some(port)) => format!("{addr}:{port}"),
            _ => self
                .current_host()
                .unwrap_or_else(|| "an unknown host".into()),
        };
        Ok(AnsweredBy {
            host,
            in_recovery,
            replay_lag: lag
                .filter(|s| s.is_finite())
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }
}
