//! Connection settings: from the environment (prefix + `__` nesting), from a
//! deserialized [`PgConfig`] (figment, config-rs, a TOML file …) or from a builder.
//!
//! The variables and fields are listed on [`PgSettings`].

mod builder;
mod config;
mod dsn;
mod env;

pub use builder::PgSettingsBuilder;
pub use config::{PgConfig, TlsConfig};
pub use env::SHARED_ENV_PREFIX;

use crate::errors::ConfigError;
use crate::retry::RetryPolicy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The default longest wait of a statement for another session's lock.
pub(crate) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(500);

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted; the server certificate is not verified (libpq's `require`).
    Require,
    /// Encrypted; the server certificate must chain to the CA file, whatever host name
    /// it names (libpq's `verify-ca`): for servers reached through an address or alias
    /// their certificate does not list.
    VerifyCa,
    /// Encrypted; the server certificate must chain to the CA file and match the host name.
    VerifyFull,
}

impl TlsMode {
    /// The libpq spelling: `disable`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server certificate is checked against the CA file.
    pub fn verifies_ca(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TlsMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(Self::Disable),
            "require" => Ok(Self::Require),
            "verify-ca" | "verify_ca" => Ok(Self::VerifyCa),
            "verify-full" | "verify_full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "unknown TLS mode '{other}': use disable, require, verify-ca or verify-full"
            )),
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode.
    pub mode: TlsMode,
    /// PEM file with the CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client private key.
    pub key_file: Option<PathBuf>,
}

/// How the pool sends statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatementMode {
    /// Prepared and cached per connection, switching to unnamed statements by itself
    /// the first time the server says a prepared statement is missing or already
    /// exists (a transaction pooler in between). The default.
    #[default]
    Auto,
    /// Always prepared and cached per connection (a direct connection or a
    /// session-mode pooler).
    Prepared,
    /// Always unnamed, parsed and executed in one round trip: for a transaction pooler
    /// such as pgbouncer in transaction mode.
    Unnamed,
}

impl std::str::FromStr for StatementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "prepared" => Ok(Self::Prepared),
            "unnamed" => Ok(Self::Unnamed),
            other => Err(format!("'{other}' is not one of auto, prepared, unnamed")),
        }
    }
}

/// Validated PostgreSQL settings. Build with [`PgSettings::from_env`],
/// [`PgSettings::from_config`] or [`PgSettings::builder`].
///
/// With the prefix `TRADEPULSE_KILL_SWITCH` the variables are:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN` | key=value or URL DSN, multi-host allowed | required |
/// | `…_POSTGRES__PASSWORD_FILE` | file holding the password (a mounted secret); one trailing newline is ignored | — (the DSN's password, if any) |
/// | `…_POSTGRES__TLS__MODE` | `disable`, `require`, `verify-ca`, `verify-full` | `disable` (or `require` when the DSN says `sslmode=require`) |
/// | `…_POSTGRES__TLS__CA_FILE` | PEM file of trusted CAs (required for `verify-ca` and `verify-full`) | — |
/// | `…_POSTGRES__TLS__CERT_FILE`, `…__TLS__KEY_FILE` | client certificate and key (PEM), both or neither | — |
/// | `…_POSTGRES__POOL_SIZE` | connections in the pool | 8 |
/// | `…_POSTGRES__CONNECT_TIMEOUT` | bound of one connection attempt to one host, e.g. `2s` | `2s` |
/// | `…_POSTGRES__OPERATION_TIMEOUT` | bound of one attempt of one operation | `2s` |
/// | `…_POSTGRES__RETRY_BUDGET` | total time an operation may spend retrying | `5s` |
/// | `…_POSTGRES__LOCK_TIMEOUT` | longest wait of a statement for a row or table lock another session holds (`SET lock_timeout` on every pooled connection); then it fails as `Locked`, naming the holder | `500ms` |
/// | `…_POSTGRES__APPLICATION_NAME` | `application_name` reported to the server | the component |
/// | `…_POSTGRES__LISTEN_DSN` | where the LISTEN connection for push goes: the primary directly, or a session-mode pool — needed when `DSN` is a transaction pooler, which cannot pass LISTEN | `DSN` |
/// | `…_POSTGRES__STATEMENTS` | `auto`, `prepared` or `unnamed` (for a transaction pooler; `auto` switches by itself) | `auto` |
///
/// Every store falls back to the shared prefix `TRADEPULSE` ([`SHARED_ENV_PREFIX`]),
/// key by key: a store's own variable wins where it is set, and a key its prefix does
/// not set is read from `TRADEPULSE_POSTGRES__…`. One `TRADEPULSE_POSTGRES__DSN` (with
/// `TRADEPULSE_POSTGRES__TLS__MODE` …) thus serves every store of a process or of
/// `safetyctl`; `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN` points the kill switch elsewhere
/// and keeps the shared TLS files unless it sets its own. Errors name the variable a
/// value was read from, and a missing DSN names both
/// (`TRADEPULSE_KILL_SWITCH_POSTGRES__DSN or TRADEPULSE_POSTGRES__DSN is not set`).
///
/// [`PgConfig`] has the same settings as fields named like the variables in lower case
/// (`dsn`, `password_file`, `tls.mode`, `tls.ca_file`, `pool_size`, `connect_timeout` …).
/// Durations take `humantime` syntax (`500ms`, `2s`, `1m`). A password, given in the
/// DSN or read from the password file, never appears in `Debug`, `Display`, logs or
/// errors.
///
/// TLS modes follow libpq: `require` encrypts without verifying the server; `verify-ca`
/// also checks that the server certificate chains to the CA file (any host name);
/// `verify-full` also checks that the certificate names the host in the DSN.
#[derive(Clone)]
pub struct PgSettings {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: TlsSettings,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) listen: Option<tokio_postgres::Config>,
    pub(crate) statements: StatementMode,
    pub(crate) names: VarNames,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("dsn", &self.redacted_dsn())
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("retry_budget", &self.retry.budget)
            .field("listen_dsn", &self.listen.as_ref().map(dsn::redact))
            .field("statements", &self.statements)
            .finish()
    }
}

