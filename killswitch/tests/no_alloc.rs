//! The hot-path check allocates nothing: counted by an instrumented global allocator
//! (stats_alloc, so no `unsafe` of ours) on a current-thread runtime.

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tradepulse_killswitch::{KillSwitch, KillSwitchConfig, MemoryKillSwitchStore, Trading};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::test(flavor = "current_thread")]
async fn a_million_checks_allocate_nothing() {
    let switch = KillSwitch::spawn(
        Arc::new(MemoryKillSwitchStore::new()),
        KillSwitchConfig::default(),
    );
    assert_eq!(switch.ready(Duration::from_secs(5)).await, Trading::Allowed);
    let region = Region::new(GLOBAL);
    let mut allowed = 0u32;
    for _ in 0..1_000_000 {
        allowed += u32::from(black_box(&switch).check().is_ok());
        allowed -= u32::from(black_box(&switch).is_halted());
    }
    let stats = region.change();
    assert_eq!(allowed, 1_000_000);
    assert_eq!(stats.allocations, 0, "checks allocated: {stats:?}");
}
