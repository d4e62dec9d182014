//! The tamper-evident audit log:
//!
//! * verifying an export (format 2) of 100,000 and 1,000,000 entries in memory (no
//!   database): check every line's layout, hash every entry, check indices, rebuild
//!   the root;
//! * what the log's trigger adds to a kill-switch engage on a real (throw-away,
//!   loopback) PostgreSQL: the same engage with the trigger enabled and disabled, in
//!   the same run (p50/p99 of 2,000 engages each printed after the run).
//!
//! cargo bench -p tradepulse-benches --bench audit_log

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use failover_core::audit_log::{
    header_line, leaf_hash, verify_export, AuditRecord, ExportLine, RightEdge, TreeHead,
};
use failover_core::postgres::{tokio_postgres, PgSettings};
use killswitch::{Audit, KillSwitchStore, PostgresKillSwitchStore};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tradepulse_testkit::Cluster;

/// An export of `n` entries shaped like the controls' (kill switch and symbol mode
/// events alternating).
fn export(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 600);
    out.extend_from_slice(header_line().as_bytes());
    out.push(b'\n');
    let mut tree = RightEdge::new();
    for i in 0..n {
        let record = AuditRecord {
            control: if i % 2 == 0 {
                "kill_switch"
            } else {
                "symbol_mode"
            }
            .into(),
            position: (1 << 40) + i,
            request_id: Some(format!("3f1e2d4c-5b6a-4798-8a9b-{i:012x}")),
            action: if i % 2 == 0 {
                "engage"
            } else {
                "SetSymbolMode"
            }
            .into(),
            actor: "ops:alice@desk-7".into(),
            reason: Some(format!("runaway algo on venue {i}: halting until reviewed")),
            ticket: Some(format!("INC-{i}")),
            at: "2025-01-31T09:30:00.123456Z".into(),
            details: BTreeMap::from([
                ("authority".to_owned(), "supervisor".into()),
                ("engaged".to_owned(), true.into()),
                ("login".to_owned(), "alice".into()),
                ("version".to_owned(), i.into()),
            ]),
        };
        let leaf = leaf_hash(record.canonical().as_bytes());
        tree.push(leaf);
        let line = ExportLine {
            index: i,
            control: record.control.clone(),
            position: record.position,
            record: Some(record),
            leaf: failover_core::audit_log::hex(&leaf),
        };
        out.extend_from_slice(line.line().as_bytes());
        out.push(b'\n');
    }
    let head = TreeHead {
        size: n,
        root: tree.root(),
    };
    out.extend_from_slice(head.line().as_bytes());
    out.push(b'\n');
    out
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_log_verify");
    group.sample_size(10);
    for n in [100_000u64, 1_000_000] {
        let bytes = export(n);
        println!("export of {n} entries: {} bytes", bytes.len());
        group.throughput(criterion::Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("verify_export", n), &bytes, |b, bytes| {
            b.iter(|| {
                let v = verify_export(std::io::Cursor::new(bytes), |_| {}).unwrap();
                assert_eq!(v.head.size, n);
            })
        });
    }
    group.finish();

    // The same verification timed by this thread's CPU time (Linux schedstat), which
    // other processes on a shared machine do not inflate the way they do wall time.
    let n = 1_000_000u64;
    let bytes = export(n);
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (c0, w0) = (thread_cpu(), Instant::now());
        let v = verify_export(std::io::Cursor::new(&bytes), |_| {}).unwrap();
        wall.push(w0.elapsed());
        if let (Some(c0), Some(c1)) = (c0, thread_cpu()) {
            cpu.push(c1 - c0);
        }
        assert_eq!(v.head.size, n);
    }
    cpu.sort();
    wall.sort();
    println!(
        "verify_export of {n} entries ({} bytes), one thread, 5 runs: CPU min {:?} median {:?}; wall min {:?} median {:?}",
        bytes.len(),
        cpu.first(),
        cpu.get(cpu.len() / 2),
        wall[0],
        wall[wall.len() / 2]
    );
}

/// This thread's CPU time so far, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn append_cost(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_cluster, store, raw) = rt.block_on(async {
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
        (cluster, store, raw)
    });
    let trigger = |on: bool| {
        rt.block_on(raw.batch_execute(&format!(
            "ALTER TABLE kill_switch_events {} TRIGGER audit_log_append",
            if on { "ENABLE" } else { "DISABLE" }
        )))
        .unwrap()
    };
    let engage = || async { store.engage(&Audit::new("bench", "engage")).await.unwrap() };

    let mut group = c.benchmark_group("kill_switch_engage_audit_log");
    group.sample_size(50);
    trigger(true);
    group.bench_function("engage, appended to the audit log", |b| {
        b.to_async(&rt).iter(engage)
    });
    trigger(false);
    group.bench_function("baseline: engage, log trigger disabled", |b| {
        b.to_async(&rt).iter(engage)
    });
    group.finish();

    // Interleaved rounds, so that both see the same table sizes and server state.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..4_000 {
        let on = round % 2 == 0;
        trigger(on);
        let start = Instant::now();
        rt.block_on(engage());
        let took = start.elapsed();
        if on {
            with.push(took);
        } else {
            without.push(took);
        }
    }
    trigger(true);
    with.sort();
    without.sort();
    println!(
        "engage with the audit log: p50 {:?} p99 {:?}; without: p50 {:?} p99 {:?}; added at p99: {:?}",
        percentile(&with, 0.5),
        percentile(&with, 0.99),
        percentile(&without, 0.5),
        percentile(&without, 0.99),
        percentile(&with, 0.99).saturating_sub(percentile(&without, 0.99)),
    );
    let _ = store.pool().settings();
}

criterion_group!(benches, verify, append_cost);
criterion_main!(benches);
