//! Scoped controls beside their baselines, in the same run:
//!
//! * a leaf gate's check (`ScopeGate::check` / `allows`) beside a bare `AtomicU8` load;
//! * the gateway's `admit` (the scope gate, then the symbol's mode through a
//!   per-thread `ModeReader`) beside the same bare load;
//! * one root change (the kill switch engaged) re-derived for 100,000 gates in one
//!   process: from the write to the last gate turning HALTED, through the kill
//!   switch's push; and one scope change re-derived for the 1,000 gates under it.
//!
//! cargo bench -p tradepulse-benches --bench scopes

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use killswitch::scope::{
    MemoryScopeStore, OrderIntent, ScopeGate, ScopeMode, ScopeModes, ScopeModesConfig, ScopePath,
    ScopeStore,
};
use killswitch::{Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use symbol_mode::{MemorySymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tradepulse_examples::gateway::admit;

const ACCOUNTS: usize = 100;
const GATES: usize = 100_000;

struct Setup {
    root: Arc<MemoryKillSwitchStore>,
    store: Arc<MemoryScopeStore>,
    modes: ScopeModes,
    symbols: SymbolModes,
}

fn setup(runtime: &tokio::runtime::Runtime) -> Setup {
    runtime.block_on(async {
        let root = Arc::new(MemoryKillSwitchStore::new());
        let store = Arc::new(MemoryScopeStore::new(root.clone()));
        let mut paths = vec!["acme".to_owned(), "acme/eq".to_owned(), "venue".to_owned()];
        paths.push("venue/xnys".to_owned());
        paths.extend((0..ACCOUNTS).map(|i| format!("acme/eq/acct-{i}")));
        for p in &paths {
            store
                .create_scope(
                    &ScopePath::parse(p).expect("canonical"),
                    &Audit::new("bench", "register"),
                )
                .await
                .expect("create");
        }
        let switch = KillSwitch::spawn(root.clone(), KillSwitchConfig::default());
        let modes = ScopeModes::spawn(store.clone(), switch, ScopeModesConfig::default());
        assert!(modes.ready(Duration::from_secs(5)).await);
        let symbol_store = Arc::new(MemorySymbolModeStore::new());
        symbol_store
            .register_symbols(&["AAPL"], &Audit::new("bench", "listing"))
            .await
            .expect("register");
        let symbols = SymbolModes::spawn(symbol_store, SymbolModesConfig::default());
        assert!(symbols.ready(Duration::from_secs(5)).await);
        Setup {
            root,
            store,
            modes,
            symbols,
        }
    })
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let s = setup(&runtime);
    let gate = s
        .modes
        .gate(&["acme/eq/acct-42", "venue/xnys"])
        .expect("gate");
    assert_eq!(gate.mode(), ScopeMode::Normal);
    let mut reader = s.symbols.reader();

    let mut group = c.benchmark_group("scope_gate_check");
    group.bench_function("ScopeGate::check(Open)", |b| {
        b.iter(|| black_box(&gate).check(black_box(OrderIntent::Open)).is_ok())
    });
    group.bench_function("ScopeGate::allows(Open)", |b| {
        b.iter(|| black_box(&gate).allows(black_box(OrderIntent::Open)))
    });
    group.bench_function("gateway admit (scope gate + ModeReader)", |b| {
        b.iter(|| {
            admit(
                black_box(&gate),
                &mut reader,
                black_box("AAPL"),
                black_box(OrderIntent::Open),
            )
            .is_ok()
        })
    });
    let word = AtomicU8::new(0);
    group.bench_function("baseline: AtomicU8 load", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire))
    });
    group.finish();
    drop(gate);
    drop(s);
    drop(runtime);
}

/// Spins until `gate` holds `mode`; bounded.
fn spin_until(gate: &ScopeGate, mode: ScopeMode) {
    let start = Instant::now();
    while gate.mode() != mode {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reached {mode}"
        );
        std::hint::spin_loop();
    }
}

fn re_derivation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let s = setup(&runtime);
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acme/eq/acct-{i}")).collect();
    let gates: Vec<ScopeGate> = (0..GATES)
        .map(|i| {
            s.modes
                .gate(&[accounts[i % ACCOUNTS].as_str()])
                .expect("gate")
        })
        .collect();
    // Gates are re-derived in the order they were made: the last one turns last.
    let last = gates.last().expect("gates").clone();
    let last_of_7 = gates[GATES - ACCOUNTS + 7].clone();

    let mut group = c.benchmark_group("scope_re_derivation");
    group.sample_size(20);
    group.bench_function(
        "root change, 100,000 gates (write to last gate HALTED)",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    runtime
                        .block_on(s.root.engage(&Audit::new("bench", "halt")))
                        .expect("engage");
                    spin_until(&last, ScopeMode::Halted);
                    total += start.elapsed();
                    runtime
                        .block_on(
                            s.root
                                .disengage(&Audit::new("bench", "resume").with_ticket("B-1")),
                        )
                        .expect("disengage");
                    spin_until(&last, ScopeMode::Normal);
                }
                total
            })
        },
    );
    group.bench_function(
        "scope change, 1,000 of 100,000 gates (write to last gate HALTED)",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    runtime
                        .block_on(s.store.set_scope_mode(
                            "acme/eq/acct-7",
                            ScopeMode::Halted,
                            &Audit::new("bench", "halt"),
                        ))
                        .expect("halt");
                    spin_until(&last_of_7, ScopeMode::Halted);
                    total += start.elapsed();
                    runtime
                        .block_on(s.store.set_scope_mode(
                            "acme/eq/acct-7",
                            ScopeMode::CancelOnly,
                            &Audit::new("bench", "step").with_ticket("B-2"),
                        ))
                        .expect("step");
                    runtime
                        .block_on(s.store.set_scope_mode(
                            "acme/eq/acct-7",
                            ScopeMode::Normal,
                            &Audit::new("bench", "resume").with_ticket("B-2"),
                        ))
                        .expect("resume");
                    spin_until(&last_of_7, ScopeMode::Normal);
                }
                total
            })
        },
    );
    group.finish();
    drop(gates);
    drop(s);
    drop(runtime);
}

criterion_group!(benches, hot_path, re_derivation);
criterion_main!(benches);
