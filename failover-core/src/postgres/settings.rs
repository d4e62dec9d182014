//! Connection settings: from the environment (prefix + `__` nesting) or a builder.
//!
//! With the prefix `TRADEPULSE_KILL_SWITCH` the variables are:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN` | key=value or URL DSN, multi-host allowed | required |
//! | `…_POSTGRES__TLS__MODE` | `disable`, `require`, `verify-full` | `disable` (or `require` when the DSN says `sslmode=require`) |
//! | `…_POSTGRES__TLS__CA_FILE` | PEM file of trusted CAs (required for `verify-full`) | — |
//! | `…_POSTGRES__TLS__CERT_FILE`, `…__TLS__KEY_FILE` | client certificate and key (PEM), both or neither | — |
//! | `…_POSTGRES__POOL_SIZE` | connections in the pool | 8 |
//! | `…_POSTGRES__CONNECT_TIMEOUT` | bound of one connection attempt to one host, e.g. `2s` | `2s` |
//! | `…_POSTGRES__OPERATION_TIMEOUT` | bound of one attempt of one operation | `2s` |
//! | `…_POSTGRES__RETRY_BUDGET` | total time an operation may spend retrying | `5s` |
//! | `…_POSTGRES__APPLICATION_NAME` | `application_name` reported to the server | the component |
//!
//! Durations take `humantime` syntax (`500ms`, `2s`, `1m`). A password given in the
//! DSN never appears in `Debug`, `Display`, logs or errors.

use crate::errors::ConfigError;
use crate::retry::RetryPolicy;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted; the server certificate is not verified (libpq's `require`).
    Require,
    /// Encrypted; the server certificate must chain to the CA file and match the host name.
    VerifyFull,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(Self::Disable),
            "require" => Ok(Self::Require),
            "verify-full" | "verify_full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "unknown TLS mode '{other}': use disable, require or verify-full"
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

/// Validated PostgreSQL settings. Build with [`PgSettings::builder`] or
/// [`PgSettings::from_env`].
#[derive(Clone)]
pub struct PgSettings {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: TlsSettings,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) names: VarNames,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("dsn", &self.redacted_dsn())
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("retry_budget", &self.retry.budget)
            .finish()
    }
}

impl std::fmt::Display for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted_dsn())
    }
}

/// The names that errors use for each setting: env variables or builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarNames {
    prefix: Option<String>,
}

impl VarNames {
    pub(crate) fn name(&self, key: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}_POSTGRES__{key}"),
            None => format!(
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

    /// Reads `{prefix}_POSTGRES__…` from the process environment.
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

    /// The DSN with the password replaced by `<redacted>`: safe to log.
    pub fn redacted_dsn(&self) -> String {
        redact(&self.config)
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

    /// The retry policy of operations.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
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
            retry: self.retry.clone(),
            application_name: self.config.get_application_name().map(str::to_owned),
            names: self.names.clone(),
        }
    }

    /// One config per host, tried in order by the pool so that a hung host cannot
    /// stall the others (tokio-postgres bounds only the TCP connect).
    pub(crate) fn per_host_configs(&self) -> Vec<(String, tokio_postgres::Config)> {
        let hosts = self.config.get_hosts();
        let ports = self.config.get_ports();
        let addrs = self.config.get_hostaddrs();
        let mut out = Vec::with_capacity(hosts.len().max(1));
        for (i, host) in hosts.iter().enumerate() {
            let port = match ports.len() {
                0 => 5432,
                1 => ports[0],
                _ => ports.get(i).copied().unwrap_or(5432),
            };
            let mut c = self.config.clone_without_hosts();
            let label = match host {
                Host::Tcp(h) => {
                    c.host(h);
                    format!("{h}:{port}")
                }
                Host::Unix(p) => {
                    c.host_path(p);
                    format!("{}:{port}", p.display())
                }
            };
            if let Some(addr) = addrs.get(i) {
                c.hostaddr(*addr);
            }
            c.port(port);
            out.push((label, c));
        }
        out
    }
}

