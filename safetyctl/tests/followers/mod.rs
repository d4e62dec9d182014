//! What the receipt tests share: the `receipt-follower` example (a real engine
//! process), a guard that kills and reaps every follower however the test ends, and
//! safetyctl run off the runtime's workers.
#![allow(dead_code, unreachable_pub)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The `receipt-follower` example: as the workspace's test build left it, or built
/// into this test's target directory when the test runs alone.
pub fn follower_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // <target>/<profile>/deps/receipt-…
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    // `cargo test --workspace` (the suite's command) has built every example.
    let built = profile_dir.join("examples").join("receipt-follower");
    if built.exists() {
        return built;
    }
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["build", "--quiet", "-p", "tradepulse-examples"])
        .args(["--example", "receipt-follower", "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let mut child = build.spawn().expect("cargo runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            panic!("building the receipt-follower example took longer than 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "building the receipt-follower example failed"
    );
    let binary = profile_dir.join("examples").join("receipt-follower");
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// The followers, killed (and reaped) when the test ends, however it ends.
pub struct Followers {
    children: Vec<Child>,
    lines: mpsc::UnboundedReceiver<(usize, String)>,
    /// Lines read but not yet examined by a wait.
    backlog: Vec<(usize, String)>,
}

impl Drop for Followers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Followers {
    /// Starts `n` followers named `follower-<i>` against `dsn`, each given `extra`
    /// arguments too.
    pub fn spawn(binary: &Path, dsn: &str, n: usize, extra: &[&str]) -> Self {
        let (tx, lines) = mpsc::unbounded_channel();
        let mut followers = Self {
            children: Vec::new(),
            lines,
            backlog: Vec::new(),
        };
        for i in 0..n {
            let mut child = Command::new(binary)
                .env("TRADEPULSE_KILL_SWITCH_POSTGRES__DSN", dsn)
                .env("TRADEPULSE_KILL_SWITCH_POSTGRES__CONNECT_TIMEOUT", "500ms")
                .env("RUST_LOG", "error")
                .args(["--name", &format!("follower-{i}")])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("the follower starts");
            let stdout = child.stdout.take().expect("stdout");
            // In the guard at once: a later failure still kills this one.
            followers.children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send((i, line)).is_err() {
                        return;
                    }
                }
            });
        }
        followers
    }

    /// Waits (bounded) until every follower said `ready`.
    pub async fn ready(&mut self) {
        self.each_says("ready", Duration::from_secs(60), |l| {
            l.starts_with("ready ")
        })
        .await;
    }

    /// Waits until every follower printed a line `wanted` accepts, at most `within`;
    /// returns each follower's first such line. A follower's lines before it are
    /// skipped; those after it are kept for the next wait.
    pub async fn each_says(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut said: Vec<Option<String>> = vec![None; self.children.len()];
        let mut kept = Vec::new();
        let mut backlog = std::mem::take(&mut self.backlog).into_iter();
        let deadline = tokio::time::Instant::now() + within;
        while said.iter().any(Option::is_none) {
            let (i, line) = match backlog.next() {
                Some(line) => line,
                None => tokio::time::timeout_at(deadline, self.lines.recv())
                    .await
                    .unwrap_or_else(|_| {
                        let missing: Vec<usize> =
                            (0..said.len()).filter(|&i| said[i].is_none()).collect();
                        panic!("followers {missing:?} did not say {what} within {within:?}")
                    })
                    .expect("a follower's output closed"),
            };
            if said[i].is_some() {
                kept.push((i, line));
            } else if wanted(&line) {
                said[i] = Some(line);
            }
        }
        kept.extend(backlog);
        self.backlog = kept;
        said.into_iter().flatten().collect()
    }

    /// The process id of follower `i`.
    pub fn pid(&self, i: usize) -> i32 {
        self.children[i].id() as i32
    }
}

/// Runs safetyctl against `dsn` off the runtime's workers (it blocks); returns its
/// output and how long it took.
pub async fn run(dsn: &str, args: &[&str]) -> (Output, Duration) {
    let mut cmd = crate::support::command(dsn, args);
    cmd.env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let o = cmd.output().unwrap();
        (o, started.elapsed())
    })
    .await
    .unwrap()
}

/// Its standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What `… --wait --timeout 2s` must answer when one of `followers` processes,
/// `stopped`, is SIGSTOPped: exit 6 after the timeout (and well before 10 s), the
/// count of the others, only the stopped process named with when it was last seen,
/// and `NOT CONFIRMED: 1 of N` on stderr.
pub fn assert_only_the_stopped_one_is_named(
    o: &Output,
    took: Duration,
    followers: usize,
    stopped: i32,
) {
    assert_eq!(o.status.code(), Some(6), "{}", crate::support::text(o));
    assert!(
        took >= Duration::from_secs(2),
        "waited out the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let out = stdout(o);
    assert!(
        out.contains(&format!(
            "{}/{followers} live processes confirmed; not confirmed within",
            followers - 1
        )),
        "{out}"
    );
    let named: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(" pid "))
        .collect();
    assert_eq!(named.len(), 1, "only the stopped engine is named: {out}");
    assert!(
        named[0].contains(&format!("pid {stopped} follower-3")) && named[0].contains("last seen"),
        "{out}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("NOT CONFIRMED: 1 of {followers} live process(es)")),
        "{stderr}"
    );
}

/// What `… --wait` must answer when all `followers` processes applied the change:
/// exit 0 and `N/N live processes confirmed after …`. Returns the standard output.
pub fn assert_all_confirmed(o: &Output, followers: usize) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", crate::support::text(o));
    let out = stdout(o);
    assert!(
        out.contains(&format!(
            "{followers}/{followers} live processes confirmed after"
        )),
        "{out}"
    );
    out
}
