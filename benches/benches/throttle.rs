//! `admit` (the order-rate throttle on the hot path) beside its baselines, in the
//! same run: a bare atomic load (the floor) and the `governor` crate's direct rate
//! limiter with its default (quanta) clock, both in the state a throttle is for —
//! the burst used up, every call refused.
//!
//! cargo bench -p tradepulse-benches --bench throttle

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use symbol_mode::{
    Audit, MemorySymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig, Throttle,
};

fn admit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // 1,000 symbols, 100 of them throttled at 5/s burst 5.
    let symbols: Vec<String> = (0..1_000).map(|i| format!("SYM-{i:05}")).collect();
    let (bare, modes) = runtime.block_on(async {
        let bare = SymbolModes::spawn(
            Arc::new(MemorySymbolModeStore::new()),
            SymbolModesConfig::default(),
        );
        assert!(bare.ready(Duration::from_secs(5)).await);
        let store = Arc::new(MemorySymbolModeStore::new());
        let limit = Throttle::new(5, 5).expect("limit");
        for (i, symbol) in symbols.iter().enumerate() {
            store
                .register_symbol(symbol, &Audit::new("bench", "listing"))
                .await
                .expect("register");
            if i % 10 == 0 {
                store
                    .set_throttle(symbol, Some(limit), &Audit::new("bench", "seed"))
                    .await
                    .expect("throttle");
            }
        }
        let modes = SymbolModes::spawn(store, SymbolModesConfig::default());
        assert!(modes.ready(Duration::from_secs(5)).await);
        (bare, modes)
    });
    let free = "SYM-00421";
    let throttled = "SYM-00420";
    // Use up the burst: from here on every call on the throttled symbol is refused.
    while modes.admit(throttled).is_ok() {}
    let free_gate = modes.gate(free);
    let throttled_gate = modes.gate(throttled);
    let mut reader = modes.reader();
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(5).expect("5"))
            .allow_burst(NonZeroU32::new(5).expect("5")),
    );
    while limiter.check().is_ok() {}

    let mut group = c.benchmark_group("admit");
    let word = AtomicU64::new(0);
    group.bench_function("baseline: bare atomic load", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire))
    });
    group.bench_function("unthrottled: admit, no symbol throttled", |b| {
        b.iter(|| black_box(&bare).admit(black_box(free)))
    });
    group.bench_function("unthrottled: ThrottleGate::admit", |b| {
        b.iter(|| black_box(&free_gate).admit())
    });
    group.bench_function(
        "unthrottled: ModeReader::admit, 100 of 1,000 throttled",
        |b| b.iter(|| reader.admit(black_box(free))),
    );
    group.bench_function(
        "unthrottled: SymbolModes::admit, 100 of 1,000 throttled",
        |b| b.iter(|| black_box(&modes).admit(black_box(free))),
    );
    group.bench_function("throttled (refused): ThrottleGate::admit", |b| {
        b.iter(|| black_box(&throttled_gate).admit())
    });
    group.bench_function("throttled (refused): ModeReader::admit", |b| {
        b.iter(|| reader.admit(black_box(throttled)))
    });
    group.bench_function("baseline: governor direct limiter check (refused)", |b| {
        b.iter(|| black_box(&limiter).check())
    });
    group.finish();
    drop((bare, modes));
    drop(runtime);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = admit
}
criterion_main!(benches);
