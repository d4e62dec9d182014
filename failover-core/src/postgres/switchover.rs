//! Planned switchover (make the primary read-only, then promote the replica) and
//! emergency failover (promote the replica of a dead primary).
//!
//! * [`planned_switchover`] — make the primary read-only (`ALTER SYSTEM SET
//!   default_transaction_read_only = on` + reload), wait until the replica has
//!   replayed the primary's last LSN, promote it (`pg_promote`), verify a write on
//!   it, and report each phase's duration. No acknowledged write is lost.
//! * [`emergency_failover`] — the primary is gone: ask every candidate replica for its
//!   replay position, promote the healthiest one (highest replay LSN), verify a write,
//!   and report the estimated data-loss window from the replay timestamps.
//!
//! Both need a superuser (or a role allowed to run `ALTER SYSTEM` and `pg_promote`).
//! Every statement is bounded by the operation timeout of the settings used.

use super::pool::PgPool;
use super::settings::PgSettings;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A switchover or failover step that failed; says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{phase} failed: {message}")]
pub struct SwitchoverError {
    /// The phase, e.g. `wait for replay`.
    pub phase: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

/// The duration of one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// How long it took.
    pub took: Duration,
}

/// What a planned switchover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverReport {
    /// Each phase, in order.
    pub phases: Vec<Phase>,
    /// The primary's last WAL position when it turned read-only.
    pub primary_lsn: String,
    /// The replica's replay position when it was promoted (≥ `primary_lsn`).
    pub replayed_lsn: String,
}

impl SwitchoverReport {
    /// Total time of all phases.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.took).sum()
    }
}

/// One replica's replay position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index into the candidate list.
    pub index: usize,
    /// Replay position, as text (`0/3000148`).
    pub replay_lsn: String,
    /// Replay position as a number, for comparison.
    pub replay_lsn_bytes: u64,
    /// Commit time of the last replayed transaction, if any.
    pub last_replayed_commit: Option<SystemTime>,
}

/// What an emergency failover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverReport {
    /// Every candidate that answered.
    pub candidates: Vec<Candidate>,
    /// The promoted one.
    pub promoted: usize,
    /// Time since the last replayed commit when promotion started: an upper estimate
    /// of the window of commits that may be lost (asynchronous replication).
    pub estimated_loss_window: Option<Duration>,
    /// Each phase, in order.
    pub phases: Vec<Phase>,
}

fn admin_pool(dsn: &str, template: &PgSettings) -> Result<PgPool, SwitchoverError> {
    // Standbys must be reachable for inspection: no read-write targeting here.
    let dsn = if dsn.contains("target_session_attrs") {
        dsn.to_owned()
    } else if dsn.contains("://") {
        let sep = if dsn.contains('?') { '&' } else { '?' };
        format!("{dsn}{sep}target_session_attrs=any")
    } else {
        format!("{dsn} target_session_attrs=any")
    };
    let settings = template.with_dsn(&dsn).map_err(|e| SwitchoverError {
        phase: "connect",
        message: e.to_string(),
    })?;
    PgPool::new("switchover", settings).map_err(|e| SwitchoverError {
        phase: "connect",
        message: e.to_string(),
    })
}

async fn one(
    pool: &PgPool,
    phase: &'static str,
    sql: &'static str,
) -> Result<Option<String>, SwitchoverError> {
    pool.run(phase, |c| {
        Box::pin(async move {
            let rows = c.simple_query(sql).await?;
            Ok(rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            }))
        })
    })
    .await
    .map_err(|e| SwitchoverError {
        phase,
        message: e.to_string(),
    })
}

/// Parses `X/Y` LSN text into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

async fn timed<T, F>(
    phases: &mut Vec<Phase>,
    name: &'static str,
    f: F,
) -> Result<T, SwitchoverError>
where
    F: std::future::Future<Output = Result<T, SwitchoverError>>,
{
    let start = Instant::now();
    let out = f.await;
    phases.push(Phase {
        name,
        took: start.elapsed(),
    });
    out
}

async fn promote_and_verify(pool: &PgPool, phases: &mut Vec<Phase>) -> Result<(), SwitchoverError> {
    timed(phases, "promote", async {
        match one(pool, "promote", "SELECT pg_promote(true, 60)")
            .await?
            .as_deref()
        {
            Some("t") => Ok(()),
            other => Err(SwitchoverError {
                phase: "promote",
                message: format!("pg_promote returned {other:?}: check the replica's log"),
            }),
        }
    })
    .await?;
    timed(phases, "verify write", async {
        // txid_current() needs a writable transaction: it fails on a standby or a
        // read-only server.
        one(pool, "verify write", "SELECT txid_current()")
            .await
            .map(|_| ())
    })
    .await
}

