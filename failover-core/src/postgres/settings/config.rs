//! [`PgConfig`]: the settings as a plain, deserializable struct (figment, config-rs, a
//! TOML or JSON file), converted into validated [`PgSettings`].

use super::{dsn, PgSettings, PgSettingsBuilder, TlsMode, VarNames};
use crate::errors::ConfigError;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The PostgreSQL settings as configuration data. Field names are the environment
/// variables' in lower case (`dsn`, `password_file`, `tls.mode`, `pool_size`,
/// `connect_timeout` …; see the [module table](crate::postgres#settings)); durations are
/// `humantime` strings (`"500ms"`, `"2s"`). Absent fields take the builder's defaults,
/// unknown fields are refused. Validation happens in [`PgSettings::from_config`], whose
/// errors name the field (`PgConfig.pool_size`).
///
/// `Debug` never shows a password; there is deliberately no `Serialize`, so the DSN
/// cannot be written back out by accident.
///
/// ```
/// use tradepulse_failover_core::postgres::{PgConfig, PgSettings, TlsMode};
///
/// let config: PgConfig = serde_json::from_str(r#"{
///     "dsn": "host=db1,db2 user=trader dbname=trading",
///     "tls": { "mode": "require" },
///     "pool_size": 4,
///     "operation_timeout": "750ms"
/// }"#).unwrap();
/// let settings = PgSettings::from_config(config).unwrap();
/// assert_eq!(settings.tls().mode, TlsMode::Require);
/// assert_eq!(settings.pool_size(), 4);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Key=value or URL DSN, multi-host allowed. Required.
    pub dsn: Option<String>,
    /// File holding the password; the DSN then carries none.
    pub password_file: Option<PathBuf>,
    /// TLS.
    pub tls: TlsConfig,
    /// Connections in the pool (default 8).
    pub pool_size: Option<usize>,
    /// Bound of one connection attempt to one host (default 2 s).
    #[serde(with = "crate::time::humantime_option")]
    pub connect_timeout: Option<Duration>,
    /// Bound of one attempt of one operation (default 2 s).
    #[serde(with = "crate::time::humantime_option")]
    pub operation_timeout: Option<Duration>,
    /// Total time an operation may spend retrying (default 5 s).
    #[serde(with = "crate::time::humantime_option")]
    pub retry_budget: Option<Duration>,
    /// Longest wait of a statement for another session's lock (default 500 ms).
    #[serde(with = "crate::time::humantime_option")]
    pub lock_timeout: Option<Duration>,
    /// `application_name` reported to the server (default: the component).
    pub application_name: Option<String>,
    /// Where push's LISTEN connection goes (default: `dsn`).
    pub listen_dsn: Option<String>,
    /// `auto`, `prepared` or `unnamed` (default `auto`).
    pub statements: Option<super::StatementMode>,
}

/// The `tls` part of [`PgConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// `disable`, `require`, `verify-ca` or `verify-full`.
    pub mode: Option<TlsMode>,
    /// PEM file of trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dsn = self.dsn.as_deref().map(|text| {
            dsn::parse_dsn("dsn", text)
                .map(|config| dsn::redact(&config))
                .unwrap_or_else(|_| "<not a valid DSN; not shown>".to_owned())
        });
        f.debug_struct("PgConfig")
            .field("dsn", &dsn)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("retry_budget", &self.retry_budget)
            .field("lock_timeout", &self.lock_timeout)
            .field("application_name", &self.application_name)
            .field(
                "listen_dsn",
                &self.listen_dsn.as_deref().map(|text| {
                    dsn::parse_dsn("listen_dsn", text)
                        .map(|config| dsn::redact(&config))
                        .unwrap_or_else(|_| "<not a valid DSN; not shown>".to_owned())
                }),
            )
            .field("statements", &self.statements)
            .finish()
    }
}

impl PgSettingsBuilder {
    /// A builder holding `config`, so code can still override single settings before
    /// [`build`](Self::build); errors name the config field.
    pub fn from_config(config: PgConfig) -> Self {
        let defaults = Self::default();
        let mut retry = defaults.retry.clone();
        if let Some(budget) = config.retry_budget {
            retry.budget = budget;
        }
        Self {
            dsn: config.dsn,
            parsed: None,
            tls_mode: config.tls.mode,
            ca_file: config.tls.ca_file,
            cert_file: config.tls.cert_file,
            key_file: config.tls.key_file,
            pool_size: config.pool_size.unwrap_or(defaults.pool_size),
            connect_timeout: config.connect_timeout.unwrap_or(defaults.connect_timeout),
            operation_timeout: config
                .operation_timeout
                .unwrap_or(defaults.operation_timeout),
            lock_timeout: config.lock_timeout.unwrap_or(defaults.lock_timeout),
            retry,
            application_name: config.application_name,
            password_file: config.password_file,
            listen_dsn: config.listen_dsn,
            listen_parsed: None,
            statements: config.statements.unwrap_or_default(),
            names: VarNames::Config,
        }
    }
}

