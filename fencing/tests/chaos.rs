//! Chaos on a real PostgreSQL: three electors contend for one resource for 200 lease
//! periods, each in its own "process" (a thread running its own runtime, with its own
//! pools). At random moments the leader is frozen — the whole thread blocks, so its
//! renewals, timers and connections stop like under SIGSTOP — for two to four lease
//! periods, and on waking writes at once through the fenced helper with the token it
//! held before the pause. Every such write that comes after a newer token was written
//! must be refused, and the resource's history must never go back to an older token.

mod support;

use failover_core::postgres::PgPool;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tradepulse_fencing::postgres::fence;
use tradepulse_fencing::{ElectorConfig, Error, LeaderElector, PostgresLeaseFencer};

const RESOURCE: &str = "btc-usd";
const CONTENDERS: usize = 3;
const TTL: Duration = Duration::from_millis(150);
const LEASE_PERIODS: u32 = 200;
/// Chance per write loop turn (every ~10 ms) that a leader freezes: about once per
/// three to four lease periods of leadership.
const FREEZE_CHANCE: f64 = 0.02;

#[derive(Debug, Default)]
struct Stats {
    /// Newest token whose write is known to have committed.
    max_committed: AtomicU64,
    writes: AtomicU64,
    freezes: AtomicU64,
    /// Writes after a freeze whose token was older than one already written.
    stale: AtomicU64,
    stale_refused: AtomicU64,
    /// Writes after a freeze before any newer token had been written: the resource
    /// cannot know yet that a newer leader exists, so either answer is correct.
    woke_first_accepted: AtomicU64,
    woke_first_refused: AtomicU64,
    /// Writes by a leader within its deadline that were refused anyway.
    live_refused: AtomicU64,
    errors: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
}

enum WriteError {
    Fenced,
    Other(String),
}

async fn fenced_write(pool: &PgPool, token: u64, writer: &str) -> Result<(), WriteError> {
    let other = |e: &dyn std::fmt::Display| WriteError::Other(e.to_string());
    let attempt = async {
        let mut client = pool.get().await.map_err(|e| other(&e))?;
        let tx = client.transaction().await.map_err(|e| other(&e))?;
        match fence(&tx, RESOURCE, token).await {
            Ok(()) => {}
            Err(Error::FencingToken { .. }) => return Err(WriteError::Fenced),
            Err(e) => return Err(other(&e)),
        }
        tx.execute(
            "INSERT INTO chaos_history (token, writer) VALUES ($1, $2)",
            &[&(token as i64), &writer],
        )
        .await
        .map_err(|e| other(&e))?;
        tx.commit().await.map_err(|e| other(&e))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(WriteError::Other("write timed out".into())))
}

