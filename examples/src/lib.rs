//! Runnable programs that link the safety-controls crates as a trading service would.
//! The logic lives here so tests can run it; `examples/*.rs` are thin `main`s.

pub mod admin_http;
pub mod drill;
pub mod gateway;
pub mod logging;
pub mod order_loop;
pub mod trading_engine;