impl TryFrom<PgConfig> for PgSettings {
    type Error = ConfigError;

    fn try_from(config: PgConfig) -> Result<Self, ConfigError> {
        Self::from_config(config)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempfile_with;
    use super::*;

    #[test]
    fn every_field_deserializes_with_humantime_durations() {
        let ca = tempfile_with(b"ca");
        let password = tempfile_with(b"pw");
        let json = serde_json::json!({
            "dsn": "host=a,b port=1,2 user=u dbname=d",
            "password_file": password.path(),
            "tls": { "mode": "verify-ca", "ca_file": ca.path() },
            "pool_size": 3,
            "connect_timeout": "300ms",
            "operation_timeout": "1s",
            "retry_budget": "1m 30s",
            "lock_timeout": "200ms",
            "application_name": "gw-1",
        });
        let config: PgConfig = serde_json::from_value(json).unwrap();
        assert_eq!(config.connect_timeout, Some(Duration::from_millis(300)));
        let s = PgSettings::from_config(config).unwrap();
        assert_eq!(s.tls().mode, TlsMode::VerifyCa);
        assert_eq!(s.pool_size(), 3);
        assert_eq!(s.connect_timeout(), Duration::from_millis(300));
        assert_eq!(s.operation_timeout(), Duration::from_secs(1));
        assert_eq!(s.retry_policy().budget, Duration::from_secs(90));
        assert_eq!(s.lock_timeout(), Duration::from_millis(200));
        assert_eq!(s.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(s.config.get_application_name(), Some("gw-1"));
        assert_eq!(s.per_host_configs().len(), 2);
    }

    #[test]
    fn absent_fields_take_the_defaults() {
        let config: PgConfig = serde_json::from_str(r#"{"dsn": "host=a"}"#).unwrap();
        let s = PgSettings::try_from(config).unwrap();
        let d = PgSettings::builder().with_dsn("host=a").build().unwrap();
        assert_eq!(
            (
                s.pool_size(),
                s.connect_timeout(),
                s.operation_timeout(),
                s.retry_policy()
            ),
            (
                d.pool_size(),
                d.connect_timeout(),
                d.operation_timeout(),
                d.retry_policy()
            )
        );
        assert_eq!(s.tls().mode, TlsMode::Disable);
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        for (json, expected) in [
            (
                r#"{"dsn": "host=a", "pool_sise": 3}"#,
                "unknown field `pool_sise`",
            ),
            (
                r#"{"dsn": "host=a", "tls": {"mode": "verify-maybe"}}"#,
                "unknown TLS mode 'verify-maybe'",
            ),
            (
                r#"{"dsn": "host=a", "connect_timeout": "soon"}"#,
                "write e.g. 500ms, 2s or 1m",
            ),
            (r#"{"dsn": "host=a", "connect_timeout": 5}"#, "invalid type"),
        ] {
            let err = serde_json::from_str::<PgConfig>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
        let err = PgSettings::from_config(PgConfig::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("PgConfig.dsn is not set"),
            "{err}"
        );
        let config: PgConfig =
            serde_json::from_str(r#"{"dsn": "host=a", "pool_size": 0}"#).unwrap();
        let err = PgSettings::from_config(config).unwrap_err();
        assert!(
            err.to_string().starts_with("PgConfig.pool_size is invalid"),
            "{err}"
        );
        let config: PgConfig =
            serde_json::from_str(r#"{"dsn": "host=a", "tls": {"mode": "verify-full"}}"#).unwrap();
        let err = PgSettings::from_config(config).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PgConfig.tls.ca_file is invalid"),
            "{err}"
        );
        let config: PgConfig =
            serde_json::from_str(r#"{"dsn": "host=a", "password_file": "no/such/file"}"#).unwrap();
        let err = PgSettings::from_config(config).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PgConfig.password_file names 'no/such/file'"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        for dsn in [
            "host=a user=u password=hunter2",
            "postgres://u:hunter2@h/d",
            "host=a password=hunter2 port=nope",
        ] {
            let config = PgConfig {
                dsn: Some(dsn.into()),
                ..PgConfig::default()
            };
            let text = format!("{config:?}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