/// Copies every connection option except hosts, ports and host addresses.
trait CloneWithoutHosts {
    fn clone_without_hosts(&self) -> tokio_postgres::Config;
}

impl CloneWithoutHosts for tokio_postgres::Config {
    fn clone_without_hosts(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if let Some(v) = self.get_user() {
            c.user(v);
        }
        if let Some(v) = self.get_password() {
            c.password(v);
        }
        if let Some(v) = self.get_dbname() {
            c.dbname(v);
        }
        if let Some(v) = self.get_options() {
            c.options(v);
        }
        if let Some(v) = self.get_application_name() {
            c.application_name(v);
        }
        if let Some(v) = self.get_connect_timeout() {
            c.connect_timeout(*v);
        }
        if let Some(v) = self.get_tcp_user_timeout() {
            c.tcp_user_timeout(*v);
        }
        c.ssl_mode(self.get_ssl_mode())
            .keepalives(self.get_keepalives())
            .keepalives_idle(self.get_keepalives_idle())
            .target_session_attrs(self.get_target_session_attrs())
            .channel_binding(self.get_channel_binding());
        if let Some(v) = self.get_keepalives_interval() {
            c.keepalives_interval(v);
        }
        if let Some(v) = self.get_keepalives_retries() {
            c.keepalives_retries(v);
        }
        c
    }
}

fn redact(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut out = format!("host={} port={}", hosts.join(","), ports.join(","));
    if let Some(user) = config.get_user() {
        out.push_str(&format!(" user={user}"));
    }
    if config.get_password().is_some() {
        out.push_str(" password=<redacted>");
    }
    if let Some(db) = config.get_dbname() {
        out.push_str(&format!(" dbname={db}"));
    }
    let attrs = match config.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => "read-write",
        _ => "any",
    };
    out.push_str(&format!(" target_session_attrs={attrs}"));
    out
}

/// Builds [`PgSettings`]: `Default + Clone`, `with_x(self, …) -> Self`, fallible
/// [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct PgSettingsBuilder {
    dsn: Option<String>,
    parsed: Option<tokio_postgres::Config>,
    tls_mode: Option<TlsMode>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    pool_size: usize,
    connect_timeout: Duration,
    operation_timeout: Duration,
    retry: RetryPolicy,
    application_name: Option<String>,
    names: VarNames,
}

impl Default for PgSettingsBuilder {
    fn default() -> Self {
        Self {
            dsn: None,
            parsed: None,
            tls_mode: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            application_name: None,
            names: VarNames { prefix: None },
        }
    }
}

fn parse_duration(var: String, value: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| ConfigError::Invalid {
        var: var.clone(),
        reason: format!("'{value}' is not a duration ({e}); write e.g. 500ms, 2s or 1m"),
    })?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            var,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

