//! symbol-mode (work in progress)
