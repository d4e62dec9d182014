//! What the CLI tests share: a migrated database of the shared test cluster, and the
//! built binary run against it.
#![allow(dead_code, unreachable_pub)]

use failover_core::postgres::tokio_postgres::{self, Client, NoTls};
use std::process::{Command, Output};
use std::sync::Arc;
use tradepulse_testkit::{shared_primary, Cluster};

pub struct Db {
    pub cluster: Arc<Cluster>,
    pub db: String,
    pub dsn: String,
}

pub async fn db() -> Db {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let lookup = |dsn: String| move |k: &str| k.ends_with("__DSN").then(|| dsn.clone());
    killswitch::PostgresKillSwitchStore::from_lookup(lookup(dsn.clone()))
        .unwrap()
        .migrate()
        .await
        .unwrap();
    symbol_mode::PostgresSymbolModeStore::from_lookup(lookup(dsn.clone()))
        .unwrap()
        .migrate()
        .await
        .unwrap();
    fencing::PostgresLeaseFencer::from_lookup(lookup(dsn.clone()))
        .unwrap()
        .migrate()
        .await
        .unwrap();
    Db { cluster, db, dsn }
}

/// The built binary with every store's settings pointing at `dsn`.
pub fn command(dsn: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_safetyctl"));
    for prefix in ["KILL_SWITCH", "SYMBOL_MODE", "FENCING"] {
        cmd.env(format!("TRADEPULSE_{prefix}_POSTGRES__DSN"), dsn);
        cmd.env(format!("TRADEPULSE_{prefix}_POSTGRES__RETRY_BUDGET"), "1s");
        cmd.env(
            format!("TRADEPULSE_{prefix}_POSTGRES__CONNECT_TIMEOUT"),
            "300ms",
        );
    }
    cmd.args(args);
    cmd
}

/// Runs the binary against `dsn` and waits for it.
pub fn safetyctl(dsn: &str, args: &[&str]) -> Output {
    command(dsn, args).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Db {
    pub async fn runbook_row(&self) -> Vec<Option<String>> {
        self.cluster
            .primary()
            .query(
                &self.db,
                "SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;",
            )
            .await
            .unwrap()
            .remove(0)
    }
}

pub async fn session(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// `dsn` with another login (the test cluster trusts local logins).
pub fn as_login(dsn: &str, login: &str) -> String {
    dsn.replace("user=postgres", &format!("user={login}"))
}

/// A login holding `role`, unique to this database (roles belong to the cluster).
pub async fn login(db: &Db, name: &str, role: &str) -> String {
    let login = format!("{name}_{}", db.db);
    let admin = session(&db.dsn).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN; GRANT {role} TO {login};"
        ))
        .await
        .unwrap();
    login
}

/// `safetyctl audit export --format FORMAT --out OUT EXTRA…` against `dsn`.
pub fn export(dsn: &str, format: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let args = [
        &["audit", "export", "--format", format, "--out", out][..],
        extra,
    ]
    .concat();
    safetyctl(dsn, &args)
}

/// Runs the binary against `dsn` while `held` keeps a competing change open: the
/// command must still be running once it is seen waiting on the held row (the write
/// decides, not what it read before); then the change commits and the command's
/// output is returned.
pub async fn run_behind(held: tradepulse_testkit::Held, dsn: &str, args: &[&str]) -> Output {
    let mut child = command(dsn, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    held.until_waited_on(std::time::Duration::from_secs(10))
        .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "safetyctl {args:?} exited while the competing change was still held open"
    );
    held.commit().await;
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Alice, an operator, and Bob, a supervisor: their logins of this database and the
/// DSNs that log in as them.
pub struct AliceAndBob {
    pub alice: String,
    pub alice_dsn: String,
    pub bob: String,
    pub bob_dsn: String,
}

pub async fn alice_and_bob(db: &Db) -> AliceAndBob {
    let alice = login(db, "alice", "tradepulse_operator").await;
    let bob = login(db, "bob", "tradepulse_supervisor").await;
    AliceAndBob {
        alice_dsn: as_login(&db.dsn, &alice),
        bob_dsn: as_login(&db.dsn, &bob),
        alice,
        bob,
    }
}
