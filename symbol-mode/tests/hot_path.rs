//! The hot path of [`SymbolModes`]: correct for 10,000 symbols, keys borrowed from
//! anywhere (no owned `String` needed), `Copy` answers, and readers on other threads
//! never see a snapshot roll back while the watcher swaps in new ones.
//!
//! Allocation-freedom is counted by an instrumented allocator in `tests/no_alloc.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tradepulse_symbol_mode::{
    Audit, Cause, MemorySymbolModeStore, Refusal, SymbolMode, SymbolModeStore, SymbolModes,
    SymbolModesConfig, TradingAction,
};

fn assert_copy<T: Copy>() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_symbols_answer_from_borrowed_keys() {
    assert_copy::<SymbolMode>();
    assert_copy::<Refusal>();
    assert_copy::<Cause>();
    let store = Arc::new(MemorySymbolModeStore::new());
    for i in 0..10_000usize {
        store
            .register_symbol(&format!("SYM-{i:05}"), &Audit::new("ops", "listing"))
            .await
            .unwrap();
        store
            .set_symbol_mode(
                &format!("SYM-{i:05}"),
                SymbolMode::ALL[i % 4],
                &Audit::new("ops", "seed"),
            )
            .await
            .unwrap();
    }
    let modes = SymbolModes::spawn(store.clone(), SymbolModesConfig::default());
    assert!(modes.ready(Duration::from_secs(5)).await);
    // Keys built in a stack buffer: the lookup borrows, it never needs an owned key.
    let mut buffer = *b"SYM-00000";
    for i in 0..10_000usize {
        let digits = format!("{i:05}");
        buffer[4..].copy_from_slice(digits.as_bytes());
        let key = std::str::from_utf8(&buffer).unwrap();
        assert_eq!(modes.mode(key), SymbolMode::ALL[i % 4], "{key}");
    }
    assert_eq!(modes.snapshot().restricted_symbols(), 7_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_snapshot_roll_back_while_it_is_swapped() {
    let store = Arc::new(MemorySymbolModeStore::new());
    let modes = SymbolModes::spawn(
        store.clone(),
        SymbolModesConfig::default().with_poll_interval(Duration::from_millis(1)),
    );
    assert!(modes.ready(Duration::from_secs(5)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let (modes, stop, reading) = (modes.clone(), stop.clone(), reading.clone());
        std::thread::spawn(move || {
            let mut seen = SymbolMode::Normal;
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = modes.mode("BTC-USD");
                assert!(now >= seen, "rolled back from {seen} to {now}");
                seen = now;
                reads += 1;
                reading.store(true, Ordering::Relaxed);
            }
            let last = modes.mode("BTC-USD");
            assert!(last >= seen, "rolled back from {seen} to {last}");
            (last, reads)
        })
    };
    // On a loaded machine the reader thread may start late: the swaps below must
    // happen while it reads.
    while !reading.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Only tightening changes, interleaved with unrelated symbols: the effective
    // mode of BTC-USD may only rise.
    for round in 0..200 {
        let to = SymbolMode::ALL[round / 50];
        store
            .set_global_mode(to, &Audit::new("ops", "step"))
            .await
            .unwrap();
        store
            .register_symbol(&format!("OTHER-{round}"), &Audit::new("ops", "listing"))
            .await
            .unwrap();
        store
            .set_symbol_mode(
                &format!("OTHER-{round}"),
                SymbolMode::HardHalt,
                &Audit::new("ops", "noise"),
            )
            .await
            .unwrap();
    }
    let last = store.venue().await.unwrap().version;
    assert!(modes.wait_for_version(last, Duration::from_secs(5)).await);
    stop.store(true, Ordering::Relaxed);
    let (seen, reads) = reader.join().expect("reader saw no roll-back");
    assert_eq!(seen, SymbolMode::HardHalt);
    assert!(reads > 0);
    assert_eq!(
        modes.check("BTC-USD", TradingAction::AdminCancelAll),
        Ok(()),
        "admin CancelAll in every mode"
    );
}
