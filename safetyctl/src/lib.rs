//! `safetyctl`, the operators' CLI of the safety controls, as a library: the
//! commands ([`cli`]), the audit export ([`export`]), the failover drill ([`drill`],
//! feature `drill`) and its evidence files ([`evidence`]).
//!
//! The binary talks to PostgreSQL directly with the stores' settings
//! (`TRADEPULSE_KILL_SWITCH_POSTGRES__*`, `TRADEPULSE_SYMBOL_MODE_POSTGRES__*`,
//! `TRADEPULSE_FENCING_POSTGRES__*`), so it works when every service is down.

pub mod cli;
#[cfg(feature = "drill")]
pub mod drill;
pub mod evidence;
pub mod export;
