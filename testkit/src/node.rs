//! One PostgreSQL server of a throw-away cluster, and the faults it can suffer.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::binaries::PgBinaries;
use super::process::{self, Launcher, Supervisor};
use super::TestkitError;

/// Every node listens on loopback only.
pub(crate) const HOST: &str = "127.0.0.1";
/// Bound on connecting for admin SQL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one admin query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a server start (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a setting, a promotion or a process to go away.
const SHORT_WAIT: Duration = Duration::from_secs(10);
/// Bound on `pg_ctl stop`.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// How often bounded waits poll.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// How much of the server log goes into an error.
const LOG_TAIL_BYTES: u64 = 4096;

/// What the nodes of a cluster share.
#[derive(Debug)]
pub(crate) struct ClusterCtx {
    pub(crate) binaries: PgBinaries,
    pub(crate) launcher: Launcher,
    pub(crate) supervisor: Supervisor,
    /// The cluster directory (also the unix socket directory).
    pub(crate) dir: PathBuf,
}

/// Why a launch failed.
#[derive(Debug)]
pub(crate) struct LaunchError {
    pub(crate) error: TestkitError,
    /// The server could not bind its port: another one may be tried.
    pub(crate) port_in_use: bool,
}

/// One PostgreSQL server (`"primary"` or `"replica"`) of a [`Cluster`](super::Cluster).
pub struct Node {
    name: String,
    pub(crate) port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    pub(crate) ctx: Arc<ClusterCtx>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("host", &HOST)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("postmaster_pid", &self.postmaster_pid())
            .finish()
    }
}

impl Node {
    pub(crate) fn new(name: &str, port: u16, ctx: Arc<ClusterCtx>) -> Self {
        Self {
            name: name.to_owned(),
            port,
            data_dir: ctx.dir.join(name),
            log_path: ctx.dir.join(format!("{name}.log")),
            ctx,
        }
    }

