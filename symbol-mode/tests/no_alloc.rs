//! The hot-path lookup allocates nothing: counted by an instrumented global
//! allocator (stats_alloc, so no `unsafe` of ours).
//!
//! The allocator counts every thread, so this test binary has no test harness
//! (`harness = false`): `main` runs a current-thread runtime on the only thread of the
//! process, and checks that it is the only one while counting. Nothing else can
//! allocate behind our back, however loaded the machine is.

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tradepulse_symbol_mode::{
    Audit, MemorySymbolModeStore, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig,
    Throttle, TradingAction,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    print!("test lookups_over_ten_thousand_symbols_allocate_nothing ... ");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(lookups_over_ten_thousand_symbols_allocate_nothing());
    println!("ok");
    print!("test may_activate_strategy_allocates_nothing ... ");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(may_activate_strategy_allocates_nothing());
    println!("ok");
    // After the others: a throttle starts the coarse clock's thread.
    print!("test admits_allocate_nothing ... ");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(admits_allocate_nothing());
    println!("ok");
}

/// `admit` by name (handle and reader) and through a gate, on throttled and
/// unthrottled symbols, admitted and refused: no allocation. The only other thread
/// is the coarse clock's, whose loop sleeps and stores one atomic.
async fn admits_allocate_nothing() {
    let store = Arc::new(MemorySymbolModeStore::new());
    let limit = Throttle::new(1, 50).unwrap();
    for i in 0..1_000usize {
        let symbol = format!("SYM-{i:05}");
        store
            .register_symbol(&symbol, &Audit::new("ops", "listing"))
            .await
            .unwrap();
        if i % 2 == 0 {
            store
                .set_throttle(&symbol, Some(limit), &Audit::new("ops", "seed"))
                .await
                .unwrap();
        }
    }
    let modes = SymbolModes::spawn(store, SymbolModesConfig::default());
    assert!(modes.ready(Duration::from_secs(5)).await);
    let mut reader = modes.reader();
    let gate = modes.gate("SYM-00000");
    assert_eq!(reader.admit("SYM-00001"), Ok(()), "warm up the reader");
    assert_eq!(modes.admit("SYM-00001"), Ok(()), "warm up the handle");

    // The clock's thread has started (and finished starting: std allocates for a
    // new thread's handle) once it has ticked.
    let clock = failover_core::clock::CoarseClock::shared();
    let ticked = clock.now_nanos();
    while clock.now_nanos() == ticked {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut key = *b"SYM-00000";
    let (mut admitted, mut refused) = (0usize, 0usize);
    let threads = thread_count();
    let region = Region::new(GLOBAL);
    for round in 0..100usize {
        for i in 0..1_000usize {
            for (slot, digit) in key[4..].iter_mut().zip(format_digits(i)) {
                *slot = digit;
            }
            let symbol = std::str::from_utf8(&key).unwrap();
            let answer = if round % 2 == 0 {
                modes.admit(black_box(symbol))
            } else {
                reader.admit(black_box(symbol))
            };
            match answer {
                Ok(()) => admitted += 1,
                Err(t) => {
                    refused += 1;
                    black_box(t.retry_after);
                }
            }
        }
        refused += usize::from(gate.admit().is_err());
    }
    let stats = region.change();
    assert_eq!(thread_count(), threads, "no thread started while counting");
    assert_eq!(stats.allocations, 0, "admits allocated: {stats:?}");
    assert_eq!(stats.reallocations, 0, "admits reallocated: {stats:?}");
    // Unthrottled: 500 symbols x 100 rounds; throttled: a burst of 50 each (the
    // gate shares SYM-00000's), plus whatever accrued at 1/s while the loop ran.
    assert!(admitted >= 50_000 + 499 * 50, "admitted {admitted}");
    assert!(refused >= 20_000, "refused {refused}");
}

fn thread_count() -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .map(|n| n.trim().to_owned())
        })
}

