//! DSN parsing, per-host splitting and redaction: pure functions of the DSN text.

use crate::errors::ConfigError;
use std::str::FromStr;
use tokio_postgres::config::{Host, TargetSessionAttrs};

/// Parses a key=value or URL DSN; `var` names the setting in errors. Defaults
/// `target_session_attrs` to read-write unless the DSN sets it.
pub(super) fn parse_dsn(var: &str, dsn: &str) -> Result<tokio_postgres::Config, ConfigError> {
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
pub(super) fn scrub(message: &str, dsn: &str) -> String {
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

/// The DSN in key=value form with the password replaced by `<redacted>`.
pub(super) fn redact(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut out = format!("host={}", hosts.join(","));
    if !ports.is_empty() {
        out.push_str(&format!(" port={}", ports.join(",")));
    }
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

/// One config per host, in DSN order, each labelled `host:port`.
pub(super) fn per_host_configs(
    config: &tokio_postgres::Config,
) -> Vec<(String, tokio_postgres::Config)> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let addrs = config.get_hostaddrs();
    let mut out = Vec::with_capacity(hosts.len().max(1));
    for (i, host) in hosts.iter().enumerate() {
        let port = match ports.len() {
            0 => 5432,
            1 => ports[0],
            _ => ports.get(i).copied().unwrap_or(5432),
        };
        let mut c = clone_without_hosts(config);
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

/// Copies every connection option except hosts, ports and host addresses.
fn clone_without_hosts(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(v) = config.get_user() {
        c.user(v);
    }
    if let Some(v) = config.get_password() {
        c.password(v);
    }
    if let Some(v) = config.get_dbname() {
        c.dbname(v);
    }
    if let Some(v) = config.get_options() {
        c.options(v);
    }
    if let Some(v) = config.get_application_name() {
        c.application_name(v);
    }
    if let Some(v) = config.get_connect_timeout() {
        c.connect_timeout(*v);
    }
    if let Some(v) = config.get_tcp_user_timeout() {
        c.tcp_user_timeout(*v);
    }
    c.ssl_mode(config.get_ssl_mode())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding());
    if let Some(v) = config.get_keepalives_interval() {
        c.keepalives_interval(v);
    }
    if let Some(v) = config.get_keepalives_retries() {
        c.keepalives_retries(v);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(dsn: &str) -> tokio_postgres::Config {
        parse_dsn("DSN", dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"))
    }

    #[test]
    fn dsns_split_into_one_config_per_host() {
        let cases: &[(&str, &[&str])] = &[
            ("host=a", &["a:5432"]),
            ("host=a port=6000", &["a:6000"]),
            ("host=a,b port=1,2", &["a:1", "b:2"]),
            ("host=a,b port=7", &["a:7", "b:7"]),
            ("host=a,b,c", &["a:5432", "b:5432", "c:5432"]),
            ("postgres://u@h1:5432,h2:5433/d", &["h1:5432", "h2:5433"]),
            ("postgresql://h1,h2/d", &["h1:5432", "h2:5432"]),
            ("host=/run/postgresql port=5433", &["/run/postgresql:5433"]),
            ("host=db.example hostaddr=127.0.0.1", &["db.example:5432"]),
        ];
        for (dsn, expected) in cases {
            let labels: Vec<String> = per_host_configs(&parse(dsn))
                .into_iter()
                .map(|(label, _)| label)
                .collect();
            assert_eq!(&labels, expected, "{dsn}");
        }
    }

    #[test]
    fn every_option_but_the_hosts_survives_the_split() {
        let config = parse(
            "host=a,b hostaddr=127.0.0.1,127.0.0.2 user=u password=p dbname=d application_name=x options=-c\\ x=1 target_session_attrs=any",
        );
        let split = per_host_configs(&config);
        let (_, second) = &split[1];
        assert_eq!(second.get_user(), Some("u"));
        assert_eq!(second.get_password(), Some(&b"p"[..]));
        assert_eq!(second.get_dbname(), Some("d"));
        assert_eq!(second.get_application_name(), Some("x"));
        assert_eq!(second.get_target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(
            second.get_hostaddrs(),
            &["127.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn target_session_attrs_defaults_to_read_write_unless_set() {
        let cases = [
            ("host=a", TargetSessionAttrs::ReadWrite),
            ("host=a target_session_attrs=any", TargetSessionAttrs::Any),
            (
                "host=a target_session_attrs=read-write",
                TargetSessionAttrs::ReadWrite,
            ),
            (
                "postgres://h/d?target_session_attrs=any",
                TargetSessionAttrs::Any,
            ),
            ("postgres://h/d", TargetSessionAttrs::ReadWrite),
        ];
        for (dsn, expected) in cases {
            assert_eq!(parse(dsn).get_target_session_attrs(), expected, "{dsn}");
        }
    }

    #[test]
    fn redaction_keeps_the_shape_and_hides_the_password() {
        let cases = [
            (
                "host=a,b port=1,2 user=u password=hunter2 dbname=d",
                "host=a,b port=1,2 user=u password=<redacted> dbname=d target_session_attrs=read-write",
            ),
            (
                "postgres://u:hunter2@h1:5432,h2:5433/d",
                "host=h1,h2 port=5432,5433 user=u password=<redacted> dbname=d target_session_attrs=read-write",
            ),
            (
                "host=a target_session_attrs=any",
                "host=a target_session_attrs=any",
            ),
        ];
        for (dsn, expected) in cases {
            assert_eq!(redact(&parse(dsn)), expected, "{dsn}");
        }
    }

    #[test]
    fn parse_errors_name_the_setting_and_never_the_password() {
        let cases = [
            "host=a port=notaport password=hunter2",
            "host=a password=hunter2 bogus",
            "postgres://u:hunter2@h1:notaport/d",
            "host=a password='hunter2 sslmode=maybe",
        ];
        for dsn in cases {
            let err = parse_dsn("X_POSTGRES__DSN", dsn)
                .expect_err(dsn)
                .to_string();
            assert!(
                err.starts_with("X_POSTGRES__DSN is invalid"),
                "{dsn}: {err}"
            );
            assert!(!err.contains("hunter2"), "{dsn}: {err}");
        }
    }

    #[test]
    fn scrub_removes_key_value_and_url_passwords() {
        let cases = [
            (
                "bad hunter2 here",
                "host=a password=hunter2",
                "bad <redacted> here",
            ),
            ("x hunter2", "postgres://u:hunter2@h/d", "x <redacted>"),
            ("nothing secret", "host=a", "nothing secret"),
            ("password= empty", "host=a password=", "password= empty"),
        ];
        for (message, dsn, expected) in cases {
            assert_eq!(scrub(message, dsn), expected, "{dsn}");
        }
    }
}