impl PgSettingsBuilder {
    /// Reads `{prefix}_POSTGRES__…` through `lookup` into a builder, so code can
    /// still override single settings before [`build`](Self::build).
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let names = VarNames {
            prefix: Some(prefix.to_owned()),
        };
        let get = |key: &str| {
            lookup(&names.name(key))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut b = Self {
            names: names.clone(),
            ..Self::default()
        };
        b.dsn = get("DSN");
        if let Some(mode) = get("TLS__MODE") {
            b.tls_mode = Some(mode.parse().map_err(|reason| ConfigError::Invalid {
                var: names.name("TLS__MODE"),
                reason,
            })?);
        }
        b.ca_file = get("TLS__CA_FILE").map(PathBuf::from);
        b.cert_file = get("TLS__CERT_FILE").map(PathBuf::from);
        b.key_file = get("TLS__KEY_FILE").map(PathBuf::from);
        if let Some(v) = get("POOL_SIZE") {
            b.pool_size = v.parse().map_err(|_| ConfigError::Invalid {
                var: names.name("POOL_SIZE"),
                reason: format!("'{v}' is not a whole number"),
            })?;
        }
        if let Some(v) = get("CONNECT_TIMEOUT") {
            b.connect_timeout = parse_duration(names.name("CONNECT_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("OPERATION_TIMEOUT") {
            b.operation_timeout = parse_duration(names.name("OPERATION_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("RETRY_BUDGET") {
            b.retry.budget = parse_duration(names.name("RETRY_BUDGET"), &v)?;
        }
        b.application_name = get("APPLICATION_NAME");
        Ok(b)
    }

    /// The DSN: `host=a,b port=1,2 user=u dbname=d` or `postgres://u@h1:1,h2:2/d`.
    #[must_use]
    pub fn with_dsn(mut self, dsn: impl Into<String>) -> Self {
        self.dsn = Some(dsn.into());
        self.parsed = None;
        self
    }

    /// TLS mode.
    #[must_use]
    pub fn with_tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = Some(mode);
        self
    }

    /// CA file (PEM).
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Client certificate and key (PEM).
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// Connections in the pool.
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Bound of one connection attempt to one host.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound of one attempt of one operation.
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Total time an operation may spend retrying.
    #[must_use]
    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.retry.budget = budget;
        self
    }

    /// The whole retry policy (its `attempt_timeout` is replaced by the operation timeout).
    #[must_use]
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// `application_name` reported to the server.
    #[must_use]
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Validates and builds. Reads nothing from the network; TLS files are checked
    /// for existence here and parsed when the pool is created.
    pub fn build(self) -> Result<PgSettings, ConfigError> {
        let names = self.names;
        let dsn_var = names.name("DSN");
        let mut config = match (self.dsn, self.parsed) {
            (Some(dsn), _) => parse_dsn(&dsn_var, &dsn)?,
            (None, Some(parsed)) => parsed,
            (None, None) => return Err(ConfigError::Missing { var: dsn_var }),
        };
        if config.get_hosts().is_empty() {
            return Err(ConfigError::Invalid {
                var: dsn_var,
                reason: "names no host: add host=… (several hosts separated by commas)".into(),
            });
        }
        let ports = config.get_ports().len();
        if ports > 1 && ports != config.get_hosts().len() {
            return Err(ConfigError::Invalid {
                var: dsn_var,
                reason: format!(
                    "has {} hosts but {ports} ports: give one port, or one per host",
                    config.get_hosts().len()
                ),
            });
        }
        if self.pool_size == 0 {
            return Err(ConfigError::Invalid {
                var: names.name("POOL_SIZE"),
                reason: "must be at least 1".into(),
            });
        }
        for (key, d) in [
            ("CONNECT_TIMEOUT", self.connect_timeout),
            ("OPERATION_TIMEOUT", self.operation_timeout),
            ("RETRY_BUDGET", self.retry.budget),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    var: names.name(key),
                    reason: "must be greater than zero".into(),
                });
            }
        }
        let mode = self.tls_mode.unwrap_or(match config.get_ssl_mode() {
            SslMode::Require => TlsMode::Require,
            _ => TlsMode::Disable,
        });
        let tls = TlsSettings {
            mode,
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
        };
        check_tls(&names, &tls)?;
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        });
        config.connect_timeout(self.connect_timeout);
        config.keepalives(true);
        if let Some(name) = self.application_name {
            config.application_name(name);
        }
        let mut retry = self.retry;
        retry.attempt_timeout = self.operation_timeout;
        Ok(PgSettings {
            config,
            tls,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            retry,
            names,
        })
    }
}

