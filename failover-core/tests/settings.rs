//! Settings a deployment writes, against a real server where the behaviour is the
//! server's: TLS `verify-ca` accepts a certificate that chains to the CA under any
//! host name (where `verify-full` refuses it) and refuses a foreign CA; a password file
//! is read, and an unreadable one is named.
#![cfg(feature = "testkit")]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tradepulse_failover_core::postgres::{PgPool, PgSettings, TlsMode};
use tradepulse_failover_core::testkit::{generate_ca_file, Cluster};

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