    /// `"primary"` or `"replica"` (the role it was created with; a promoted replica keeps
    /// its name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"host=127.0.0.1 port=P user=postgres dbname=DB connect_timeout=2"`.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user=postgres dbname={dbname} connect_timeout=2",
            self.port
        )
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its server log (stdout and stderr of the postmaster).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last few kilobytes of its server log.
    pub fn log_tail(&self) -> String {
        process::tail(&self.log_path, LOG_TAIL_BYTES)
    }

    /// The pid of the running postmaster (from `postmaster.pid`), `None` when it is not
    /// running. A frozen server is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
        process::is_live_postgres(pid).then_some(pid)
    }

    fn running_pid(&self, action: &str) -> Result<u32, TestkitError> {
        self.postmaster_pid().ok_or_else(|| {
            TestkitError::setup(format!("cannot {action} {}: it is not running", self.name))
        })
    }

    /// SIGKILLs the postmaster and every process descended from it, like a machine crash
    /// (no shutdown checkpoint, clients see their connections drop), and waits until they
    /// are gone. [`start`](Self::start) then runs crash recovery.
    pub async fn kill9(&self) -> Result<(), TestkitError> {
        let pid = self.running_pid("kill")?;
        // Stopped first, the postmaster can neither fork nor react while its children go.
        process::signal(pid, Signal::SIGSTOP)?;
        let children = process::descendants(pid);
        process::signal(pid, Signal::SIGKILL)?;
        for &child in &children {
            process::signal(child, Signal::SIGKILL)?;
        }
        // The postmaster must be reaped, not just dead: a zombie still "exists" for the
        // stale-lock check of the next start.
        let deadline = Instant::now() + SHORT_WAIT;
        loop {
            let gone = process::proc_state(pid).is_none()
                && children.iter().all(|&c| !process::is_alive(c));
            if gone {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::timeout(format!(
                    "the killed processes of {} to go away",
                    self.name
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `pg_ctl stop -m immediate`: the postmaster SIGQUITs its children and exits without
    /// a shutdown checkpoint.
    pub async fn stop_immediate(&self) -> Result<(), TestkitError> {
        self.pg_ctl_stop("immediate").await
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, a shutdown checkpoint is written.
    pub async fn stop(&self) -> Result<(), TestkitError> {
        self.pg_ctl_stop("fast").await
    }

    async fn pg_ctl_stop(&self, mode: &str) -> Result<(), TestkitError> {
        let cmd = self.pg_ctl_stop_command(mode);
        process::run_async(
            cmd,
            format!("pg_ctl stop -m {mode} ({})", self.name),
            STOP_TIMEOUT,
        )
        .await
        .map(drop)
    }

    fn pg_ctl_stop_command(&self, mode: &str) -> std::process::Command {
        let mut cmd = self
            .ctx
            .launcher
            .command(&self.ctx.binaries.program("pg_ctl"), false);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        cmd
    }

    /// (Re)starts the server after a stop or a kill, on the same port and data directory,
    /// and waits until it accepts connections. Fails if it is already running.
    pub async fn start(&self) -> Result<(), TestkitError> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(TestkitError::setup(format!(
                "cannot start {}: it is already running (pid {pid})",
                self.name
            )));
        }
        self.launch().await.map_err(|e| e.error)
    }

    /// Spawns the postmaster under the supervisor and waits until it answers.
    pub(crate) async fn launch(&self) -> Result<(), LaunchError> {
        let plain = |error| LaunchError {
            error,
            port_in_use: false,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| {
                plain(TestkitError::io(
                    format!("opening {}", self.log_path.display()),
                    e,
                ))
            })?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| plain(TestkitError::io("duplicating the log file", e)))?;

        let mut cmd = self
            .ctx
            .launcher
            .command(&self.ctx.binaries.program("postgres"), true);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .stdout(log)
            .stderr(log_err);
        let pid = self.ctx.supervisor.spawn(cmd).await.map_err(plain)?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.ctx.supervisor.exit_status(pid) {
                let fresh = read_from(&self.log_path, offset);
                return Err(LaunchError {
                    port_in_use: fresh.contains("Address already in use"),
                    error: TestkitError::Command {
                        what: format!("starting {} on port {}", self.name, self.port),
                        output: format!(
                            "the server exited ({status}); server log tail:\n{}",
                            self.log_tail()
                        ),
                    },
                });
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Not reaped yet, so the pid is still our child's.
                if self.ctx.supervisor.exit_status(pid).is_none() {
                    kill_tree(pid);
                }
                return Err(plain(TestkitError::timeout(format!(
                    "{} to accept connections on port {} ({START_TIMEOUT:?}); server log tail:\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                ))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Does it answer `SELECT 1` promptly?
    async fn ping(&self) -> bool {
        self.query_bounded(
            "postgres",
            "SELECT 1",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .is_ok()
    }

    /// SIGSTOPs the postmaster and every process descended from it: a hung server. The
    /// kernel still completes TCP handshakes on its listen socket, but nothing answers.
    pub fn freeze(&self) -> Result<(), TestkitError> {
        let pid = self.running_pid("freeze")?;
        process::signal(pid, Signal::SIGSTOP)?;
        for child in process::descendants(pid) {
            process::signal(child, Signal::SIGSTOP)?;
        }
        Ok(())
    }

    /// SIGCONTs the postmaster and every process descended from it.
    pub fn thaw(&self) -> Result<(), TestkitError> {
        let pid = self.running_pid("thaw")?;
        for child in process::descendants(pid) {
            process::signal(child, Signal::SIGCONT)?;
        }
        process::signal(pid, Signal::SIGCONT)
    }

    /// `pg_terminate_backend` on every client backend except the one running it (walsenders
    /// and background processes are left alone); returns how many were terminated.
    pub async fn terminate_backends(&self) -> Result<u64, TestkitError> {
        let rows = self
            .query(
                "postgres",
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await?;
        let text = single_value(&rows, "terminate_backends")?;
        text.parse()
            .map_err(|_| TestkitError::setup(format!("unexpected count {text:?}")))
    }

    /// `ALTER SYSTEM SET default_transaction_read_only = on|off` and `pg_reload_conf()`, then
    /// waits until a new session sees the new value. Writes then fail with SQLSTATE 25006,
    /// as they would on a demoted primary.
    pub async fn set_read_only(&self, on: bool) -> Result<(), TestkitError> {
        let value = if on { "on" } else { "off" };
        self.execute(
            "postgres",
            &format!("ALTER SYSTEM SET default_transaction_read_only = {value}"),
        )
        .await?;
        self.execute("postgres", "SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + SHORT_WAIT;
        loop {
            let rows = self
                .query("postgres", "SHOW default_transaction_read_only")
                .await?;
            if single_value(&rows, "SHOW default_transaction_read_only")? == value {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::timeout(format!(
                    "default_transaction_read_only = {value} on {}",
                    self.name
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `SELECT pg_promote(true, 30)`, then waits until `pg_is_in_recovery()` is false.
    pub async fn promote(&self) -> Result<(), TestkitError> {
        let rows = self
            .query_timeout(
                "postgres",
                "SELECT pg_promote(true, 30)",
                QUERY_TIMEOUT + Duration::from_secs(10),
            )
            .await?;
        if single_value(&rows, "pg_promote")? != "t" {
            return Err(TestkitError::setup(format!(
                "pg_promote on {} did not complete; server log tail:\n{}",
                self.name,
                self.log_tail()
            )));
        }
        let deadline = Instant::now() + SHORT_WAIT;
        while self.is_in_recovery().await? {
            if Instant::now() >= deadline {
                return Err(TestkitError::timeout(format!(
                    "{} to leave recovery after pg_promote",
                    self.name
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// `SELECT pg_is_in_recovery()`: true on a standby.
    pub async fn is_in_recovery(&self) -> Result<bool, TestkitError> {
        let rows = self.query("postgres", "SELECT pg_is_in_recovery()").await?;
        Ok(single_value(&rows, "pg_is_in_recovery")? == "t")
    }

    /// Runs `sql` (simple query protocol, so several statements are allowed) in database
    /// `dbname` over a fresh connection; returns the rows of every statement, each column as
    /// text. Connecting is bounded by 5 s and the query by 30 s ([`TestkitError::Timeout`]).
    pub async fn query(
        &self,
        dbname: &str,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, TestkitError> {
        self.query_timeout(dbname, sql, QUERY_TIMEOUT).await
    }

    /// [`query`](Self::query) with another bound on the query itself.
    pub async fn query_timeout(
        &self,
        dbname: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<Option<String>>>, TestkitError> {
        self.query_bounded(dbname, sql, CONNECT_TIMEOUT, timeout)
            .await
    }

    /// Runs `sql` like [`query`](Self::query) and discards the rows.
    pub async fn execute(&self, dbname: &str, sql: &str) -> Result<(), TestkitError> {
        self.query(dbname, sql).await.map(drop)
    }

    async fn query_bounded(
        &self,
        dbname: &str,
        sql: &str,
        connect_timeout: Duration,
        query_timeout: Duration,
    ) -> Result<Vec<Vec<Option<String>>>, TestkitError> {
        let dsn = self.dsn(dbname);
        let (client, connection) =
            match tokio::time::timeout(connect_timeout, tokio_postgres::connect(&dsn, NoTls)).await
            {
                Err(_) => {
                    return Err(TestkitError::timeout(format!(
                        "connecting to {} ({dsn}, {connect_timeout:?})",
                        self.name
                    )))
                }
                Ok(Err(e)) => {
                    return Err(TestkitError::pg(
                        format!("connecting to {} ({dsn})", self.name),
                        e,
                    ))
                }
                Ok(Ok(pair)) => pair,
            };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let result = tokio::time::timeout(query_timeout, client.simple_query(sql)).await;
        drop(client);
        let messages = match result {
            Err(_) => {
                driver.abort();
                return Err(TestkitError::timeout(format!(
                    "query on {} ({query_timeout:?}): {sql}",
                    self.name
                )));
            }
            Ok(Err(e)) => return Err(TestkitError::pg(format!("on {}: {sql}", self.name), e)),
            Ok(Ok(messages)) => messages,
        };
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Best-effort, blocking teardown for `Drop`: thaw, `pg_ctl stop -m immediate`, then
    /// SIGKILL whatever is left.
    pub(crate) fn shutdown_blocking(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        for child in process::descendants(pid) {
            let _ = process::signal(child, Signal::SIGCONT);
        }
        let _ = process::signal(pid, Signal::SIGCONT);
        let cmd = self.pg_ctl_stop_command("immediate");
        // After a clean stop nothing is left (the postmaster waits for its children), and
        // the pid may be reused: only kill when the stop failed.
        if let Err(e) = process::run(cmd, "pg_ctl stop -m immediate", STOP_TIMEOUT) {
            tracing::warn!(node = %self.name, error = %e, "pg_ctl stop failed during cleanup; killing");
            if process::is_live_postgres(pid) {
                kill_tree(pid);
            }
        }
    }
}

/// SIGKILLs `pid` and its descendants (best effort); the caller makes sure `pid` is ours.
fn kill_tree(pid: u32) {
    let _ = process::signal(pid, Signal::SIGSTOP);
    let children = process::descendants(pid);
    let _ = process::signal(pid, Signal::SIGKILL);
    for child in children {
        let _ = process::signal(child, Signal::SIGKILL);
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// The one non-NULL value of a one-row, one-column answer.
pub(crate) fn single_value<'a>(
    rows: &'a [Vec<Option<String>>],
    what: &str,
) -> Result<&'a str, TestkitError> {
    match rows {
        [row] if row.len() == 1 => row[0]
            .as_deref()
            .ok_or_else(|| TestkitError::setup(format!("{what}: unexpected NULL"))),
        _ => Err(TestkitError::setup(format!(
            "{what}: expected one value, got {rows:?}"
        ))),
    }
}
