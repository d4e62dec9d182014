//! The builder of [`PgSettings`]: every setting with its default, and the checks
//! that run when it is built — the DSN names a host, timeouts are above zero, TLS
//! files exist and fit the TLS mode, the password file is readable and not empty —
//! so that a bad setting fails at start, naming the setting to fix.

use super::{dsn, PgSettings, StatementMode, TlsMode, TlsSettings, VarNames, DEFAULT_LOCK_TIMEOUT};
use crate::errors::ConfigError;
use crate::retry::RetryPolicy;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// Builds [`PgSettings`]: `Default + Clone`, `with_x(self, …) -> Self`, fallible
/// [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct PgSettingsBuilder {
    pub(super) dsn: Option<String>,
    pub(super) parsed: Option<tokio_postgres::Config>,
    pub(super) tls_mode: Option<TlsMode>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) pool_size: usize,
    pub(super) connect_timeout: Duration,
    pub(super) operation_timeout: Duration,
    pub(super) lock_timeout: Duration,
    pub(super) retry: RetryPolicy,
    pub(super) application_name: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(crate) listen_dsn: Option<String>,
    pub(super) listen_parsed: Option<tokio_postgres::Config>,
    pub(crate) statements: StatementMode,
    pub(super) names: VarNames,
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
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            retry: RetryPolicy::default(),
            application_name: None,
            password_file: None,
            listen_dsn: None,
            listen_parsed: None,
            statements: StatementMode::Auto,
            names: VarNames::Builder,
        }
    }
}

impl PgSettingsBuilder {
    /// Where push's LISTEN connection goes when the DSN is a transaction pooler: the
    /// primary directly (multi-host allowed) or a session-mode pool.
    #[must_use]
    pub fn with_listen_dsn(mut self, dsn: impl Into<String>) -> Self {
        self.listen_dsn = Some(dsn.into());
        self
    }

    /// How statements are sent ([`StatementMode`]).
    #[must_use]
    pub fn with_statements(mut self, mode: StatementMode) -> Self {
        self.statements = mode;
        self
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

    /// Reads the password from `path` when building (and again on every DSN swap, so a
    /// rotated secret is picked up). The DSN must then carry no password.
    #[must_use]
    pub fn with_password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
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

    /// Longest wait of a statement for a row or table lock another session holds
    /// (default 500 ms); see [`PgSettings::effective_lock_timeout`].
    #[must_use]
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
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
        let (mut config, from_text) = match (self.dsn, self.parsed) {
            (Some(dsn), _) => (dsn::parse_dsn(&dsn_var, &dsn)?, true),
            (None, Some(parsed)) => (parsed, false),
            (None, None) => return Err(ConfigError::Missing { var: dsn_var }),
        };
        if let Some(path) = &self.password_file {
            let var = names.name("PASSWORD_FILE");
            if from_text && config.get_password().is_some() {
                return Err(ConfigError::Invalid {
                    var,
                    reason: format!(
                        "is set but {dsn_var} carries a password too: keep only one of them"
                    ),
                });
            }
            config.password(read_password_file(&var, path)?);
        }
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
            ("LOCK_TIMEOUT", self.lock_timeout),
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
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        config.connect_timeout(self.connect_timeout);
        config.keepalives(true);
        if let Some(name) = self.application_name {
            config.application_name(name);
        }
        let mut retry = self.retry;
        retry.attempt_timeout = self.operation_timeout;
        let listen = match (self.listen_dsn, self.listen_parsed) {
            (Some(text), _) => {
                let var = names.name("LISTEN_DSN");
                let mut listen = dsn::parse_dsn(&var, &text)?;
                if listen.get_hosts().is_empty() {
                    return Err(ConfigError::Invalid {
                        var,
                        reason: "names no host: add host=…".into(),
                    });
                }
                if listen.get_password().is_none() {
                    if let Some(password) = config.get_password() {
                        listen.password(password);
                    }
                }
                listen.ssl_mode(config.get_ssl_mode());
                listen.connect_timeout(self.connect_timeout);
                listen.keepalives(true);
                Some(listen)
            }
            (None, parsed) => parsed,
        };
        Ok(PgSettings {
            config,
            tls,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            lock_timeout: self.lock_timeout,
            retry,
            password_file: self.password_file,
            listen,
            statements: self.statements,
            names,
        })
    }
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
    if tls.mode.verifies_ca() && tls.ca_file.is_none() {
        return Err(ConfigError::Invalid {
            var: names.name("TLS__CA_FILE"),
            reason: format!("is required when TLS mode is {}: point it at the PEM file of the CA that signed the server certificate", tls.mode),
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

/// The password file's contents without one trailing newline (as `echo` and most
/// secret stores write it). Errors name the variable and the file, never the content.
fn read_password_file(var: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let error = |reason: String| ConfigError::PasswordFile {
        var: var.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let mut bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempfile_with;
    use super::*;

    #[test]
    fn verify_ca_needs_a_ca_file_and_encrypts() {
        let err = PgSettings::builder()
            .with_dsn("host=a")
            .with_tls_mode(TlsMode::VerifyCa)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "PgSettingsBuilder::tls_ca_file is invalid: is required when TLS mode is verify-ca"
            ),
            "{err}"
        );
        let ca = tempfile_with(b"not checked until the pool is built");
        let s = PgSettings::builder()
            .with_dsn("host=a")
            .with_tls_mode(TlsMode::VerifyCa)
            .with_ca_file(ca.path())
            .build()
            .unwrap();
        assert_eq!(s.tls().mode, TlsMode::VerifyCa);
        assert_eq!(s.config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn the_password_file_sets_the_password_which_never_shows() {
        let file = tempfile_with(b"s3cret-from-file\n");
        let s = PgSettings::builder()
            .with_dsn("host=a user=u dbname=d")
            .with_password_file(file.path())
            .build()
            .unwrap();
        assert_eq!(s.config.get_password(), Some(&b"s3cret-from-file"[..]));
        for text in [format!("{s:?}"), format!("{s}"), s.redacted_dsn()] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(s.redacted_dsn().contains("password=<redacted>"));
        // A DSN swap re-reads the file (a rotated secret is picked up).
        std::fs::write(file.path(), "rotated\r\n").unwrap();
        let swapped = s.with_dsn("host=b user=u dbname=d").unwrap();
        assert_eq!(swapped.config.get_password(), Some(&b"rotated"[..]));
    }

    #[test]
    fn password_file_errors_name_the_setting_and_file_but_not_the_password() {
        let err = PgSettings::builder()
            .with_dsn("host=a")
            .with_password_file("no/such/password")
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("PgSettingsBuilder::password_file names 'no/such/password'"),
            "{text}"
        );
        let empty = tempfile_with(b"\n");
        let err = PgSettings::builder()
            .with_dsn("host=a")
            .with_password_file(empty.path())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("the file is empty"), "{err}");
        let file = tempfile_with(b"from-file");
        let err = PgSettings::builder()
            .with_dsn("host=a password=from-dsn")
            .with_password_file(file.path())
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("keep only one of them"), "{text}");
        assert!(
            !text.contains("from-dsn") && !text.contains("from-file"),
            "{text}"
        );
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
