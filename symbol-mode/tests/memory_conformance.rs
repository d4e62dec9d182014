//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;
use symbol_mode::{MemorySymbolModeStore, SymbolModeStore};

async fn setup() -> (Arc<dyn SymbolModeStore>, ()) {
    (Arc::new(MemorySymbolModeStore::new()), ())
}

symbol_mode::conformance_tests!(setup);