/// Planned switchover from `primary_dsn` to `replica_dsn` (single-host DSNs), with
/// the timeouts of `settings`; `replay_timeout` bounds the wait for the replica.
pub async fn planned_switchover(
    settings: &PgSettings,
    primary_dsn: &str,
    replica_dsn: &str,
    replay_timeout: Duration,
) -> Result<SwitchoverReport, SwitchoverError> {
    let primary = admin_pool(primary_dsn, settings)?;
    let replica = admin_pool(replica_dsn, settings)?;
    let mut phases = Vec::new();
    if one(&replica, "check replica", "SELECT pg_is_in_recovery()")
        .await?
        .as_deref()
        != Some("t")
    {
        return Err(SwitchoverError {
            phase: "check replica",
            message: "the target is not a standby: nothing to promote".into(),
        });
    }
    timed(&mut phases, "make primary read-only", async {
        one(
            &primary,
            "make primary read-only",
            "ALTER SYSTEM SET default_transaction_read_only = on",
        )
        .await?;
        one(
            &primary,
            "make primary read-only",
            "SELECT pg_reload_conf()",
        )
        .await?;
        // Sessions already open see the new default at their next transaction;
        // those in a transaction now are ended so no write can slip in after the LSN.
        one(
            &primary,
            "make primary read-only",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'",
        )
        .await
        .map(|_| ())
    })
    .await?;
    let primary_lsn = one(
        &primary,
        "read primary LSN",
        "SELECT pg_current_wal_lsn()::text",
    )
    .await?
    .unwrap_or_default();
    let target = parse_lsn(&primary_lsn).ok_or_else(|| SwitchoverError {
        phase: "read primary LSN",
        message: format!("unexpected LSN '{primary_lsn}'"),
    })?;
    let replayed_lsn = timed(&mut phases, "wait for replay", async {
        let deadline = Instant::now() + replay_timeout;
        loop {
            let lsn = one(&replica, "wait for replay", "SELECT pg_last_wal_replay_lsn()::text")
                .await?
                .unwrap_or_default();
            if parse_lsn(&lsn).is_some_and(|l| l >= target) {
                return Ok(lsn);
            }
            if Instant::now() >= deadline {
                return Err(SwitchoverError {
                    phase: "wait for replay",
                    message: format!(
                        "replica replayed {lsn}, primary is at {primary_lsn} after {replay_timeout:?}: \
                         replication is lagging or broken; the primary stays read-only, \
                         undo with ALTER SYSTEM RESET default_transaction_read_only"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    promote_and_verify(&replica, &mut phases).await?;
    Ok(SwitchoverReport {
        phases,
        primary_lsn,
        replayed_lsn,
    })
}

/// Emergency failover: the primary is lost. Promotes the candidate replica with the
/// highest replay LSN and reports the estimated data-loss window.
pub async fn emergency_failover(
    settings: &PgSettings,
    replica_dsns: &[String],
) -> Result<FailoverReport, SwitchoverError> {
    let mut phases = Vec::new();
    let mut candidates = Vec::new();
    let mut pools = Vec::new();
    let started = SystemTime::now();
    timed(&mut phases, "inspect replicas", async {
        for (index, dsn) in replica_dsns.iter().enumerate() {
            let pool = admin_pool(dsn, settings)?;
            let row = pool
                .run("inspect replica", |c| {
                    Box::pin(async move {
                        c.query_one(
                            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                             pg_last_xact_replay_timestamp()",
                            &[],
                        )
                        .await
                    })
                })
                .await;
            match row {
                Ok(row) if row.get::<_, bool>(0) => {
                    let lsn: Option<String> = row.get(1);
                    let lsn = lsn.unwrap_or_default();
                    candidates.push(Candidate {
                        index,
                        replay_lsn_bytes: parse_lsn(&lsn).unwrap_or(0),
                        replay_lsn: lsn,
                        last_replayed_commit: row.get(2),
                    });
                }
                Ok(_) => tracing::warn!(index, "candidate is not a standby; skipped"),
                Err(e) => tracing::warn!(index, error = %e, "candidate unreachable; skipped"),
            }
            pools.push(pool);
        }
        if candidates.is_empty() {
            return Err(SwitchoverError {
                phase: "inspect replicas",
                message: "no reachable standby among the candidates".into(),
            });
        }
        Ok(())
    })
    .await?;
    let best = candidates
        .iter()
        .max_by_key(|c| c.replay_lsn_bytes)
        .expect("at least one candidate")
        .clone();
    let estimated_loss_window = best
        .last_replayed_commit
        .and_then(|t| started.duration_since(t).ok());
    promote_and_verify(&pools[best.index], &mut phases).await?;
    Ok(FailoverReport {
        candidates,
        promoted: best.index,
        estimated_loss_window,
        phases,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsns_parse_and_order() {
        assert_eq!(super::parse_lsn("0/3000148"), Some(0x300_0148));
        assert!(super::parse_lsn("1/0").unwrap() > super::parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(super::parse_lsn("garbage"), None);
    }
}