fn parse_dsn(var: &str, dsn: &str) -> Result<tokio_postgres::Config, ConfigError> {
    let mut config = tokio_postgres::Config::from_str(dsn).map_err(|e| ConfigError::Invalid {
        var: var.to_owned(),
        // tokio-postgres names the offending option, never the value; still scrub.
        reason: format!(
            "not a PostgreSQL DSN ({}); write 'host=h1,h2 port=5432,5432 user=u dbname=d' or 'postgres://u@h1:5432,h2:5432/d'",
            scrub(&e.to_string(), dsn)
        ),
    })?;
    // Failover needs a writable server: prefer read-write unless the DSN asks otherwise.
    if !dsn.contains("target_session_attrs") {
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    Ok(config)
}

/// Removes any part of the DSN that may carry a secret from an error message.
fn scrub(message: &str, dsn: &str) -> String {
    let mut out = message.to_owned();
    for part in dsn.split([' ', '@', ':', '/', '?', '&']) {
        if let Some(secret) = part.strip_prefix("password=") {
            if !secret.is_empty() {
                out = out.replace(secret, "<redacted>");
            }
        }
    }
    if let Some(rest) = dsn.split_once("://").map(|(_, r)| r) {
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                if !pw.is_empty() {
                    out = out.replace(pw, "<redacted>");
                }
            }
        }
    }
    out
}

fn check_tls(names: &VarNames, tls: &TlsSettings) -> Result<(), ConfigError> {
    let files = [
        ("TLS__CA_FILE", &tls.ca_file),
        ("TLS__CERT_FILE", &tls.cert_file),
        ("TLS__KEY_FILE", &tls.key_file),
    ];
    for (key, path) in files {
        if let Some(path) = path {
            readable(&names.name(key), path)?;
        }
    }
    if tls.mode == TlsMode::VerifyFull && tls.ca_file.is_none() {
        return Err(ConfigError::Invalid {
            var: names.name("TLS__CA_FILE"),
            reason: "is required when TLS mode is verify-full: point it at the PEM file of the CA that signed the server certificate".into(),
        });
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(ConfigError::Invalid {
            var: names.name(if tls.cert_file.is_some() {
                "TLS__KEY_FILE"
            } else {
                "TLS__CERT_FILE"
            }),
            reason: "a client certificate needs both CERT_FILE and KEY_FILE".into(),
        });
    }
    Ok(())
}

fn readable(var: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|e| ConfigError::TlsFile {
            var: var.to_owned(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const P: &str = "TRADEPULSE_KILL_SWITCH";

    #[test]
    fn dsn_comes_from_the_prefixed_variable() {
        let s = PgSettings::from_lookup(
            P,
            env(&[
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN",
                    "host=a,b port=1,2 user=u dbname=d",
                ),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__POOL_SIZE", "3"),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__OPERATION_TIMEOUT",
                    "750ms",
                ),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__RETRY_BUDGET", "3s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.pool_size(), 3);
        assert_eq!(s.operation_timeout(), Duration::from_millis(750));
        assert_eq!(s.retry_policy().budget, Duration::from_secs(3));
        let hosts = s.per_host_configs();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].0, "b:2");
        assert_eq!(
            s.config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let err = PgSettings::from_lookup(P, env(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN is not set"),
            "{err}"
        );
        let err = PgSettings::from_lookup(
            P,
            env(&[(
                "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN",
                "host=a port=notaport password=hunter2",
            )]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN is invalid"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__CONNECT_TIMEOUT", "soon"),
            ]),
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__CONNECT_TIMEOUT"));
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE", "maybe"),
            ]),
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE"));
    }

    #[test]
    fn missing_tls_files_are_refused_with_the_variable_and_path() {
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE", "verify-full"),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE",
                    "no/such/ca.pem",
                ),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE"),
            "{text}"
        );
        assert!(text.contains("no/such/ca.pem"), "{text}");
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE", "verify-full"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("TLS__CA_FILE"), "{err}");
    }

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
    fn a_builder_error_names_the_method() {
        let err = PgSettings::builder().build().unwrap_err();
        assert!(err.to_string().contains("PgSettingsBuilder::dsn"), "{err}");
        let err = PgSettings::builder()
            .with_dsn("host=a")
            .with_pool_size(0)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("pool_size"), "{err}");
    }
}
