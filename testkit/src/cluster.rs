//! Building and tearing down a throw-away cluster: a primary and optionally one streaming
//! replica.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::binaries::PgBinaries;
use super::node::{single_value, ClusterCtx, Node, HOST, POLL};
use super::process::{self, Launcher, Supervisor};
use super::tls::{self, TlsMaterial};
use super::TestkitError;

/// The `application_name` the replica streams under (and the primary's
/// `synchronous_standby_names` in synchronous mode).
const REPLICA_APPLICATION_NAME: &str = "replica1";
/// Bound on initdb and pg_basebackup.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the replica showing up in `pg_stat_replication`, and on a new database
/// reaching the replica.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How many free ports a node tries when its port is taken between choosing and binding.
const PORT_ATTEMPTS: usize = 5;
/// Room in `sockaddr_un.sun_path` (108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The file of our settings, included from `postgresql.conf`.
const CONF_FILE: &str = "testkit.conf";

/// How to build a [`Cluster`]. Every method takes and returns the builder.
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder {
    replica: bool,
    synchronous: bool,
    tls: bool,
    settings: Vec<(String, String)>,
    binaries: Option<PgBinaries>,
}

impl ClusterBuilder {
    /// A primary only, no TLS, default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one streaming replica (`pg_basebackup -R -X stream`), asynchronous unless
    /// [`synchronous`](Self::synchronous).
    pub fn replica(mut self, on: bool) -> Self {
        self.replica = on;
        if !on {
            self.synchronous = false;
        }
        self
    }

    /// Makes the replica a synchronous standby (`synchronous_standby_names` on the primary,
    /// `application_name` in the replica's `primary_conninfo`): a commit is acknowledged
    /// only once the replica has flushed it. Implies [`replica`](Self::replica).
    pub fn synchronous(mut self, on: bool) -> Self {
        self.synchronous = on;
        if on {
            self.replica = true;
        }
        self
    }

