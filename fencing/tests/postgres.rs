//! Postgres-specific behaviour of leases and fenced writes on real servers: the token
//! scheme, the lease log, settings from env, migrations, fenced writes inside the
//! caller's transaction, and random interleavings of many holders in real time.

mod support;

use failover_core::postgres::PgPool;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tradepulse_fencing::postgres::{fence, token_counter, token_timeline, FENCING_SQLSTATE};
use tradepulse_fencing::{Error, Lease, LeaseFencer, PostgresLeaseFencer};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn tokens_carry_the_servers_timeline_and_count_grants() {
    let (cluster, db) = support::shared_primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    let a = store.acquire("btc-usd", "engine-a", LONG).await.unwrap();
    let rows = cluster
        .primary()
        .query(&db, "SELECT fencing_timeline()")
        .await
        .unwrap();
    let timeline: u64 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(timeline, 1, "a fresh cluster is on timeline 1");
    assert_eq!(token_timeline(a.token()), timeline);
    assert_eq!(token_counter(a.token()), 1);
    store.release(&a).await.unwrap();
    let b = store.acquire("btc-usd", "engine-b", LONG).await.unwrap();
    assert_eq!(b.token(), a.token() + 1);
}

#[tokio::test]
async fn an_application_role_without_superuser_rights_can_lease_and_fence() {
    let (cluster, db) = support::shared_primary().await;
    let primary = cluster.primary();
    support::store(&primary.dsn(&db)).await; // migrated by the owner
    primary
        .execute(
            &db,
            "CREATE ROLE trader LOGIN; \
             GRANT SELECT, INSERT, UPDATE ON fencing_leases, fencing_highest TO trader; \
             GRANT INSERT ON fencing_lease_events TO trader; \
             GRANT USAGE ON SEQUENCE fencing_lease_events_id_seq TO trader",
        )
        .await
        .unwrap();
    let dsn = primary.dsn(&db).replace("user=postgres", "user=trader");
    assert!(dsn.contains("user=trader"), "{dsn}");
    let store = PostgresLeaseFencer::new(support::settings(&dsn).build().unwrap()).unwrap();
    let lease = store.acquire("btc-usd", "engine-a", LONG).await.unwrap();
    assert_eq!(token_timeline(lease.token()), 1);
    store.renew(&lease).await.unwrap();
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    fence(&tx, "btc-usd", lease.token()).await.unwrap();
    tx.commit().await.unwrap();
    store.release(&lease).await.unwrap();
}

