//! Settings from environment variables: `{prefix}_POSTGRES__{KEY}`, `__` nesting, with
//! `TRADEPULSE_POSTGRES__{KEY}` shared by every store.
//!
//! The rule, key by key: a store's own variable (`TRADEPULSE_KILL_SWITCH_POSTGRES__DSN`)
//! wins where it is set; a key the store's prefix does not set is read from the shared
//! prefix (`TRADEPULSE_POSTGRES__DSN`). So one `TRADEPULSE_POSTGRES__DSN` serves every
//! store, a store with a DSN of its own still gets the shared TLS files, and a single
//! store-prefixed key (`TRADEPULSE_FENCING_POSTGRES__POOL_SIZE`) overrides only itself.
//! Errors name the variable the value was read from; a missing key names both.

use super::{PgSettingsBuilder, VarNames};
use crate::errors::ConfigError;
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

/// The prefix whose `TRADEPULSE_POSTGRES__*` variables every store falls back to for a
/// key its own prefix does not set.
pub const SHARED_ENV_PREFIX: &str = "TRADEPULSE";

/// Reads `{prefix}_POSTGRES__{key}` and, failing that, the shared variable, and
/// remembers which keys came from where so that errors name the variable consulted.
struct EnvSource<L> {
    prefix: String,
    shared: Option<&'static str>,
    lookup: L,
    own: RefCell<Vec<String>>,
    from_shared: RefCell<Vec<String>>,
}

