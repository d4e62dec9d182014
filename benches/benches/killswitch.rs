//! Kill-switch hot-path check beside its baselines, in the same run:
//! a bare atomic load (the floor), a `std::sync::RwLock` read and a
//! `tokio::sync::RwLock` read (what a naive shared flag costs).
//!
//! cargo bench -p tradepulse-benches --bench killswitch

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicBool, Ordering};

#[path = "common/mod.rs"]
mod common;

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let switch = common::ready_memory_switch(&runtime);

    let mut group = c.benchmark_group("kill_switch_check");
    group.bench_function("KillSwitch::check", |b| {
        b.iter(|| black_box(&switch).check().is_ok())
    });
    group.bench_function("KillSwitch::is_halted", |b| {
        b.iter(|| black_box(&switch).is_halted())
    });
    let flag = AtomicBool::new(false);
    group.bench_function("baseline: AtomicBool load", |b| {
        b.iter(|| black_box(&flag).load(Ordering::Acquire))
    });
    let std_lock = std::sync::RwLock::new(false);
    group.bench_function("baseline: std RwLock read", |b| {
        b.iter(|| *black_box(&std_lock).read().expect("not poisoned"))
    });
    let tokio_lock = tokio::sync::RwLock::new(false);
    group.bench_function("baseline: tokio RwLock try_read", |b| {
        b.iter(|| *black_box(&tokio_lock).try_read().expect("uncontended"))
    });
    group.finish();
    drop(switch);
    drop(runtime);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