#[tokio::test]
async fn the_lease_log_records_grants_and_releases_and_refuses_edits() {
    let (cluster, db) = support::shared_primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    let a = store.acquire("btc-usd", "engine-a", LONG).await.unwrap();
    store.renew(&a).await.unwrap();
    store.release(&a).await.unwrap();
    store.release(&a).await.unwrap(); // a no-op is not logged
    let b = store.acquire("btc-usd", "engine-b", LONG).await.unwrap();
    // Evidence for the runbook ("verify lease/token source"): who held which token.
    let rows = cluster
        .primary()
        .query(
            &db,
            "SELECT token, holder, event FROM fencing_lease_events \
             WHERE resource = 'btc-usd' ORDER BY id",
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .into_iter()
        .map(|r| {
            let mut r = r.into_iter().map(Option::unwrap);
            (r.next().unwrap(), r.next().unwrap(), r.next().unwrap())
        })
        .collect();
    let (ta, tb) = (a.token().to_string(), b.token().to_string());
    assert_eq!(
        got,
        [
            (ta.clone(), "engine-a".into(), "acquire".into()),
            (ta, "engine-a".into(), "release".into()),
            (tb, "engine-b".into(), "acquire".into()),
        ]
    );
    for sql in [
        "UPDATE fencing_lease_events SET holder = 'x'",
        "DELETE FROM fencing_lease_events",
        "TRUNCATE fencing_lease_events",
    ] {
        let err = cluster.primary().execute(&db, sql).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_queued_behind_a_newer_one_is_refused_once_the_newer_commits() {
    let (cluster, db) = support::shared_primary().await;
    let log = support::PgFencedLog::new(&cluster.primary().dsn(&db)).await;
    let pool = log.pool.clone();

    // The new leader (token 7) is mid-transaction: fenced, written, not committed.
    let mut newer = pool.get().await.unwrap();
    let tx = newer.transaction().await.unwrap();
    fence(&tx, "btc-usd", 7).await.unwrap();
    tx.execute(
        "INSERT INTO fenced_log (resource, token, entry) VALUES ('btc-usd', 7, 'new leader')",
        &[],
    )
    .await
    .unwrap();

    // The old leader (token 5) arrives now; it must wait for the resource's row.
    let stale = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let checked = fence(&tx, "btc-usd", 5).await;
            if checked.is_ok() {
                tx.execute(
                    "INSERT INTO fenced_log (resource, token, entry) VALUES ('btc-usd', 5, 'stale')",
                    &[],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
            checked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stale.is_finished(),
        "the stale writer waits on the row lock"
    );
    tx.commit().await.unwrap();
    let err = stale.await.unwrap().expect_err("refused after the commit");
    assert!(
        matches!(
            err,
            Error::FencingToken {
                token: 5,
                highest: 7,
                ..
            }
        ),
        "{err:?}"
    );
    use tradepulse_fencing::conformance::FencedLog;
    let entries = log.entries("btc-usd").await;
    assert_eq!(entries, [(7, "new leader".to_string())]);
}

#[tokio::test]
async fn fencing_check_works_from_plain_sql_inside_pgpool_run() {
    let (cluster, db) = support::shared_primary().await;
    let log = support::PgFencedLog::new(&cluster.primary().dsn(&db)).await;
    let write = |token: i64| {
        let pool: PgPool = log.pool.clone();
        async move {
            pool.run("demo.fenced_write", |c| {
                Box::pin(async move {
                    c.batch_execute("BEGIN").await?;
                    c.execute("SELECT fencing_check('btc-usd', $1)", &[&token])
                        .await?;
                    c.execute(
                        "INSERT INTO fenced_log (resource, token, entry) VALUES ('btc-usd', $1, 'w')",
                        &[&token],
                    )
                    .await?;
                    c.batch_execute("COMMIT").await
                })
            })
            .await
        }
    };
    write(42).await.unwrap();
    let db_err = write(41).await.expect_err("stale");
    assert_eq!(db_err.sqlstate(), Some(FENCING_SQLSTATE));
    assert!(!db_err.class().eq(&failover_core::ErrorClass::Retryable));
    let err = Error::from(db_err);
    assert_eq!(
        err.to_string(),
        "FENCING_TOKEN: token 41 is older than 42 for resource btc-usd"
    );
    assert!(matches!(
        err,
        Error::FencingToken {
            token: 41,
            highest: 42,
            ..
        }
    ));
}

/// One holder's view of a lease it was granted or renewed: valid for it from when the
/// answer arrived until the instant before the request plus the ttl — inside the
/// interval the server itself considers the lease valid.
#[derive(Debug, Clone)]
struct Held {
    holder: usize,
    token: u64,
    from: Instant,
    until: Instant,
}

#[derive(Debug, Default)]
struct History {
    held: Vec<Held>,
    /// (holder, token, instant): the holder let the lease go by sending a release or
    /// a new acquire.
    let_go: Vec<(usize, u64, Instant)>,
    /// (token, sent, answered) of every grant
    grants: Vec<(u64, Instant, Instant)>,
}

/// Acceptance: random interleavings of acquire/renew/release/expiry by several holders,
/// against the database clock in real time. At no instant do two holders hold an
/// unexpired lease, and tokens strictly increase in the order they were granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_of_holders_keep_one_holder_and_rising_tokens() {
    let (cluster, db) = support::shared_primary().await;
    let store: Arc<dyn LeaseFencer> = Arc::new(support::store(&cluster.primary().dsn(&db)).await);
    let history = Arc::new(Mutex::new(History::default()));
    let until = Instant::now() + Duration::from_secs(4);
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let tasks: Vec<_> = (0..4)
        .map(|holder| {
            let (store, history) = (store.clone(), history.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed + holder as u64);
                let name = format!("holder-{holder}");
                let mut mine: Option<Lease> = None;
                while Instant::now() < until {
                    let ttl = Duration::from_millis(rng.gen_range(40..150));
                    let sent = Instant::now();
                    let mine_before = mine.clone();
                    match (rng.gen_range(0..4), mine.take()) {
                        (0 | 1, None) | (0, Some(_)) => {
                            if let Some(old) = &mine_before {
                                // Acquiring again supersedes the holder's own lease.
                                history
                                    .lock()
                                    .unwrap()
                                    .let_go
                                    .push((holder, old.token(), sent));
                            }
                            match store.acquire("btc-usd", &name, ttl).await {
                                Ok(lease) => {
                                    let answered = Instant::now();
                                    let mut h = history.lock().unwrap();
                                    h.grants.push((lease.token(), sent, answered));
                                    h.held.push(Held {
                                        holder,
                                        token: lease.token(),
                                        from: answered,
                                        until: sent + ttl,
                                    });
                                    mine = Some(lease);
                                }
                                Err(Error::Held { .. }) => {}
                                Err(e) => panic!("acquire: {e}"),
                            }
                        }
                        (1 | 2, Some(lease)) => match store.renew(&lease).await {
                            Ok(renewed) => {
                                let answered = Instant::now();
                                history.lock().unwrap().held.push(Held {
                                    holder,
                                    token: renewed.token(),
                                    from: answered,
                                    until: sent + renewed.ttl(),
                                });
                                mine = Some(renewed);
                            }
                            Err(Error::LeaseLost { .. }) => {}
                            Err(e) => panic!("renew: {e}"),
                        },
                        (3, Some(lease)) => {
                            history
                                .lock()
                                .unwrap()
                                .let_go
                                .push((holder, lease.token(), sent));
                            store.release(&lease).await.expect("release");
                        }
                        (_, kept) => mine = kept,
                    }
                    // Sometimes long enough for the lease to expire.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..100))).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let h = history.lock().unwrap();
    // Letting go ends the holder's claim when the request was sent.
    let held: Vec<Held> = h
        .held
        .iter()
        .map(|g| {
            let end = h
                .let_go
                .iter()
                .filter(|(holder, token, at)| {
                    *holder == g.holder && *token == g.token && *at >= g.from
                })
                .map(|(_, _, at)| *at)
                .min()
                .map_or(g.until, |at| at.min(g.until));
            Held {
                until: end,
                ..g.clone()
            }
        })
        .filter(|g| g.from < g.until)
        .collect();
    let mut overlaps = Vec::new();
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            if a.holder != b.holder && a.from < b.until && b.from < a.until {
                overlaps.push((a.clone(), b.clone()));
            }
        }
    }
    assert!(overlaps.is_empty(), "two holders at once: {overlaps:?}");

    let mut tokens = HashMap::new();
    for (token, _, _) in &h.grants {
        assert!(
            tokens.insert(*token, ()).is_none(),
            "token {token} issued twice"
        );
    }
    for a in &h.grants {
        for b in &h.grants {
            if a.2 < b.1 {
                assert!(a.0 < b.0, "token {} granted after token {}", b.0, a.0);
            }
        }
    }
    let handovers = h.grants.len();
    eprintln!(
        "random interleavings: {handovers} grants, {} held intervals, {} let go, no overlap",
        held.len(),
        h.let_go.len()
    );
    assert!(
        handovers >= 20,
        "only {handovers} grants: the test exercised too little"
    );
}
