//! Settings a deployment writes, against a real server where the behaviour is the
//! server's: TLS `verify-ca` accepts a certificate that chains to the CA under any
//! host name (where `verify-full` refuses it) and refuses a foreign CA; a password file
//! is read, and an unreadable one is named.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tradepulse_failover_core::postgres::{PgPool, PgSettings, TlsMode};
use tradepulse_testkit::{generate_ca_file, Cluster};

const PREFIX: &str = "TRADEPULSE_KILL_SWITCH";

fn settings(vars: &[(&str, String)]) -> Result<PgSettings, String> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (format!("{PREFIX}_POSTGRES__{k}"), v.clone()))
        .collect();
    PgSettings::from_lookup(PREFIX, |k| env.get(k).cloned()).map_err(|e| e.to_string())
}

async fn session_is_encrypted(settings: PgSettings) -> Result<bool, String> {
    let pool = PgPool::new("test", settings).map_err(|e| e.to_string())?;
    pool.run("test.ssl", |c| {
        Box::pin(async move {
            let row = c
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
    })
    .await
    .map_err(|e| e.to_string())
}

/// The server's certificate names 127.0.0.1 and localhost; this DSN reaches the same
/// server under a name the certificate does not list.
fn dsn_under_another_name(dsn: &str) -> String {
    assert!(dsn.contains("host=127.0.0.1 "), "{dsn}");
    dsn.replace("host=127.0.0.1 ", "host=db.invalid hostaddr=127.0.0.1 ") + " connect_timeout=2"
}

fn tls_vars(dsn: String, mode: &str, ca: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DSN", dsn),
        ("TLS__MODE", mode.to_owned()),
        ("TLS__CA_FILE", ca.display().to_string()),
        ("RETRY_BUDGET", "1s".to_owned()),
    ]
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let cluster = Cluster::builder()
        .tls(true)
        .start()
        .await
        .expect("tls cluster");
    let db = cluster.create_database().await.unwrap();
    let ca = cluster.ca_cert_path().expect("ca").to_path_buf();
    let aliased = dsn_under_another_name(&cluster.primary().dsn(&db));

    // verify-ca: the chain is what counts.
    let s = settings(&tls_vars(aliased.clone(), "verify-ca", &ca)).expect("verify-ca is a mode");
    assert_eq!(s.tls().mode, TlsMode::VerifyCa);
    assert_eq!(
        session_is_encrypted(s).await,
        Ok(true),
        "verify-ca connects to a server whose certificate chains to the CA"
    );

    // verify-full: the same server under a name its certificate lacks is refused.
    let s = settings(&tls_vars(aliased.clone(), "verify-full", &ca)).unwrap();
    let err = session_is_encrypted(s).await.expect_err("name mismatch");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("NotValidForName"),
        "{err}"
    );

    // verify-ca with a CA that did not sign the server certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let wrong = generate_ca_file(other.path(), "wrong-ca").unwrap();
    let s = settings(&tls_vars(aliased, "verify-ca", &wrong)).unwrap();
    let err = session_is_encrypted(s)
        .await
        .expect_err("a foreign CA must be refused");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[test]
fn verify_ca_without_a_ca_file_is_refused_naming_the_variable() {
    let err = settings(&[
        ("DSN", "host=a".to_owned()),
        ("TLS__MODE", "verify-ca".to_owned()),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("TRADEPULSE_KILL_SWITCH_POSTGRES__TLS__CA_FILE is invalid"),
        "{err}"
    );
}

#[test]
fn the_password_comes_from_the_password_file_and_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg-password");
    std::fs::write(&file, "s3cret-in-a-file\n").unwrap();
    let s = settings(&[
        ("DSN", "host=a user=trader dbname=trading".to_owned()),
        ("PASSWORD_FILE", file.display().to_string()),
    ])
    .expect("settings");
    assert_eq!(s.password_file(), Some(file.as_path()));
    let shown = format!("{s:?} {s} {}", s.redacted_dsn());
    assert!(shown.contains("password=<redacted>"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");

    let missing = dir.path().join("absent");
    let err = settings(&[
        ("DSN", "host=a".to_owned()),
        ("PASSWORD_FILE", missing.display().to_string()),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("TRADEPULSE_KILL_SWITCH_POSTGRES__PASSWORD_FILE names"),
        "{err}"
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[tokio::test]
async fn the_password_from_the_file_is_the_one_the_server_checks() {
    let cluster = Cluster::start().await.expect("cluster");
    let db = cluster.create_database().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    // The testkit trusts every local connection; make the server check the password
    // of one role (first matching pg_hba.conf line wins).
    let hba = cluster.primary().data_dir().join("pg_hba.conf");
    let trusted = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all trader 127.0.0.1/32 scram-sha-256\n{trusted}"),
    )
    .unwrap();
    let admin = PgPool::new("test", settings(&[("DSN", dsn.clone())]).unwrap()).unwrap();
    admin
        .run("test.role", |c| {
            Box::pin(async move {
                c.batch_execute(
                    "CREATE ROLE trader LOGIN PASSWORD 'from-the-file'; SELECT pg_reload_conf()",
                )
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let as_trader = dsn.replace("user=postgres", "user=trader");
    let current_user = |password: &str| {
        let file = dir.path().join(format!("pg-password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let settings = settings(&[
            ("DSN", as_trader.clone()),
            ("PASSWORD_FILE", file.display().to_string()),
            ("RETRY_BUDGET", "1s".to_owned()),
        ])
        .unwrap();
        async move {
            let pool = PgPool::new("test", settings).map_err(|e| e.to_string())?;
            pool.run("test.user", |c| {
                Box::pin(async move {
                    Ok(c.query_one("SELECT current_user::text", &[])
                        .await?
                        .get::<_, String>(0))
                })
            })
            .await
            .map_err(|e| e.to_string())
        }
    };
    // The reload is asynchronous: wait until a wrong password is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match current_user("wrong-password").await {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(user) => panic!("the server never checked the password (connected as {user})"),
        }
    };
    assert!(refused.contains("password"), "{refused}");
    assert!(!refused.contains("wrong-password"), "{refused}");
    assert_eq!(
        current_user("from-the-file").await,
        Ok("trader".to_owned()),
        "the password read from the file is accepted"
    );
}

/// Settings of the kill switch store from exactly these variables (full names).
fn kill_switch_from(vars: &[(&str, &str)]) -> Result<PgSettings, String> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PgSettings::from_lookup(PREFIX, |k| env.get(k).cloned()).map_err(|e| e.to_string())
}

#[test]
fn the_shared_dsn_alone_configures_every_store() {
    let vars = [
        ("TRADEPULSE_POSTGRES__DSN", "host=shared-db user=u dbname=d"),
        ("TRADEPULSE_POSTGRES__POOL_SIZE", "3"),
    ];
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for prefix in [
        "TRADEPULSE_KILL_SWITCH",
        "TRADEPULSE_SYMBOL_MODE",
        "TRADEPULSE_FENCING",
    ] {
        let s = PgSettings::from_lookup(prefix, |k| env.get(k).cloned()).unwrap();
        assert!(s.redacted_dsn().contains("host=shared-db"), "{prefix}: {s}");
        assert_eq!(s.pool_size(), 3, "{prefix}");
        assert_eq!(
            PgSettings::dsn_variable(prefix, |k| env.get(k).cloned()).as_deref(),
            Some("TRADEPULSE_POSTGRES__DSN")
        );
    }
}

#[test]
fn the_stores_own_dsn_alone_is_used() {
    let s = kill_switch_from(&[(
        "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN",
        "host=own-db user=u dbname=d",
    )])
    .unwrap();
    assert!(s.redacted_dsn().contains("host=own-db"), "{s}");
    assert_eq!(
        PgSettings::dsn_variable(PREFIX, |k| {
            (k == "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN").then(|| "host=own-db".to_owned())
        })
        .as_deref(),
        Some("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN")
    );
}

#[test]
fn the_stores_own_variables_win_over_the_shared_ones_key_by_key() {
    let s = kill_switch_from(&[
        ("TRADEPULSE_POSTGRES__DSN", "host=shared-db user=u dbname=d"),
        ("TRADEPULSE_POSTGRES__POOL_SIZE", "3"),
        ("TRADEPULSE_POSTGRES__RETRY_BUDGET", "9s"),
        (
            "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN",
            "host=own-db user=u dbname=d",
        ),
        ("TRADEPULSE_KILL_SWITCH_POSTGRES__POOL_SIZE", "5"),
    ])
    .unwrap();
    assert!(s.redacted_dsn().contains("host=own-db"), "{s}");
    assert!(!s.redacted_dsn().contains("shared-db"), "{s}");
    assert_eq!(s.pool_size(), 5);
    // A key the store's prefix does not set still comes from the shared prefix.
    assert_eq!(s.retry_policy().budget, Duration::from_secs(9));
    // A blank store variable counts as unset.
    let s = kill_switch_from(&[
        ("TRADEPULSE_POSTGRES__DSN", "host=shared-db user=u dbname=d"),
        ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "  "),
    ])
    .unwrap();
    assert!(s.redacted_dsn().contains("host=shared-db"), "{s}");
}

#[test]
fn shared_tls_settings_apply_to_a_store_with_its_own_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not parsed until the pool is built").unwrap();
    let ca_text = ca.display().to_string();
    let s = kill_switch_from(&[
        ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=own-db user=u"),
        ("TRADEPULSE_POSTGRES__TLS__MODE", "verify-full"),
        ("TRADEPULSE_POSTGRES__TLS__CA_FILE", &ca_text),
    ])
    .unwrap();
    assert_eq!(s.tls().mode, TlsMode::VerifyFull);
    assert_eq!(s.tls().ca_file.as_deref(), Some(ca.as_path()));
    // An error about a shared key names the shared variable, the one actually read.
    let err = kill_switch_from(&[
        ("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", "host=own-db user=u"),
        ("TRADEPULSE_POSTGRES__TLS__MODE", "verify-full"),
        ("TRADEPULSE_POSTGRES__TLS__CA_FILE", "no/such/ca.pem"),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("TRADEPULSE_POSTGRES__TLS__CA_FILE names 'no/such/ca.pem'"),
        "{err}"
    );
    let err = kill_switch_from(&[
        ("TRADEPULSE_POSTGRES__DSN", "host=shared-db port=many"),
        ("TRADEPULSE_KILL_SWITCH_POSTGRES__POOL_SIZE", "2"),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("TRADEPULSE_POSTGRES__DSN is invalid"),
        "{err}"
    );
}

#[test]
fn a_missing_dsn_names_the_stores_variable_and_the_shared_one() {
    let err = kill_switch_from(&[("TRADEPULSE_KILL_SWITCH_POSTGRES__POOL_SIZE", "2")]).unwrap_err();
    assert!(
        err.starts_with(
            "TRADEPULSE_KILL_SWITCH_POSTGRES__DSN or TRADEPULSE_POSTGRES__DSN is not set"
        ),
        "{err}"
    );
    assert_eq!(PgSettings::dsn_variable(PREFIX, |_| None), None);
    // A DSN set for another store configures no other.
    let err = kill_switch_from(&[("TRADEPULSE_FENCING_POSTGRES__DSN", "host=a")]).unwrap_err();
    assert!(err.contains("TRADEPULSE_POSTGRES__DSN is not set"), "{err}");
}

#[test]
fn a_missing_key_is_named_beside_the_dsn_it_goes_with() {
    let err = kill_switch_from(&[
        ("TRADEPULSE_POSTGRES__DSN", "host=a"),
        ("TRADEPULSE_POSTGRES__TLS__MODE", "verify-ca"),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("TRADEPULSE_POSTGRES__TLS__CA_FILE is invalid"),
        "{err}"
    );
}
