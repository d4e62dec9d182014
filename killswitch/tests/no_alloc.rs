//! The hot-path check allocates nothing: counted by an instrumented global allocator
//! (stats_alloc, so no `unsafe` of ours).
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
use tradepulse_killswitch::{KillSwitch, KillSwitchConfig, MemoryKillSwitchStore, Trading};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    print!("test a_million_checks_allocate_nothing ... ");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(a_million_checks_allocate_nothing());
    println!("ok");
}

async fn a_million_checks_allocate_nothing() {
    let switch = KillSwitch::spawn(
        Arc::new(MemoryKillSwitchStore::new()),
        KillSwitchConfig::default(),
    );
    assert!(switch.ready(Duration::from_secs(5)).await);
    assert_eq!(switch.trading(), Trading::Allowed);
    assert_single_threaded();
    let region = Region::new(GLOBAL);
    let mut allowed = 0u32;
    for _ in 0..1_000_000 {
        allowed += u32::from(black_box(&switch).check().is_ok());
        allowed -= u32::from(black_box(&switch).is_halted());
    }
    let stats = region.change();
    assert_single_threaded();
    assert_eq!(allowed, 1_000_000);
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
