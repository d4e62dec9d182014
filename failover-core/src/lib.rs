#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod approvals;
pub mod audit;
pub mod audit_log;
pub mod authority;
pub mod clock;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod control;
pub mod errors;
pub mod feed;
pub mod handle;
pub mod health;
pub mod log;
pub mod memory;
pub mod names;
pub mod position;
pub mod receipt;
pub mod retry;
pub mod staleness;
pub mod store_error;
#[cfg(test)]
mod test_store;
pub mod time;
pub mod watcher;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "http")]
pub mod http;

pub use approvals::{ApprovalError, ApprovalStore, PendingApproval};
pub use audit::{Audit, AuditError, Safety};
pub use authority::{Applied, Authority, ChangeRef, Precondition, Refusal};
pub use control::{ControlError, Outcome};
pub use errors::{ConfigError, DbError, DbErrorKind};
pub use feed::{ChangeFeed, FeedSource, FeedSubscription, PushStatus};
pub use health::{ComponentHealth, ComponentStatus, HealthRegistry, HealthSource, Readiness};
pub use position::{Position, Positioned};
pub use receipt::{Receipt, Receipts, Reporter};
pub use retry::{ErrorClass, RetryError, RetryPolicy};
pub use staleness::Observed;
pub use store_error::{ControlRefusal, StoreError};
pub use watcher::{Freshness, WatchConfig, WatchConfigError, Watched, Watcher};
