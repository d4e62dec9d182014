//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;
use tradepulse_symbol_mode::{MemorySymbolModeStore, SymbolModeStore};

async fn setup() -> (Arc<dyn SymbolModeStore>, ()) {
    (Arc::new(MemorySymbolModeStore::new()), ())
}

tradepulse_symbol_mode::conformance_tests!(setup);

async fn approvals_setup() -> (
    Arc<dyn SymbolModeStore>,
    Arc<dyn failover_core::ApprovalStore>,
    (),
) {
    let approvals = Arc::new(failover_core::approvals::MemoryApprovals::new());
    let store = MemorySymbolModeStore::with_approvals(approvals.clone());
    (Arc::new(store), approvals, ())
}

tradepulse_symbol_mode::approval_conformance_tests!(approvals_setup);
