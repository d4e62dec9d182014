//! Settings from environment variables: `{prefix}_POSTGRES__{KEY}`, `__` nesting.

use super::{PgSettingsBuilder, VarNames};
use crate::errors::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

impl PgSettingsBuilder {
    /// Reads `{prefix}_POSTGRES__…` through `lookup` into a builder, so code can
    /// still override single settings before [`build`](Self::build). Blank values
    /// count as unset.
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let names = VarNames::Env {
            prefix: prefix.to_owned(),
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
        b.password_file = get("PASSWORD_FILE").map(PathBuf::from);
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
        if let Some(v) = get("LOCK_TIMEOUT") {
            b.lock_timeout = parse_duration(names.name("LOCK_TIMEOUT"), &v)?;
        }
        if let Some(v) = get("RETRY_BUDGET") {
            b.retry.budget = parse_duration(names.name("RETRY_BUDGET"), &v)?;
        }
        b.application_name = get("APPLICATION_NAME");
        b.listen_dsn = get("LISTEN_DSN");
        if let Some(v) = get("STATEMENTS") {
            b.statements = v.parse().map_err(|reason| ConfigError::Invalid {
                var: names.name("STATEMENTS"),
                reason,
            })?;
        }
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
