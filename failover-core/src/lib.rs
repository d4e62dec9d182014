#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
pub mod errors;
pub mod health;
pub mod retry;
pub mod staleness;
pub mod time;
pub mod watcher;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use audit::{Audit, AuditError, Safety};
pub use errors::{ConfigError, DbError, DbErrorKind};
pub use health::{ComponentHealth, ComponentStatus, HealthRegistry, HealthSource, Readiness};
pub use retry::{ErrorClass, RetryError, RetryPolicy};
pub use staleness::Observed;
pub use watcher::{Freshness, WatchConfig, Watcher};
