//! The in-memory store runs the whole conformance suite.

use killswitch::{KillSwitchStore, MemoryKillSwitchStore};
use std::sync::Arc;

async fn setup() -> (Arc<dyn KillSwitchStore>, ()) {
    (Arc::new(MemoryKillSwitchStore::new()), ())
}

killswitch::conformance_tests!(setup);
