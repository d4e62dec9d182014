//! Effective-mode lookup over 10,000 symbols beside its baselines, in the same run:
//! the same `HashMap` behind a `std::sync::RwLock` (what a naive shared table costs)
//! and a std `HashMap` with the default SipHash hasher.
//!
//! cargo bench -p tradepulse-benches --bench symbol_mode

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use symbol_mode::{
    Audit, MemorySymbolModeStore, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig,
    TradingAction,
};

fn lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let symbols: Vec<String> = (0..10_000).map(|i| format!("SYM-{i:05}")).collect();
    let modes = runtime.block_on(async {
        let store = Arc::new(MemorySymbolModeStore::new());
        for (i, symbol) in symbols.iter().enumerate() {
            store
                .register_symbol(symbol, &Audit::new("bench", "listing"))
                .await
                .expect("register");
            store
                .set_symbol_mode(symbol, SymbolMode::ALL[i % 4], &Audit::new("bench", "seed"))
                .await
                .expect("seed");
        }
        let modes = SymbolModes::spawn(store, SymbolModesConfig::default());
        assert!(modes.ready(Duration::from_secs(5)).await);
        modes
    });
    let probe = "SYM-04242";

    let mut group = c.benchmark_group("effective_mode_10k_symbols");
    group.bench_function("SymbolModes::mode", |b| {
        b.iter(|| black_box(&modes).mode(black_box(probe)))
    });
    group.bench_function("SymbolModes::check", |b| {
        b.iter(|| black_box(&modes).check(black_box(probe), TradingAction::Place))
    });
    let mut reader = modes.reader();
    group.bench_function("ModeReader::mode (per-thread reader)", |b| {
        b.iter(|| reader.mode(black_box(probe)))
    });
    let snapshot = modes.snapshot();
    group.bench_function("ModeSnapshot::effective (no ArcSwap)", |b| {
        b.iter(|| black_box(&*snapshot).effective(black_box(probe)))
    });
    let table: HashMap<String, SymbolMode> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), SymbolMode::ALL[i % 4]))
        .collect();
    group.bench_function("baseline: std HashMap (SipHash) get", |b| {
        b.iter(|| black_box(&table).get(black_box(probe)).copied())
    });
    let locked = std::sync::RwLock::new(table.clone());
    group.bench_function("baseline: std RwLock<HashMap> read + get", |b| {
        b.iter(|| {
            black_box(&locked)
                .read()
                .expect("not poisoned")
                .get(black_box(probe))
                .copied()
        })
    });
    group.finish();
    drop(modes);
    drop(runtime);
}

criterion_group!(benches, lookup);
criterion_main!(benches);