impl std::fmt::Display for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted_dsn())
    }
}

/// The names that errors use for each setting: env variables, [`PgConfig`] fields or
/// builder methods. `key` is the variable's suffix, e.g. `TLS__CA_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VarNames {
    /// `{prefix}_POSTGRES__{key}`, falling back per key to `{shared}_POSTGRES__{key}`:
    /// `own` keys were read from the prefix, `from_shared` keys from the shared prefix;
    /// a key set by neither is named where the DSN was read, or as both without a DSN.
    Env {
        prefix: String,
        shared: Option<String>,
        own: Vec<String>,
        from_shared: Vec<String>,
    },
    Config,
    Builder,
}

impl VarNames {
    pub(crate) fn name(&self, key: &str) -> String {
        match self {
            Self::Env {
                prefix,
                shared,
                own,
                from_shared,
            } => match shared {
                Some(shared) if from_shared.iter().any(|k| k == key) => {
                    format!("{shared}_POSTGRES__{key}")
                }
                // A key set by neither belongs beside the DSN, wherever that was read.
                Some(shared)
                    if !own.iter().any(|k| k == key) && from_shared.iter().any(|k| k == "DSN") =>
                {
                    format!("{shared}_POSTGRES__{key}")
                }
                Some(shared) if !own.iter().any(|k| k == key || k == "DSN") => {
                    format!("{prefix}_POSTGRES__{key} or {shared}_POSTGRES__{key}")
                }
                _ => format!("{prefix}_POSTGRES__{key}"),
            },
            Self::Config => format!("PgConfig.{}", key.to_ascii_lowercase().replace("__", ".")),
            Self::Builder => format!(
                "PgSettingsBuilder::{}",
                key.to_ascii_lowercase().replace("__", "_")
            ),
        }
    }
}

impl PgSettings {
    /// A builder with defaults; only the DSN is required.
    pub fn builder() -> PgSettingsBuilder {
        PgSettingsBuilder::default()
    }

    /// Reads `{prefix}_POSTGRES__…` from the process environment; a key the prefix
    /// does not set is read from `TRADEPULSE_POSTGRES__…` ([`SHARED_ENV_PREFIX`]), so
    /// one `TRADEPULSE_POSTGRES__DSN` serves every store.
    pub fn from_env(prefix: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(prefix, |name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) with a custom lookup (tests, config maps).
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        PgSettingsBuilder::from_lookup(prefix, lookup)?.build()
    }

    /// The variable that supplies the DSN of the store with env prefix `prefix`, by the
    /// rule of [`from_lookup`](Self::from_lookup): `{prefix}_POSTGRES__DSN` when set,
    /// else `TRADEPULSE_POSTGRES__DSN` when set, else `None`.
    pub fn dsn_variable(prefix: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
        env::dsn_variable(prefix, lookup)
    }

    /// A copy that accepts whichever server answers first, a standby or a read-only
    /// server too (`target_session_attrs=any`): for diagnostics that must say what they
    /// reached, never for writes.
    #[must_use]
    pub fn accepting_any_server(&self) -> Self {
        let mut settings = self.clone();
        settings
            .config
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        if let Some(listen) = settings.listen.as_mut() {
            listen.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        }
        settings
    }

    /// From a deserialized [`PgConfig`]; errors name the field (`PgConfig.pool_size`).
    pub fn from_config(config: PgConfig) -> Result<Self, ConfigError> {
        PgSettingsBuilder::from_config(config).build()
    }

    /// The database login the DSN names, if it names one. Without the
    /// `tradepulse_service` role a login acts in its own name: this is the actor.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// The DSN with the password replaced by `<redacted>`: safe to log.
    pub fn redacted_dsn(&self) -> String {
        dsn::redact(&self.config)
    }