    /// Generates a CA and a server certificate (SANs `127.0.0.1`, `localhost`) and turns
    /// `ssl` on on every node; plain connections stay allowed.
    /// [`Cluster::ca_cert_path`] gives the CA.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// An extra `postgresql.conf` setting for every node (applied after the testkit's own).
    /// Leave `port` and `listen_addresses` alone: the nodes' DSNs depend on them.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Uses these binaries instead of [`PgBinaries::discover`].
    pub fn binaries(mut self, binaries: PgBinaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Creates the cluster in a temporary directory and starts it; with a replica, returns
    /// once the replica streams (and is `sync` in synchronous mode). On failure everything
    /// started so far is torn down.
    pub async fn start(self) -> Result<Cluster, TestkitError> {
        let binaries = match self.binaries.clone() {
            Some(binaries) => binaries,
            None => PgBinaries::discover()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("failover-testkit-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the cluster directory", e))?;
        let dir_path = dir.path().to_path_buf();
        std::fs::set_permissions(&dir_path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| TestkitError::io("making the cluster directory traversable", e))?;
        let launcher = Launcher::detect(&dir_path)?;
        launcher.chown(&dir_path)?;
        let ctx = Arc::new(ClusterCtx {
            binaries,
            launcher,
            supervisor: Supervisor::start()?,
            dir: dir_path.clone(),
        });

        // From here on, an early return drops `cluster`, which stops whatever runs.
        let mut cluster = Cluster {
            primary: Node::new("primary", 0, Arc::clone(&ctx)),
            replica: None,
            ca_cert: None,
            synchronous: self.synchronous,
            ctx,
            dir: Some(dir),
        };

        let tls = if self.tls {
            let material = tls::generate("failover-testkit CA")?;
            let path = dir_path.join("ca.crt");
            write_file(&path, &material.ca_pem, None, &cluster.ctx.launcher)?;
            cluster.ca_cert = Some(path);
            Some(material)
        } else {
            None
        };

        self.init_primary(&cluster).await?;
        self.start_node(&mut cluster.primary, tls.as_ref()).await?;

        if self.replica {
            cluster.replica = Some(Node::new("replica", 0, Arc::clone(&cluster.ctx)));
            let primary_port = cluster.primary.port();
            if let Some(replica) = cluster.replica.as_mut() {
                Self::base_backup(replica, primary_port).await?;
                self.start_node(replica, tls.as_ref()).await?;
            }
            if self.synchronous {
                let primary = &cluster.primary;
                primary
                    .execute(
                        "postgres",
                        &format!(
                            "ALTER SYSTEM SET synchronous_standby_names = '{REPLICA_APPLICATION_NAME}'"
                        ),
                    )
                    .await?;
                primary
                    .execute("postgres", "SELECT pg_reload_conf()")
                    .await?;
            }
            cluster.wait_streaming().await?;
        }
        Ok(cluster)
    }

    async fn init_primary(&self, cluster: &Cluster) -> Result<(), TestkitError> {
        let ctx = &cluster.ctx;
        let mut cmd = ctx.launcher.command(&ctx.binaries.program("initdb"), false);
        cmd.arg("-D").arg(cluster.primary.data_dir()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        process::run_async(cmd, "initdb".to_owned(), TOOL_TIMEOUT).await?;
        let conf = cluster.primary.data_dir().join("postgresql.conf");
        append_file(&conf, &format!("\ninclude '{CONF_FILE}'\n"))
    }

    async fn base_backup(replica: &Node, primary_port: u16) -> Result<(), TestkitError> {
        let ctx = &replica.ctx;
        let mut cmd = ctx
            .launcher
            .command(&ctx.binaries.program("pg_basebackup"), false);
        cmd.args([
            "-h",
            HOST,
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
            "-D",
        ])
        .arg(replica.data_dir())
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        process::run_async(cmd, "pg_basebackup".to_owned(), TOOL_TIMEOUT).await?;
        // Later entries win: name the replica so the primary can make it synchronous.
        append_file(
            &replica.data_dir().join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host={HOST} port={primary_port} user=postgres \
                 application_name={REPLICA_APPLICATION_NAME}'\n"
            ),
        )
    }

    /// Writes the node's settings with a free port and starts it, trying another port when
    /// the chosen one was taken in the meantime.
    async fn start_node(
        &self,
        node: &mut Node,
        tls: Option<&TlsMaterial>,
    ) -> Result<(), TestkitError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            node.port = free_port()?;
            self.configure(node, tls)?;
            match node.launch().await {
                Ok(()) => return Ok(()),
                Err(e) if e.port_in_use && attempt < PORT_ATTEMPTS => {
                    tracing::debug!(
                        node = node.name(),
                        port = node.port(),
                        "port taken; retrying"
                    );
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn configure(&self, node: &Node, tls: Option<&TlsMaterial>) -> Result<(), TestkitError> {
        let ctx = &node.ctx;
        // Sockets live in the cluster directory; a path too long for `sun_path` (deep
        // TMPDIR) disables them: the testkit only uses TCP.
        let mut socket_dir = ctx.dir.to_string_lossy().into_owned();
        if socket_dir.len() + "/.s.PGSQL.65535.lock".len() > MAX_SOCKET_PATH {
            socket_dir.clear();
        }
        let port = node.port().to_string();
        let mut settings: Vec<(&str, &str)> = vec![
            ("listen_addresses", HOST),
            ("port", &port),
            ("unix_socket_directories", &socket_dir),
            ("fsync", "off"),
            ("synchronous_commit", "on"),
            ("full_page_writes", "off"),
            ("wal_level", "replica"),
            ("max_wal_senders", "5"),
            ("max_replication_slots", "5"),
            ("wal_keep_size", "64MB"),
            ("hot_standby", "on"),
            ("max_connections", "100"),
            ("shared_buffers", "16MB"),
            ("logging_collector", "off"),
        ];
        if let Some(tls) = tls {
            settings.extend([
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
            ]);
            let dir = node.data_dir();
            write_file(&dir.join("server.crt"), &tls.cert_pem, None, &ctx.launcher)?;
            write_file(
                &dir.join("server.key"),
                &tls.key_pem,
                Some(0o600),
                &ctx.launcher,
            )?;
        }
        settings.extend(self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));

        let mut text = String::from("# Written by failover-core's testkit.\n");
        for (name, value) in settings {
            let _ = writeln!(text, "{name} = '{}'", value.replace('\'', "''"));
        }
        write_file(&node.data_dir().join(CONF_FILE), &text, None, &ctx.launcher)
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = std::net::TcpListener::bind((HOST, 0))
        .map_err(|e| TestkitError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| TestkitError::io("finding a free port", e))
}

fn write_file(
    path: &Path,
    contents: &str,
    mode: Option<u32>,
    launcher: &Launcher,
) -> Result<(), TestkitError> {
    let err = |e| TestkitError::io(format!("writing {}", path.display()), e);
    // Replace, not truncate: a copied file (pg_basebackup) keeps no stale mode or owner.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::write(path, contents).map_err(err)?;
    let mode = mode.unwrap_or(0o644);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    launcher.chown(path)
}

fn append_file(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| TestkitError::io(format!("appending to {}", path.display()), e))
}

/// A throw-away PostgreSQL cluster: a primary and optionally one streaming replica, in a
/// temporary directory, listening on free ports of 127.0.0.1 with `trust` authentication
/// for user `postgres`. Run as root, the servers run as the `postgres` OS user.
///
/// Dropping it stops every node (`pg_ctl stop -m immediate`, after a SIGCONT in case it was
/// frozen; then SIGKILL for anything left) and removes the directory. If the test process
/// dies without unwinding, the servers get SIGKILL from the kernel (parent-death signal).
#[derive(Debug)]
pub struct Cluster {
    primary: Node,
    replica: Option<Node>,
    ca_cert: Option<PathBuf>,
    synchronous: bool,
    ctx: Arc<ClusterCtx>,
    // Last, so the directory outlives the nodes even if `Drop` is bypassed.
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A primary only, default settings.
    pub async fn start() -> Result<Cluster, TestkitError> {
        ClusterBuilder::new().start().await
    }

    /// A primary and an asynchronous streaming replica.
    pub async fn start_with_replica() -> Result<Cluster, TestkitError> {
        ClusterBuilder::new().replica(true).start().await
    }

    /// A builder for other shapes (synchronous replica, TLS, extra settings).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// The node created as the primary.
    pub fn primary(&self) -> &Node {
        &self.primary
    }

    /// The node created as the replica, if any.
    pub fn replica(&self) -> Option<&Node> {
        self.replica.as_ref()
    }

    /// Primary, then the replica if any.
    pub fn nodes(&self) -> Vec<&Node> {
        std::iter::once(&self.primary)
            .chain(self.replica.as_ref())
            .collect()
    }

    /// Whether the replica was created as a synchronous standby.
    pub fn is_synchronous(&self) -> bool {
        self.synchronous
    }

    /// What the cluster's nodes share (launcher, supervisor).
    pub(crate) fn ctx(&self) -> &ClusterCtx {
        &self.ctx
    }

    /// The cluster's temporary directory (data directories, logs, unix sockets, CA).
    pub fn dir(&self) -> &Path {
        &self.ctx.dir
    }

    /// `CREATE DATABASE` with a fresh unique name on the primary; when there is a running
    /// replica, waits until the replica has it too. Returns the name.
    pub async fn create_database(&self) -> Result<String, TestkitError> {
        let name = format!("testkit_{}", uuid::Uuid::new_v4().simple());
        self.primary
            .execute("postgres", &format!("CREATE DATABASE {name}"))
            .await?;
        if let Some(replica) = self
            .replica
            .as_ref()
            .filter(|r| r.postmaster_pid().is_some())
        {
            let sql = format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'");
            let deadline = Instant::now() + REPLICATION_TIMEOUT;
            loop {
                let rows = replica.query("postgres", &sql).await?;
                if single_value(&rows, "pg_database on the replica")? == "1" {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(TestkitError::timeout(format!(
                        "database {name} to reach the replica"
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(name)
    }

    /// `"host=127.0.0.1,127.0.0.1 port=P1,P2 user=postgres dbname=DB connect_timeout=2"`
    /// over the primary then the replica (the primary only when there is no replica).
    pub fn multi_host_dsn(&self, dbname: &str) -> String {
        let nodes = self.nodes();
        let hosts: Vec<&str> = nodes.iter().map(|n| n.host()).collect();
        let ports: Vec<String> = nodes.iter().map(|n| n.port().to_string()).collect();
        format!(
            "host={} port={} user=postgres dbname={dbname} connect_timeout=2",
            hosts.join(","),
            ports.join(",")
        )
    }

    /// Waits until the replica has replayed everything the primary had written when this was
    /// called (`pg_current_wal_lsn()` on the primary against `pg_last_wal_replay_lsn()` on the
    /// replica), bounded by `timeout`.
    pub async fn wait_replica_caught_up(&self, timeout: Duration) -> Result<(), TestkitError> {
        let replica = self
            .replica
            .as_ref()
            .ok_or_else(|| TestkitError::setup("the cluster has no replica"))?;
        let wait = async {
            let rows = self
                .primary
                .query("postgres", "SELECT pg_current_wal_lsn()::text")
                .await?;
            let lsn = single_value(&rows, "pg_current_wal_lsn")?.to_owned();
            let sql =
                format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)");
            loop {
                let rows = replica.query("postgres", &sql).await?;
                if single_value(&rows, "pg_last_wal_replay_lsn")? == "t" {
                    return Ok(lsn);
                }
                tokio::time::sleep(POLL).await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(TestkitError::timeout(format!(
                "the replica to replay the primary's WAL ({timeout:?})"
            ))),
        }
    }

    /// The CA certificate (PEM) that signed the servers' certificates, with
    /// [`ClusterBuilder::tls`].
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    async fn wait_streaming(&self) -> Result<(), TestkitError> {
        let sql = format!(
            "SELECT state, sync_state FROM pg_stat_replication \
             WHERE application_name = '{REPLICA_APPLICATION_NAME}'"
        );
        let want_sync = if self.synchronous { "sync" } else { "async" };
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let rows = self.primary.query("postgres", &sql).await?;
            let ready = rows.iter().any(|row| {
                row.first().and_then(Option::as_deref) == Some("streaming")
                    && row.get(1).and_then(Option::as_deref) == Some(want_sync)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::timeout(format!(
                    "the replica to stream ({want_sync}); pg_stat_replication: {rows:?}; \
                     replica log tail:\n{}",
                    self.replica
                        .as_ref()
                        .map(Node::log_tail)
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(replica) = &self.replica {
            replica.shutdown_blocking();
        }
        self.primary.shutdown_blocking();
        self.ctx.supervisor.shutdown();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove the cluster directory");
            }
        }
    }
}
