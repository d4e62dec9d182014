//! PostgreSQL machinery shared by every store (feature `postgres`): settings from
//! env, a deserialized [`PgConfig`] or a builder, TLS, a failover-aware pool, error classification, embedded
//! migrations and a reconnecting LISTEN/NOTIFY listener.

mod error;
mod listen;
mod migrate;
mod pool;
mod settings;
mod switchover;
mod tls;

pub use crate::errors::{ConfigError, DbError, DbErrorKind};
pub use error::{classify, classify_sqlstate, db_error, describe as describe_error};
pub use listen::{ListenEvent, ListenOptions, Listener};
pub use migrate::{migrate, Migration, MigrationReport};
pub use pool::{DedicatedConnection, PgClient, PgPool};
pub use settings::{PgConfig, PgSettings, PgSettingsBuilder, TlsConfig, TlsMode, TlsSettings};
pub use switchover::{
    emergency_failover, parse_lsn, planned_switchover, Candidate, FailoverReport, Phase,
    SwitchoverError, SwitchoverReport,
};
pub use tokio_postgres;
