//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;
use tradepulse_killswitch::{KillSwitchStore, MemoryKillSwitchStore};

async fn setup() -> (Arc<dyn KillSwitchStore>, ()) {
    (Arc::new(MemoryKillSwitchStore::new()), ())
}

tradepulse_killswitch::conformance_tests!(setup);

async fn approvals_setup() -> (
    Arc<dyn KillSwitchStore>,
    Arc<dyn failover_core::ApprovalStore>,
    (),
) {
    let approvals = Arc::new(failover_core::approvals::MemoryApprovals::new());
    let store = MemoryKillSwitchStore::with_approvals(approvals.clone());
    (store, approvals, ())
}

tradepulse_killswitch::approval_conformance_tests!(approvals_setup);
