//! The in-memory store runs the whole conformance suite.

use tradepulse_killswitch::{KillSwitchStore, MemoryKillSwitchStore};
use std::sync::Arc;

async fn setup() -> (Arc<dyn KillSwitchStore>, ()) {
    (Arc::new(MemoryKillSwitchStore::new()), ())
}

tradepulse_killswitch::conformance_tests!(setup);
