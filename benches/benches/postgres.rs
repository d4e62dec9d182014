//! Kill-switch operations on a real (throw-away, loopback) PostgreSQL, each beside its
//! baseline in the same run:
//!
//! * `engage` through the store (pool + retry policy + timeouts) vs the same SQL sent
//!   raw on a plain tokio-postgres connection;
//! * the hot-path check vs a SQL query per check;
//! * engage → observed by another pool's handle through NOTIFY vs a handle that only
//!   polls every second (p50/p99 printed after the run).
//!
//! cargo bench -p tradepulse-benches --bench postgres

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use failover_core::postgres::{tokio_postgres, PgSettings};
use killswitch::{Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tradepulse_testkit::Cluster;

#[path = "common/mod.rs"]
mod common;
use common::PollOnly;

struct Fixture {
    _cluster: Cluster,
    dsn: String,
    store: Arc<PostgresKillSwitchStore>,
    raw: tokio_postgres::Client,
}

fn fixture(rt: &Runtime) -> Fixture {
    rt.block_on(async {
        let cluster = Cluster::start().await.expect("cluster");
        let db = cluster.create_database().await.expect("db");
        let dsn = cluster.primary().dsn(&db);
        let store =
            PostgresKillSwitchStore::new(PgSettings::builder().with_dsn(&dsn).build().unwrap())
                .unwrap();
        store.migrate().await.unwrap();
        let (raw, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        Fixture {
            _cluster: cluster,
            dsn,
            store: Arc::new(store),
            raw,
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fx = fixture(&rt);

    let mut group = c.benchmark_group("kill_switch_engage");
    group.sample_size(50);
    group.bench_function("PostgresKillSwitchStore::engage", |b| {
        b.to_async(&rt).iter(|| async {
            fx.store
                .engage(&Audit::new("bench", "engage"))
                .await
                .unwrap()
        })
    });
    let apply = rt.block_on(fx.raw.prepare(
        "SELECT o_engaged, o_reason, o_updated_at, o_updated_by, o_ticket, o_version, o_replayed, o_prior_action \
         FROM kill_switch_apply($1, $2, $3, $4, $5)",
    ))
    .unwrap();
    group.bench_function("baseline: same SQL sent raw", |b| {
        b.to_async(&rt).iter(|| async {
            let id = uuid::Uuid::new_v4();
            fx.raw
                .query_one(
                    &apply,
                    &[&id, &"engage", &"engage", &"bench", &None::<String>],
                )
                .await
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("kill_switch_check_vs_sql");
    let switch = rt.block_on(async {
        let s = KillSwitch::spawn(fx.store.clone(), KillSwitchConfig::default());
        s.ready(Duration::from_secs(5)).await;
        s
    });
    group.bench_function("KillSwitch::is_halted", |b| b.iter(|| switch.is_halted()));
    let select = rt
        .block_on(
            fx.raw
                .prepare("SELECT engaged FROM kill_switch_state WHERE id = 1"),
        )
        .unwrap();
    group.bench_function("baseline: SQL query per check", |b| {
        b.to_async(&rt).iter(|| async {
            let row = fx.raw.query_one(&select, &[]).await.unwrap();
            row.get::<_, bool>(0)
        })
    });
    group.finish();

    // Propagation: engage through one pool, observed by another pool's handle.
    let mut group = c.benchmark_group("kill_switch_propagation");
    group.sample_size(10);
    let mut report = Vec::new();
    for (name, poll) in [
        ("NOTIFY to another pool's handle", Duration::from_secs(3600)),
        ("baseline: handle polling every 1 s", Duration::from_secs(1)),
    ] {
        let (writer, handle) = rt.block_on(async {
            let writer = PostgresKillSwitchStore::new(
                PgSettings::builder().with_dsn(&fx.dsn).build().unwrap(),
            )
            .unwrap();
            let reader = PostgresKillSwitchStore::new(
                PgSettings::builder().with_dsn(&fx.dsn).build().unwrap(),
            )
            .unwrap();
            let reader: Arc<dyn KillSwitchStore> = if poll > Duration::from_secs(60) {
                Arc::new(reader)
            } else {
                Arc::new(PollOnly(reader))
            };
            let handle =
                KillSwitch::spawn(reader, KillSwitchConfig::default().with_poll_interval(poll));
            handle.ready(Duration::from_secs(5)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            (writer, handle)
        });
        let samples = std::sync::Mutex::new(Vec::new());
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (writer, handle, samples) = (&writer, &handle, &samples);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut rx = handle.subscribe();
                        let start = Instant::now();
                        if handle.is_halted() {
                            let audit = Audit::new("bench", "propagate").with_ticket("B-1");
                            writer.disengage(&audit).await.unwrap();
                            rx.wait_for(|t| !t.is_halted()).await.unwrap();
                        } else {
                            writer
                                .engage(&Audit::new("bench", "propagate"))
                                .await
                                .unwrap();
                            rx.wait_for(|t| t.is_halted()).await.unwrap();
                        }
                        let d = start.elapsed();
                        samples.lock().unwrap().push(d);
                        total += d;
                    }
                    total
                }
            })
        });
        let mut all = samples.into_inner().unwrap();
        all.sort();
        if !all.is_empty() {
            report.push(format!(
                "{name}: p50 {:?}, p99 {:?} over {} changes",
                percentile(&all, 0.5),
                percentile(&all, 0.99),
                all.len()
            ));
        }
    }
    group.finish();
    for line in report {
        println!("propagation {line}");
    }
    drop(switch);
    drop(fx);
}

criterion_group!(postgres, benches);
criterion_main!(postgres);