async fn lookups_over_ten_thousand_symbols_allocate_nothing() {
    let store = Arc::new(MemorySymbolModeStore::new());
    for i in 0..10_000usize {
        let audit = Audit::new("ops", "seed");
        store
            .register_symbol(&format!("SYM-{i:05}"), &Audit::new("ops", "listing"))
            .await
            .unwrap();
        store
            .set_symbol_mode(&format!("SYM-{i:05}"), SymbolMode::ALL[i % 4], &audit)
            .await
            .unwrap();
    }
    let modes = SymbolModes::spawn(store, SymbolModesConfig::default());
    assert!(modes.ready(Duration::from_secs(5)).await);
    let mut reader = modes.reader();
    // Warm up: the first ArcSwap load on a thread takes its debt slot.
    assert_eq!(modes.mode("SYM-00003"), SymbolMode::HardHalt);
    assert_eq!(reader.mode("SYM-00003"), SymbolMode::HardHalt);

    let mut key = *b"SYM-00000";
    let mut restricted = 0;
    assert_single_threaded();
    let region = Region::new(GLOBAL);
    for i in 0..10_000usize {
        for (slot, digit) in key[4..].iter_mut().zip(format_digits(i)) {
            *slot = digit;
        }
        let symbol = std::str::from_utf8(&key).unwrap();
        let a = modes.mode(black_box(symbol));
        let b = reader.mode(black_box(symbol));
        let refused = modes.check(symbol, TradingAction::Place).is_err();
        assert_eq!(a, b);
        assert_eq!(a, SymbolMode::ALL[i % 4]);
        restricted += usize::from(refused);
    }
    let stats = region.change();
    assert_single_threaded();
    assert_eq!(restricted, 7_500);
    assert_eq!(stats.allocations, 0, "lookups allocated: {stats:?}");
    assert_eq!(stats.reallocations, 0, "lookups reallocated: {stats:?}");
}

/// `may_activate_strategy` (handle and reader) allocates nothing, while new
/// activations run and while they are halted.
async fn may_activate_strategy_allocates_nothing() {
    let store = Arc::new(MemorySymbolModeStore::new());
    let modes = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    assert!(modes.ready(Duration::from_secs(5)).await);
    let mut reader = modes.reader();
    // Warm up: the first ArcSwap load on a thread takes its debt slot.
    assert!(modes.may_activate_strategy());
    assert!(reader.may_activate_strategy());
    for halted in [false, true] {
        if halted {
            let event = store
                .new_strategies_halt(true, &Audit::new("ops", "runaway strategies"))
                .await
                .unwrap();
            assert!(
                modes
                    .wait_for_version(event.version, Duration::from_secs(5))
                    .await
            );
            // The reader's cache takes the new snapshot outside the count.
            assert!(!reader.may_activate_strategy());
        }
        let mut allowed = 0usize;
        assert_single_threaded();
        let region = Region::new(GLOBAL);
        for _ in 0..10_000usize {
            allowed += usize::from(black_box(modes.may_activate_strategy()));
            allowed += usize::from(black_box(reader.may_activate_strategy()));
        }
        let stats = region.change();
        assert_single_threaded();
        assert_eq!(allowed, if halted { 0 } else { 20_000 });
        assert_eq!(stats.allocations, 0, "answers allocated: {stats:?}");
        assert_eq!(stats.reallocations, 0, "answers reallocated: {stats:?}");
    }
}

/// The five decimal digits of `i`, without allocating.
fn format_digits(i: usize) -> [u8; 5] {
    let mut out = [b'0'; 5];
    let mut n = i;
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// The count is only ours if no other thread exists (checked where the OS tells).
fn assert_single_threaded() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let threads = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .map(|n| n.trim().to_owned());
        assert_eq!(
            threads.as_deref(),
            Some("1"),
            "another thread would be counted"
        );
    }
}
