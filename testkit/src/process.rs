//! Running the PostgreSQL programs: as the `postgres` OS user when we are root, under a
//! supervisor thread that owns every server process, and signalling process trees.
//!
//! Why a supervisor thread: `pg_ctl start` daemonises the postmaster (its parent becomes
//! init), so a test binary that dies without unwinding (SIGKILL, abort) would leak servers.
//! Instead the postmaster is spawned directly through `setpriv --pdeathsig KILL`, from one
//! long-lived thread per cluster. `PR_SET_PDEATHSIG` fires when the *thread* that forked the
//! child exits, so it must not be a tokio worker or blocking-pool thread (the blocking pool
//! retires idle threads after a few seconds, which would kill a healthy server). The
//! supervisor thread lives exactly as long as the cluster, reaps the postmaster when it exits
//! (so a restart never trips over a zombie holding `postmaster.pid`), and takes the server
//! down with it if the test process dies.

use failover_core::handle::lock;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::TestkitError;

/// The OS user the server runs as when we are root.
const SERVER_USER: &str = "postgres";

#[derive(Debug, Clone)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// Builds commands that run as the server's OS user.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    setpriv: Option<PathBuf>,
    user: Option<ServerUser>,
    /// HOME and working directory of every command (the cluster directory).
    home: PathBuf,
}

