//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;
use tradepulse_symbol_mode::{MemorySymbolModeStore, SymbolModeStore};

async fn setup() -> (Arc<dyn SymbolModeStore>, ()) {
    (Arc::new(MemorySymbolModeStore::new()), ())
}

tradepulse_symbol_mode::conformance_tests!(setup);