async fn contender(id: usize, dsn: String, until: Instant, seed: u64, stats: Arc<Stats>) {
    let settings = || {
        support::settings(&dsn)
            .with_operation_timeout(Duration::from_millis(500))
            .with_retry_budget(Duration::from_secs(1))
            .build()
            .unwrap()
    };
    let store = Arc::new(PostgresLeaseFencer::new(settings()).unwrap());
    let writes = PgPool::new("chaos-writer", settings()).unwrap();
    let name = format!("engine-{id}");
    let elector =
        LeaderElector::try_spawn(store, ElectorConfig::new(RESOURCE, &name, TTL)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + id as u64);
    while Instant::now() < until {
        let Some(token) = elector.leadership().token() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if rng.gen_bool(FREEZE_CHANCE) {
            let pause = TTL.mul_f64(rng.gen_range(2.0..4.0));
            // Deliberately blocking: this thread is the whole "process", so nothing of
            // it runs while it sleeps — like a GC pause or SIGSTOP.
            std::thread::sleep(pause);
            stats.freezes.fetch_add(1, Ordering::SeqCst);
            let newer_written = stats.max_committed.load(Ordering::SeqCst) > token;
            match fenced_write(&writes, token, &name).await {
                Ok(()) if newer_written => stats.violations.lock().unwrap().push(format!(
                    "{name} wrote with stale token {token} after {} was written",
                    stats.max_committed.load(Ordering::SeqCst)
                )),
                Ok(()) => {
                    stats.woke_first_accepted.fetch_add(1, Ordering::SeqCst);
                    stats.max_committed.fetch_max(token, Ordering::SeqCst);
                }
                Err(WriteError::Fenced) if newer_written => {
                    stats.stale_refused.fetch_add(1, Ordering::SeqCst);
                }
                Err(WriteError::Fenced) => {
                    stats.woke_first_refused.fetch_add(1, Ordering::SeqCst);
                }
                Err(WriteError::Other(e)) => stats.errors.lock().unwrap().push(e),
            }
            if newer_written {
                stats.stale.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        match fenced_write(&writes, token, &name).await {
            Ok(()) => {
                stats.writes.fetch_add(1, Ordering::SeqCst);
                stats.max_committed.fetch_max(token, Ordering::SeqCst);
            }
            Err(WriteError::Fenced) => {
                stats.live_refused.fetch_add(1, Ordering::SeqCst);
            }
            Err(WriteError::Other(e)) => stats.errors.lock().unwrap().push(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    elector.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_electors_with_a_frozen_leader_never_let_a_stale_write_through() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    let log = support::PgFencedLog::new(&dsn).await;
    log.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE chaos_history (
                id     BIGSERIAL   PRIMARY KEY,
                token  BIGINT      NOT NULL,
                writer TEXT        NOT NULL,
                at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )",
        )
        .await
        .unwrap();

    let stats = Arc::new(Stats::default());
    let seed: u64 = rand::thread_rng().gen();
    let started = Instant::now();
    let until = started + TTL * LEASE_PERIODS;
    let threads: Vec<_> = (0..CONTENDERS)
        .map(|id| {
            let (dsn, stats) = (dsn.clone(), stats.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(contender(id, dsn, until, seed, stats))
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for t in threads {
            t.join().expect("contender panicked");
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();

    // The resource's history, in commit order (the fence serialises writers on the
    // resource's row before the INSERT draws its id).
    let client = log.pool.get().await.unwrap();
    let history: Vec<(u64, String)> = client
        .query("SELECT token, writer FROM chaos_history ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
        .collect();
    let holders: HashMap<u64, String> = client
        .query(
            "SELECT token, holder FROM fencing_lease_events WHERE event = 'acquire' AND resource = $1",
            &[&RESOURCE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
        .collect();
    let regressions: Vec<_> = history.windows(2).filter(|w| w[1].0 < w[0].0).collect();
    let foreign: Vec<_> = history
        .iter()
        .filter(|(token, writer)| holders.get(token) != Some(writer))
        .collect();
    let leaderships = {
        let mut tokens: Vec<u64> = history.iter().map(|(t, _)| *t).collect();
        tokens.dedup();
        tokens.len()
    };

    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let errors = stats.errors.lock().unwrap().clone();
    eprintln!(
        "chaos: {CONTENDERS} electors, ttl {TTL:?}, {:.0} lease periods in {elapsed:.1?}, seed {seed}\n\
         chaos: {} committed writes under {leaderships} leaderships ({} grants), {} history rows\n\
         chaos: {} freezes; {} stale writes after waking, {} refused (FENCING_TOKEN); \
         woke before any newer write: {} accepted, {} refused\n\
         chaos: {} refused writes by a leader within its deadline, {} other errors, \
         {} regressions in the history, {} rows under a token their writer did not hold",
        elapsed.as_secs_f64() / TTL.as_secs_f64(),
        n(&stats.writes),
        holders.len(),
        history.len(),
        n(&stats.freezes),
        n(&stats.stale),
        n(&stats.stale_refused),
        n(&stats.woke_first_accepted),
        n(&stats.woke_first_refused),
        n(&stats.live_refused),
        errors.len(),
        regressions.len(),
        foreign.len(),
    );
    let violations = stats.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "stale writes got through: {violations:?}"
    );
    assert_eq!(n(&stats.stale), n(&stats.stale_refused));
    assert!(regressions.is_empty(), "history went back: {regressions:?}");
    assert!(
        foreign.is_empty(),
        "writes under tokens never granted to their writer: {foreign:?}"
    );
    assert!(errors.len() <= 3, "unexpected errors: {errors:?}");
    // The run must have exercised what it claims to.
    assert!(elapsed >= TTL * LEASE_PERIODS);
    assert!(
        n(&stats.freezes) >= 10,
        "only {} freezes",
        n(&stats.freezes)
    );
    assert!(
        n(&stats.stale) >= 5,
        "only {} stale writes",
        n(&stats.stale)
    );
    assert!(leaderships >= 10, "only {leaderships} leaderships");
}