    /// The file the password is read from, if any.
    pub fn password_file(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// Pool size.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Bound of one connection attempt to one host.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Bound of one attempt of one operation.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// Longest wait of a statement for a lock another session holds, as configured.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// The `lock_timeout` the pool sets on its connections: the configured one, cut to
    /// three quarters of the operation timeout so that a lock wait always ends as a
    /// lock error naming its holder, never as an anonymous timeout.
    ///
    /// It is a session setting, set once when a connection is opened. Behind a
    /// transaction pooler (pgbouncer in transaction mode) a later statement may run on
    /// a server connection that never got it; there, set `lock_timeout` on the
    /// database or role (`ALTER ROLE … SET lock_timeout = '500ms'`) as well.
    pub fn effective_lock_timeout(&self) -> Duration {
        self.lock_timeout
            .min(self.operation_timeout.mul_f64(0.75))
            .max(Duration::from_millis(1))
    }

    /// The retry policy of operations.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// How statements are sent.
    pub fn statements(&self) -> StatementMode {
        self.statements
    }

    /// The LISTEN DSN, redacted, when one is set apart from the DSN.
    pub fn redacted_listen_dsn(&self) -> Option<String> {
        self.listen.as_ref().map(dsn::redact)
    }

    /// One config per host of the LISTEN DSN (or of the DSN when none is set).
    pub(crate) fn listen_per_host_configs(&self) -> Vec<(String, tokio_postgres::Config)> {
        dsn::per_host_configs(self.listen.as_ref().unwrap_or(&self.config))
    }

    /// A copy that connects through another DSN, keeping every other setting: the
    /// run-time swap to a promoted replica.
    pub fn with_dsn(&self, dsn: &str) -> Result<Self, ConfigError> {
        let mut builder = self.to_builder();
        builder.dsn = Some(dsn.to_owned());
        builder.build()
    }

    fn to_builder(&self) -> PgSettingsBuilder {
        PgSettingsBuilder {
            dsn: None,
            parsed: Some(self.config.clone()),
            tls_mode: Some(self.tls.mode),
            ca_file: self.tls.ca_file.clone(),
            cert_file: self.tls.cert_file.clone(),
            key_file: self.tls.key_file.clone(),
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            lock_timeout: self.lock_timeout,
            retry: self.retry.clone(),
            application_name: self.config.get_application_name().map(str::to_owned),
            password_file: self.password_file.clone(),
            listen_dsn: None,
            listen_parsed: self.listen.clone(),
            statements: self.statements,
            names: self.names.clone(),
        }
    }

    /// One config per host, tried in order by the pool so that a hung host cannot
    /// stall the others (tokio-postgres bounds only the TCP connect).
    pub(crate) fn per_host_configs(&self) -> Vec<(String, tokio_postgres::Config)> {
        dsn::per_host_configs(&self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for dsn in [
            "host=a user=u password=hunter2 dbname=d",
            "postgres://u:hunter2@h1:5432,h2:5433/d",
        ] {
            let s = PgSettings::builder().with_dsn(dsn).build().unwrap();
            for text in [format!("{s:?}"), format!("{s}"), s.redacted_dsn()] {
                assert!(!text.contains("hunter2"), "{text}");
                assert!(text.contains("<redacted>"), "{text}");
            }
        }
    }

    #[test]
    fn url_dsns_with_several_hosts_parse() {
        let s = PgSettings::builder()
            .with_dsn("postgres://u@h1:5432,h2:5433/d")
            .build()
            .unwrap();
        let hosts: Vec<String> = s.per_host_configs().into_iter().map(|h| h.0).collect();
        assert_eq!(hosts, vec!["h1:5432", "h2:5433"]);
    }

    #[test]
    fn tls_modes_parse_in_libpq_spelling() {
        for (text, mode) in [
            ("disable", TlsMode::Disable),
            ("require", TlsMode::Require),
            ("verify-ca", TlsMode::VerifyCa),
            ("VERIFY_CA", TlsMode::VerifyCa),
            ("verify-full", TlsMode::VerifyFull),
        ] {
            assert_eq!(text.parse::<TlsMode>(), Ok(mode), "{text}");
        }
        assert_eq!(TlsMode::VerifyCa.to_string(), "verify-ca");
        let err = "verify-maybe".parse::<TlsMode>().unwrap_err();
        assert!(err.contains("verify-ca"), "{err}");
    }

    /// A file with `content` that is removed on drop.
    pub(super) struct TempFile(std::path::PathBuf);

    impl TempFile {
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub(super) fn tempfile_with(content: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "failover-core-settings-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    #[test]
    fn the_lock_timeout_defaults_to_500ms_and_stays_below_the_operation_timeout() {
        let s = PgSettings::builder().with_dsn("host=a").build().unwrap();
        assert_eq!(s.lock_timeout(), Duration::from_millis(500));
        assert_eq!(s.effective_lock_timeout(), Duration::from_millis(500));
        let s = PgSettings::builder()
            .with_dsn("host=a")
            .with_operation_timeout(Duration::from_millis(400))
            .build()
            .unwrap();
        assert_eq!(s.effective_lock_timeout(), Duration::from_millis(300));
        let err = PgSettings::builder()
            .with_dsn("host=a")
            .with_lock_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("lock_timeout"), "{err}");
    }
}
