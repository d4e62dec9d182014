//! The scope gate's hot path allocates nothing: counted by an instrumented global
//! allocator (stats_alloc, so no `unsafe` of ours).
//!
//! The allocator counts every thread, so this test binary has no test harness
//! (`harness = false`): `main` runs a current-thread runtime on the only thread of the
//! process, and checks that it is the only one while counting.

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tradepulse_killswitch::scope::{
    MemoryScopeStore, OrderIntent, ScopeMode, ScopeModes, ScopeModesConfig, ScopePath, ScopeStore,
};
use tradepulse_killswitch::{Audit, KillSwitch, KillSwitchConfig, MemoryKillSwitchStore};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    print!("test a_million_gate_checks_allocate_nothing ... ");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(a_million_gate_checks_allocate_nothing());
    println!("ok");
}

async fn a_million_gate_checks_allocate_nothing() {
    let root = Arc::new(MemoryKillSwitchStore::new());
    let store = Arc::new(MemoryScopeStore::new(root.clone()));
    for p in ["acme", "acme/eq", "acme/eq/mm-1", "venue", "venue/xnys"] {
        store
            .create_scope(
                &ScopePath::parse(p).expect("canonical"),
                &Audit::new("ops", "register"),
            )
            .await
            .expect("create");
    }
    store
        .set_scope_mode(
            "acme/eq",
            ScopeMode::ReduceOnly,
            &Audit::new("ops", "limit"),
        )
        .await
        .expect("set");
    let switch = KillSwitch::spawn(root, KillSwitchConfig::default());
    let modes = ScopeModes::spawn(store, switch, ScopeModesConfig::default());
    assert!(modes.ready(Duration::from_secs(5)).await);
    let gate = modes.gate(&["acme/eq/mm-1", "venue/xnys"]).expect("gate");
    assert_eq!(gate.mode(), ScopeMode::ReduceOnly);
    assert_single_threaded();
    let region = Region::new(GLOBAL);
    let mut allowed = 0u32;
    for _ in 0..1_000_000 {
        allowed += u32::from(black_box(&gate).check(OrderIntent::Reduce).is_ok());
        allowed += u32::from(black_box(&gate).allows(OrderIntent::Cancel));
        allowed -= u32::from(black_box(&gate).allows(OrderIntent::Open));
        allowed -= u32::from(black_box(&gate).mode() == ScopeMode::Halted);
    }
    let stats = region.change();
    assert_single_threaded();
    assert_eq!(allowed, 2_000_000);
    assert_eq!(stats.allocations, 0, "checks allocated: {stats:?}");
    assert_eq!(stats.reallocations, 0, "checks reallocated: {stats:?}");
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
