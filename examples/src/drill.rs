//! The failover drill lives in `safetyctl` (feature `drill`) so that the example and
//! `safetyctl drill` run the same code and write the same evidence.

pub use safetyctl::drill::*;
