//! pgbouncer in front of a cluster's primary, in session or transaction mode — what
//! most fleets run between their services and PostgreSQL. Debian's `pgbouncer`
//! package provides the binary (`.ci/run` installs it when missing).

use super::cluster::Cluster;
use super::node::HOST;
use super::TestkitError;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How pgbouncer hands server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection: LISTEN and prepared statements work.
    Session,
    /// A server connection per transaction: neither LISTEN nor named prepared
    /// statements survive between transactions.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

/// A running pgbouncer; stopped (SIGKILL) when dropped, and with the cluster.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    pid: u32,
    log: PathBuf,
    mode: PoolMode,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = super::process::signal(self.pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The pgbouncer binary: `PGBOUNCER`, then `PATH`, then Debian's `/usr/sbin/pgbouncer`.
fn binary() -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os("PGBOUNCER").map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
    }
    let candidates = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("pgbouncer"));
    for p in candidates {
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(TestkitError::setup(
        "pgbouncer not found: install Debian's `pgbouncer` package (apt-get install -y pgbouncer) or set PGBOUNCER",
    ))
}

impl Cluster {
    /// Starts pgbouncer in `mode` in front of the primary, for every database, with
    /// trust authentication for user `postgres`.
    pub async fn pgbouncer(&self, mode: PoolMode) -> Result<PgBouncer, TestkitError> {
        let program = binary()?;
        let port = super::cluster::free_port()?;
        let dir = self.dir().join(format!("pgbouncer-{port}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| TestkitError::io("creating pgbouncer's directory", e))?;
        self.ctx().launcher.chown(&dir)?;
        let log = dir.join("pgbouncer.log");
        let users = dir.join("userlist.txt");
        let mut ini = String::new();
        let _ = writeln!(ini, "[databases]");
        let _ = writeln!(ini, "* = host={HOST} port={}", self.primary().port());
        let _ = writeln!(ini, "[pgbouncer]");
        let _ = writeln!(ini, "listen_addr = {HOST}");
        let _ = writeln!(ini, "listen_port = {port}");
        let _ = writeln!(ini, "unix_socket_dir =");
        let _ = writeln!(ini, "auth_type = trust");
        let _ = writeln!(ini, "auth_file = {}", users.display());
        let _ = writeln!(ini, "pool_mode = {}", mode.as_str());
        let _ = writeln!(ini, "max_client_conn = 2000");
        let _ = writeln!(ini, "default_pool_size = 20");
        let _ = writeln!(
            ini,
            "ignore_startup_parameters = extra_float_digits,options"
        );
        let _ = writeln!(ini, "logfile = {}", log.display());
        let ini_path = dir.join("pgbouncer.ini");
        for (path, text) in [(&ini_path, ini), (&users, "\"postgres\" \"\"\n".to_owned())] {
            std::fs::write(path, text)
                .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
            self.ctx().launcher.chown(path)?;
        }
        let mut cmd = self.ctx().launcher.command(&program, true);
        // Everything goes to its log file too; keep the test output clean.
        cmd.arg(&ini_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let pid = self.ctx().supervisor.spawn(cmd).await?;
        let bouncer = PgBouncer {
            port,
            pid,
            log,
            mode,
        };
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect((HOST, port)).await.is_ok() {
                return Ok(bouncer);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(TestkitError::timeout(format!(
                    "pgbouncer on port {port} did not accept connections within 10 s; log: {}",
                    bouncer.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl PgBouncer {
    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pool mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// `"host=127.0.0.1 port=P user=postgres dbname=DB connect_timeout=2"` through it.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user=postgres dbname={dbname} connect_timeout=2",
            self.port
        )
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        super::process::tail(&self.log, 4096)
    }
}