impl Launcher {
    /// Root: run as `postgres` (through `setpriv`, or `Command::uid/gid` without it).
    /// Not root: run as ourselves.
    pub(crate) fn detect(home: &Path) -> Result<Self, TestkitError> {
        let setpriv = find_in_path("setpriv");
        let user = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(SERVER_USER)
                .map_err(|e| {
                    TestkitError::setup(format!("looking up the `{SERVER_USER}` OS user: {e}"))
                })?
                .ok_or_else(|| {
                    TestkitError::setup(format!(
                        "running as root, PostgreSQL refuses to run as root and there is no \
                         `{SERVER_USER}` OS user (install Debian's `postgresql` package, or \
                         run the tests as an ordinary user)"
                    ))
                })?;
            Some(ServerUser {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        } else {
            None
        };
        Ok(Self {
            setpriv,
            user,
            home: home.to_path_buf(),
        })
    }

    /// A command for `program` as the server user; with `pdeathsig`, it is SIGKILLed when
    /// the spawning thread exits (needs `setpriv`).
    pub(crate) fn command(&self, program: &Path, pdeathsig: bool) -> Command {
        let mut cmd = match (&self.setpriv, &self.user) {
            (Some(setpriv), Some(user)) => {
                let mut cmd = Command::new(setpriv);
                cmd.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--init-groups");
                if pdeathsig {
                    cmd.args(["--pdeathsig", "KILL"]);
                }
                cmd.arg("--").arg(program);
                cmd
            }
            (Some(setpriv), None) if pdeathsig => {
                let mut cmd = Command::new(setpriv);
                cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
                cmd
            }
            (None, Some(user)) => {
                let mut cmd = Command::new(program);
                cmd.uid(user.uid).gid(user.gid);
                cmd
            }
            _ => Command::new(program),
        };
        // Stray libpq settings of the caller must not redirect our tools.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", &self.home)
            .current_dir(&self.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Gives `path` to the server user (no-op when not root).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), TestkitError> {
        if let Some(user) = &self.user {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| TestkitError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` to completion (blocking), bounded by `timeout`; stdout and stderr are captured.
pub(crate) fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, TestkitError> {
    let out = tempfile::tempfile().map_err(|e| TestkitError::io("creating an output file", e))?;
    let err = out
        .try_clone()
        .map_err(|e| TestkitError::io("duplicating an output file", e))?;
    cmd.stdout(
        out.try_clone()
            .map_err(|e| TestkitError::io("duplicating", e))?,
    )
    .stderr(err);
    let mut child = cmd
        .spawn()
        .map_err(|e| TestkitError::io(format!("spawning {what}"), e))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::timeout(format!("{what} ({timeout:?})")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(TestkitError::io(format!("waiting for {what}"), e)),
        }
    };
    let output = read_all(out);
    if status.success() {
        Ok(output)
    } else {
        Err(TestkitError::Command {
            what: what.to_owned(),
            output: format!("{status}\n{output}"),
        })
    }
}

/// [`run`] on the blocking pool.
pub(crate) async fn run_async(
    cmd: Command,
    what: String,
    timeout: Duration,
) -> Result<String, TestkitError> {
    match tokio::task::spawn_blocking(move || run(cmd, &what, timeout)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(TestkitError::setup(format!("blocking task cancelled: {e}"))),
    }
}

fn read_all(mut file: File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `max` bytes of a (log) file, from the first full line.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let _ = file.seek(SeekFrom::Start(start));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_owned(),
        _ => text,
    }
}

type Reply = tokio::sync::oneshot::Sender<std::io::Result<u32>>;

/// Owns the server processes of one cluster; see the module documentation.
#[derive(Debug)]
pub(crate) struct Supervisor {
    tx: Mutex<Option<mpsc::Sender<(Command, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    exited: Arc<Mutex<HashMap<u32, ExitStatus>>>,
}

impl Supervisor {
    pub(crate) fn start() -> Result<Self, TestkitError> {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        let exited = Arc::new(Mutex::new(HashMap::new()));
        let reaped = Arc::clone(&exited);
        let thread = std::thread::Builder::new()
            .name("testkit-supervisor".to_owned())
            .spawn(move || supervise(&rx, &reaped))
            .map_err(|e| TestkitError::io("starting the supervisor thread", e))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            exited,
        })
    }

    /// Spawns `cmd` from the supervisor thread; returns its pid.
    pub(crate) async fn spawn(&self, cmd: Command) -> Result<u32, TestkitError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = lock(&self.tx)
            .as_ref()
            .map(|tx| tx.send((cmd, reply)).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(TestkitError::setup("the cluster's supervisor has stopped"));
        }
        answer
            .await
            .map_err(|_| TestkitError::setup("the cluster's supervisor has stopped"))?
            .map_err(|e| TestkitError::io("spawning the server", e))
    }

    /// The exit status of a process spawned here, once it has exited and been reaped.
    pub(crate) fn exit_status(&self, pid: u32) -> Option<ExitStatus> {
        lock(&self.exited).get(&pid).copied()
    }

    /// Stops the thread; it kills and reaps whatever it still owns.
    pub(crate) fn shutdown(&self) {
        drop(lock(&self.tx).take());
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn supervise(rx: &mpsc::Receiver<(Command, Reply)>, exited: &Mutex<HashMap<u32, ExitStatus>>) {
    let mut children: Vec<Child> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((mut cmd, reply)) => {
                let result = cmd.spawn().map(|child| {
                    let pid = child.id();
                    lock(exited).remove(&pid);
                    children.push(child);
                    pid
                });
                let _ = reply.send(result);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        children.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                lock(exited).insert(child.id(), status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// State of a process from `/proc/<pid>/stat`: `None` when it does not exist.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    read_stat(pid).map(|stat| stat.state)
}

/// Alive: exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    read_stat(pid).is_some_and(|stat| stat.is_alive())
}

/// Alive and running the `postgres` program: guards against signalling an unrelated
/// process that reused the pid of a stale `postmaster.pid`.
pub(crate) fn is_live_postgres(pid: u32) -> bool {
    read_stat(pid).is_some_and(|stat| stat.is_alive() && stat.comm == "postgres")
}

struct Stat {
    comm: String,
    state: char,
    ppid: u32,
}

impl Stat {
    fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses the text of `/proc/<pid>/stat`: "pid (comm) state ppid ...". The command name may
/// hold spaces and parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { comm, state, ppid })
}

/// Every live descendant of `root` (not `root` itself), found through the ppid in
/// `/proc/*/stat`.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut by_parent: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(stat) = parse_stat(&stat).filter(Stat::is_alive) {
                by_parent.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if let Some(children) = by_parent.get(&pid) {
            for &child in children {
                found.push(child);
                queue.push_back(child);
            }
        }
    }
    found
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, signal: Signal) -> Result<(), TestkitError> {
    let raw =
        i32::try_from(pid).map_err(|_| TestkitError::setup(format!("pid {pid} out of range")))?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(TestkitError::io(
            format!("sending {signal} to {pid}"),
            std::io::Error::from(e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let stat = parse_stat("42 (postgres: a (b) c) S 7 42 42 0 -1").expect("parsed");
        assert_eq!(stat.comm, "postgres: a (b) c");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 7);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn finds_our_own_process() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(descendants(me).iter().all(|&pid| pid != me));
    }
}
