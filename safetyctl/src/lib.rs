//! `safetyctl`, the operators' CLI of the safety controls, as a library: the
//! commands ([`cli`]), the audit export ([`export`]), migrations ([`migrate`]), order-rate throttles ([`throttle`]), scoped controls ([`scope`]), the
//! readiness checks ([`doctor`]), the failover drill ([`drill`], feature `drill`) and
//! its evidence files ([`evidence`]).
//!
//! The binary talks to PostgreSQL directly with the stores' settings
//! (`TRADEPULSE_POSTGRES__*` for every control, or a control's own
//! `TRADEPULSE_KILL_SWITCH_POSTGRES__*`, `TRADEPULSE_SYMBOL_MODE_POSTGRES__*`,
//! `TRADEPULSE_FENCING_POSTGRES__*` where set), so it works when every service is down.

pub mod approvals;
pub mod cli;
mod controls;
pub mod doctor;
#[cfg(feature = "drill")]
pub mod drill;
pub mod evidence;
pub mod export;
pub mod migrate;
pub mod receipt;
pub mod scope;
pub mod strategies;
pub mod throttle;
pub mod verify;
