//! Fencing beside its baselines, in the same run:
//!
//! * the in-memory fenced-token check (`MemoryFence::write` with an empty write) vs a
//!   bare `Mutex<u64>` compare-and-advance;
//! * `PostgresLeaseFencer::acquire` and `renew` on a real loopback PostgreSQL vs the
//!   same SQL sent raw on a plain tokio-postgres connection (target: p50 ≤ 1.3×).
//!
//! cargo bench -p tradepulse-benches --bench fencing

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use failover_core::postgres::{tokio_postgres, PgSettings};
use fencing::{LeaseFencer, MemoryFence, PostgresLeaseFencer};
use std::sync::Mutex;
use std::time::Duration;
use tradepulse_testkit::Cluster;

fn fence_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("fenced_token_check");
    let fence = MemoryFence::new();
    fence
        .write("btc-usd", 42, || Ok::<_, fencing::Error>(()))
        .unwrap();
    group.bench_function("MemoryFence::write (empty write)", |b| {
        b.iter(|| {
            fence.write(black_box("btc-usd"), black_box(42), || {
                Ok::<_, fencing::Error>(())
            })
        })
    });
    let highest = Mutex::new(42u64);
    group.bench_function("baseline: Mutex<u64> compare-and-advance", |b| {
        b.iter(|| {
            let mut h = highest.lock().unwrap();
            let token = black_box(42u64);
            if token >= *h {
                *h = token;
                true
            } else {
                false
            }
        })
    });
    group.finish();
}

fn leases(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_cluster, store, raw) = rt.block_on(async {
        let cluster = Cluster::start().await.expect("cluster");
        let db = cluster.create_database().await.expect("db");
        let dsn = cluster.primary().dsn(&db);
        let store = PostgresLeaseFencer::new(PgSettings::builder().with_dsn(&dsn).build().unwrap())
            .unwrap();
        store.migrate().await.unwrap();
        let (raw, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        (cluster, store, raw)
    });
    let ttl = Duration::from_secs(30);
    let ttl_us = ttl.as_micros() as i64;

    let mut group = c.benchmark_group("lease_acquire");
    group.sample_size(50);
    // Re-acquiring by the same holder takes a new token each time, like a fresh grant.
    group.bench_function("PostgresLeaseFencer::acquire", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .acquire("bench-acquire", "engine-a", ttl)
                .await
                .unwrap()
        })
    });
    let acquire = rt
        .block_on(raw.prepare(
            "SELECT o_granted, o_holder, o_token, o_expires_in_us FROM fencing_acquire($1, $2, $3)",
        ))
        .unwrap();
    group.bench_function("baseline: same SQL sent raw", |b| {
        b.to_async(&rt).iter(|| async {
            raw.query_one(&acquire, &[&"bench-acquire-raw", &"engine-a", &ttl_us])
                .await
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("lease_renew");
    group.sample_size(50);
    let lease = rt
        .block_on(store.acquire("bench-renew", "engine-a", ttl))
        .unwrap();
    group.bench_function("PostgresLeaseFencer::renew", |b| {
        b.to_async(&rt)
            .iter(|| async { store.renew(&lease).await.unwrap() })
    });
    let raw_lease = rt
        .block_on(raw.query_one(&acquire, &[&"bench-renew-raw", &"engine-a", &ttl_us]))
        .unwrap();
    let raw_token: i64 = raw_lease.get(2);
    let renew = rt
        .block_on(raw.prepare(
            "SELECT o_renewed, o_holder, o_token, o_expired FROM fencing_renew($1, $2, $3, $4)",
        ))
        .unwrap();
    group.bench_function("baseline: same SQL sent raw", |b| {
        b.to_async(&rt).iter(|| async {
            raw.query_one(
                &renew,
                &[&"bench-renew-raw", &"engine-a", &raw_token, &ttl_us],
            )
            .await
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, fence_check, leases);
criterion_main!(benches);
