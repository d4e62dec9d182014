//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;
use tradepulse_killswitch::{KillSwitchStore, MemoryKillSwitchStore};

async fn setup() -> (Arc<dyn KillSwitchStore>, ()) {
    (Arc::new(MemoryKillSwitchStore::new()), ())
}

tradepulse_killswitch::conformance_tests!(setup);
