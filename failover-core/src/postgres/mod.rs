//! PostgreSQL machinery shared by every store (feature `postgres`): settings from
//! env, a deserialized [`PgConfig`] or a builder, TLS, a failover-aware pool, error classification, embedded
//! migrations, a reconnecting LISTEN/NOTIFY listener, and the decoder of the answer
//! every control's apply function gives ([`ApplyCall`]).

mod apply;
mod connect;
mod diagnose;
mod error;
pub mod hub;
mod listen;
mod manager;
mod migrate;
mod pool;
mod settings;
mod store;
mod switchover;
mod tls;

pub use crate::errors::{Blocker, ConfigError, DbError, DbErrorKind, Reach};
pub use apply::{unexpected_status, Answer, ApplyCall, ApplyColumns, Gated, Verdict, WhatFor};
pub use connect::DedicatedConnection;
pub use diagnose::{AnsweredBy, Headroom};
pub use error::{classify, classify_sqlstate, db_error, describe as describe_error};
pub use listen::{Channels, ListenEvent, ListenOptions, Listener};
pub use migrate::{migrate, Migration, MigrationReport, CORE_MIGRATIONS, ROLES_SQL};
pub use pool::{Param, PgClient, PgPool};
pub use settings::{
    PgConfig, PgSettings, PgSettingsBuilder, StatementMode, TlsConfig, TlsMode, TlsSettings,
    SHARED_ENV_PREFIX,
};
pub use store::{
    interpret_payload, reload_when_newer, Interpret, Notified, PgChangeFeed, PgFeedStore, PgStore,
    Reload,
};
pub use switchover::{
    emergency_failover, parse_lsn, planned_switchover, Candidate, FailoverReport, Phase,
    SwitchoverError, SwitchoverReport,
};
pub use tokio_postgres;