impl<L: Fn(&str) -> Option<String>> EnvSource<L> {
    fn new(prefix: &str, lookup: L) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shared: (prefix != SHARED_ENV_PREFIX).then_some(SHARED_ENV_PREFIX),
            lookup,
            own: RefCell::new(Vec::new()),
            from_shared: RefCell::new(Vec::new()),
        }
    }

    /// A variable's value; blank counts as unset.
    fn value(&self, prefix: &str, key: &str) -> Option<String> {
        (self.lookup)(&format!("{prefix}_POSTGRES__{key}"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.value(&self.prefix, key) {
            self.own.borrow_mut().push(key.to_owned());
            return Some(v);
        }
        let v = self.value(self.shared?, key)?;
        self.from_shared.borrow_mut().push(key.to_owned());
        Some(v)
    }

    /// The names errors use, as far as the keys read so far tell.
    fn names(&self) -> VarNames {
        VarNames::Env {
            prefix: self.prefix.clone(),
            shared: self.shared.map(str::to_owned),
            own: self.own.borrow().clone(),
            from_shared: self.from_shared.borrow().clone(),
        }
    }

    fn var(&self, key: &str) -> String {
        self.names().name(key)
    }
}

/// The variable that supplies the DSN of the store with env prefix `prefix`:
/// `{prefix}_POSTGRES__DSN` when set, else `TRADEPULSE_POSTGRES__DSN` when set, else
/// `None` (the store is not configured through the environment).
pub(super) fn dsn_variable(
    prefix: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let source = EnvSource::new(prefix, lookup);
    source.get("DSN").map(|_| source.var("DSN"))
}

impl PgSettingsBuilder {
    /// Reads `{prefix}_POSTGRES__…` through `lookup` into a builder, so code can
    /// still override single settings before [`build`](Self::build). A key the
    /// prefix does not set is read from `TRADEPULSE_POSTGRES__…`
    /// ([`SHARED_ENV_PREFIX`](super::SHARED_ENV_PREFIX)). Blank values count as unset.
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let source = EnvSource::new(prefix, lookup);
        let get = |key: &str| source.get(key);
        let var = |key: &str| source.var(key);
        let mut b = Self {
            dsn: get("DSN"),
            ..Self::default()
        };
        b.password_file = get("PASSWORD_FILE").map(PathBuf::from);
        if let Some(mode) = get("TLS__MODE") {
            b.tls_mode = Some(mode.parse().map_err(|reason| ConfigError::Invalid {
                var: var("TLS__MODE"),
                reason,
            })?);
        }
        b.ca_file = get("TLS__CA_FILE").map(PathBuf::from);
        b.cert_file = get("TLS__CERT_FILE").map(PathBuf::from);
        b.key_file = get("TLS__KEY_FILE").map(PathBuf::from);
        if let Some(v) = get("POOL_SIZE") {
            b.pool_size = v.parse().map_err(|_| ConfigError::Invalid {
                var: var("POOL_SIZE"),
                reason: format!("'{v}' is not a whole number"),
            })?;
        }
        if let Some(v) = get("CONNECT_TIMEOUT") {
            b.connect_timeout = parse_duration(var("CONNECT_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("OPERATION_TIMEOUT") {
            b.operation_timeout = parse_duration(var("OPERATION_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("LOCK_TIMEOUT") {
            b.lock_timeout = parse_duration(var("LOCK_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("RETRY_BUDGET") {
            b.retry.budget = parse_duration(var("RETRY_BUDGET"), &v)?;
        }
        b.application_name = get("APPLICATION_NAME");
        b.listen_dsn = get("LISTEN_DSN");
        if let Some(v) = get("STATEMENTS") {
            b.statements = v.parse().map_err(|reason| ConfigError::Invalid {
                var: var("STATEMENTS"),
                reason,
            })?;
        }
        // Every key has been read: errors from `build` name where each came from.
        b.names = source.names();
        Ok(b)
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

#[cfg(test)]
mod tests {
    use super::super::tests::tempfile_with;
    use super::super::{PgSettings, TlsMode};
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio_postgres::config::TargetSessionAttrs;

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
    fn a_listen_dsn_and_the_statement_mode_come_from_their_variables() {
        let settings = PgSettings::from_lookup(
            P,
            env(&[
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN",
                    "host=bouncer port=6432 user=u password=hunter2 dbname=d",
                ),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__LISTEN_DSN",
                    "host=db1,db2 port=5432,5432 user=u dbname=d",
                ),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__STATEMENTS", "unnamed"),
            ]),
        )
        .unwrap();
        let listen = settings.redacted_listen_dsn().unwrap();
        assert!(listen.contains("db1") && listen.contains("db2"), "{listen}");
        assert!(!format!("{settings:?} {listen}").contains("hunter2"));
        assert_eq!(settings.statements(), super::super::StatementMode::Unnamed);
        assert_eq!(settings.listen_per_host_configs().len(), 2);
        // The listen connection authenticates like the pool.
        assert!(settings.listen_per_host_configs()[0]
            .1
            .get_password()
            .is_some());
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__STATEMENTS", "named"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TRADEPULSE_KILL_SWITCH_POSTGRES__STATEMENTS")
                && text.contains("unnamed"),
            "{text}"
        );
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__LISTEN_DSN",
                    "port=notaport",
                ),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("TRADEPULSE_KILL_SWITCH_POSTGRES__LISTEN_DSN"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let err = PgSettings::from_lookup(P, env(&[])).unwrap_err();
        assert!(
            err.to_string().contains(
                "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN or TRADEPULSE_POSTGRES__DSN is not set"
            ),
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
    fn every_variable_is_read() {
        let ca = tempfile_with(b"ca");
        let password = tempfile_with(b"pw\n");
        let ca_path = ca.path().display().to_string();
        let password_path = password.path().display().to_string();
        let s = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", " host=a user=u "),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__PASSWORD_FILE",
                    &password_path,
                ),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__MODE", "verify-ca"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE", &ca_path),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__POOL_SIZE", "4"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__CONNECT_TIMEOUT", "300ms"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__OPERATION_TIMEOUT", "1s"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__RETRY_BUDGET", "1m"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__LOCK_TIMEOUT", "250ms"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__APPLICATION_NAME", "gw-1"),
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__IGNORED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(s.password_file(), Some(password.path()));
        assert_eq!(s.tls().mode, TlsMode::VerifyCa);
        assert_eq!(s.tls().ca_file.as_deref(), Some(ca.path()));
        assert_eq!(s.pool_size(), 4);
        assert_eq!(s.connect_timeout(), Duration::from_millis(300));
        assert_eq!(s.operation_timeout(), Duration::from_secs(1));
        assert_eq!(s.retry_policy().budget, Duration::from_secs(60));
        assert_eq!(s.retry_policy().attempt_timeout, Duration::from_secs(1));
        assert_eq!(s.lock_timeout(), Duration::from_millis(250));
        assert_eq!(s.config.get_application_name(), Some("gw-1"));
    }

    #[test]
    fn an_unreadable_password_file_names_the_variable_and_the_file() {
        let err = PgSettings::from_lookup(
            P,
            env(&[
                ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                (
                    "TRADEPULSE_KILL_SWITCH_POSTGRES__PASSWORD_FILE",
                    "/nonexistent/pg-password",
                ),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("TRADEPULSE_KILL_SWITCH_POSTGRES__PASSWORD_FILE names '/nonexistent/pg-password', which cannot be read as the password:"),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_number_or_zero_duration_is_named() {
        let cases = [
            ("POOL_SIZE", "many", "is not a whole number"),
            ("POOL_SIZE", "0", "must be at least 1"),
            ("RETRY_BUDGET", "0s", "must be greater than zero"),
            ("OPERATION_TIMEOUT", "2 parsecs", "is not a duration"),
        ];
        for (key, value, expected) in cases {
            let var = format!("TRADEPULSE_KILL_SWITCH_POSTGRES__{key}");
            let err = PgSettings::from_lookup(
                P,
                env(&[
                    ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=a"),
                    (&var, value),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(&format!("{var} is invalid")), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }
}
