//! A firm-level halt across a fleet of engine processes, with its receipt.
//!
//! `FLEET_PROCESSES` (default 10) child processes — this bench binary re-executed —
//! each gate all `FLEET_LEAVES` (default 1,000) leaves of `acme/eq/d<k>/a<i>`, one
//! `ScopeGate` per leaf, through `FLEET_HANDLES` `ScopeModes` handles over one
//! PostgreSQL pool (default 1: the handle is process-wide by design; more divides the
//! leaves between handles, each a watcher of its own). Every handle reports to the
//! process's `Receipts`. Push only (polling at 1 h), on a testkit primary.
//!
//! Per round the parent sets `acme` `HALTED` as an operator (then relaxes it to
//! `CANCEL_ONLY` as a supervisor with a ticket, and waits until every leaf is no
//! longer halted). Criterion group `scope_fleet`, custom measurement, in one run:
//!
//! * **`firm halt → every leaf`**: from the write returning (its commit) until the
//!   last of the `P × L` leaf gates turned `HALTED`, observed in each child by a task
//!   awaiting the gate's `subscribe()` watch; observation times cross the process
//!   boundary as wall-clock nanoseconds (one machine, one clock);
//! * **`receipt complete`**: from the write returning until `receipt("scope", "",
//!   position)` lists every process as confirmed — each process reports what the
//!   slowest of its handles applied, so complete means all `P × H` handles applied it
//!   (polled every 2 ms);
//! * **baseline, `bare NOTIFY → P listeners`**: one `NOTIFY` on a plain
//!   `tokio-postgres` connection, until the last child's own plain `LISTEN`
//!   connection received it — the floor any push design on PostgreSQL stands on.
//!
//! Per-leaf p50 / p99 over every observation, the per-round receipt p50 / p99 and
//! the push connections per process (`pg_stat_activity`, `*_listen`) are printed
//! after the group.
//!
//! cargo bench -p tradepulse-benches --bench scope_fleet -- --warm-up-time 1 --measurement-time 5

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::Criterion;
use failover_core::postgres::PgSettings;
use failover_core::receipt::{self, Receipts};
use failover_core::ComponentStatus;
use futures_util::StreamExt;
use killswitch::scope::{ScopeMode, ScopeModes, ScopeModesConfig, ScopePath, ScopeStore};
use killswitch::{Audit, Authority, KillSwitch, PostgresKillSwitchStore, PostgresScopeStore};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tradepulse_testkit::Cluster;

#[path = "common/mod.rs"]
mod common;
use common::{connections, ms, percentile, unix_nanos};

const CHILD_ENV: &str = "TRADEPULSE_SCOPE_FLEET_CHILD";
const BASELINE_CHANNEL: &str = "scope_fleet_baseline";
const DESKS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

/// The leaves: `acme/eq/d<k>/a<i>`, `leaves / DESKS` accounts per desk.
fn leaves(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("acme/eq/d{}/a{}", i % DESKS, i / DESKS))
        .collect()
}

fn push_only() -> ScopeModesConfig {
    ScopeModesConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}

/// A kill-switch store (the root) and a scope store over its pool of `size`.
fn stores(dsn: &str, size: usize) -> (PostgresKillSwitchStore, PostgresScopeStore) {
    let settings = PgSettings::builder()
        .with_dsn(dsn)
        .with_pool_size(size)
        .build()
        .expect("settings");
    let root = PostgresKillSwitchStore::new(settings).expect("store");
    let scopes = PostgresScopeStore::from_pool(root.pool().clone());
    (root, scopes)
}

#[derive(Default)]
struct Samples {
    /// Every leaf's observation, from the write returning.
    leaves: Vec<Duration>,
    /// Per round: the last leaf.
    rounds: Vec<Duration>,
    /// Per round: the receipt complete.
    receipts: Vec<Duration>,
    /// Per round: the last plain listener.
    baseline: Vec<Duration>,
}

fn line(name: &str, samples: &[Duration]) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!(
        "{name}: p50 {} p99 {} max {} ({} samples)",
        ms(percentile(&s, 0.5)),
        ms(percentile(&s, 0.99)),
        ms(percentile(&s, 1.0)),
        s.len()
    )
}

/// The children's stdout lines, and a way to wait for the next one.
struct Fleet {
    lines: mpsc::UnboundedReceiver<String>,
    children: Vec<std::process::Child>,
    processes: usize,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(120), self.lines.recv())
            .await
            .expect("a child said nothing for 120 s")
            .expect("the children exited")
    }

    /// One line starting with `word` from every child: the times it carries.
    async fn one_from_each(&mut self, word: &str) -> Vec<u128> {
        let mut times = Vec::new();
        for _ in 0..self.processes {
            let line = self.next().await;
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some(word), "{line}");
            times.extend(words.map(|w| w.parse::<u128>().expect("nanoseconds")));
        }
        times
    }
}

fn since(at: u128, t: SystemTime) -> Duration {
    Duration::from_nanos(at.saturating_sub(unix_nanos(t)) as u64)
}

struct Parent {
    fleet: Fleet,
    scopes: PostgresScopeStore,
    root: PostgresKillSwitchStore,
    notifier: tokio_postgres::Client,
    samples: Samples,
    round: u64,
}

impl Parent {
    /// One halt and relax of `acme`: (last leaf, receipt complete), from the write
    /// returning.
    async fn round(&mut self) -> (Duration, Duration) {
        self.round += 1;
        let applied = self
            .scopes
            .set_scope_mode(
                "acme",
                ScopeMode::Halted,
                &Audit::new("ops:bench", format!("firm halt {}", self.round))
                    .with_authority(Authority::Operator),
            )
            .await
            .expect("halt");
        let returned = SystemTime::now();
        let position = applied.value.position;
        let pool = self.root.pool().clone();
        let processes = self.fleet.processes;
        let receipt = async move {
            let started = Instant::now();
            loop {
                let r = receipt::read(&pool, "scope", "", position, receipt::DEFAULT_LIVE_WITHIN)
                    .await
                    .expect("receipt");
                if r.confirmed.len() == processes {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "receipt incomplete after 30 s: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let (receipt, times) = tokio::join!(receipt, self.fleet.one_from_each("halted"));
        let observed: Vec<Duration> = times.iter().map(|&t| since(t, returned)).collect();
        let last = observed.iter().copied().max().unwrap_or_default();
        self.samples.leaves.extend(observed);
        self.samples.rounds.push(last);
        self.samples.receipts.push(receipt);
        self.scopes
            .set_scope_mode(
                "acme",
                ScopeMode::CancelOnly,
                &Audit::new("ops:bench-supervisor", "resume")
                    .with_authority(Authority::Supervisor)
                    .with_ticket("BENCH-17")
                    .expecting(position),
            )
            .await
            .expect("relax");
        self.fleet.one_from_each("resumed").await;
        (last, receipt)
    }

    /// One bare NOTIFY until the last child's plain listener received it.
    async fn baseline(&mut self) -> Duration {
        self.notifier
            .batch_execute(&format!("NOTIFY {BASELINE_CHANNEL}"))
            .await
            .expect("notify");
        let returned = SystemTime::now();
        let times = self.fleet.one_from_each("notified").await;
        let last = times
            .iter()
            .map(|&t| since(t, returned))
            .max()
            .unwrap_or_default();
        self.samples.baseline.push(last);
        last
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let processes = env_usize("FLEET_PROCESSES", 10);
    let handles = env_usize("FLEET_HANDLES", 1);
    let leaf_count = env_usize("FLEET_LEAVES", 1000);
    assert!(handles > 0 && leaf_count.is_multiple_of(handles));

    let cluster = rt.block_on(async {
        Cluster::builder()
            .setting("max_connections", "300")
            .start()
            .await
            .expect("cluster")
    });
    let db = rt.block_on(cluster.create_database()).expect("database");
    let dsn = cluster.primary().dsn(&db);
    let (root, scopes) = stores(&dsn, 4);
    let created = Instant::now();
    rt.block_on(async {
        scopes.migrate().await.expect("migrate");
        let mut paths = vec!["acme".to_owned(), "acme/eq".to_owned()];
        paths.extend((0..DESKS).map(|k| format!("acme/eq/d{k}")));
        paths.extend(leaves(leaf_count));
        for p in &paths {
            scopes
                .create_scope(
                    &ScopePath::parse(p).expect("canonical"),
                    &Audit::new("ops:bench", "register").with_authority(Authority::Operator),
                )
                .await
                .expect("create");
        }
    });
    eprintln!(
        "scope_fleet: {} scopes created in {}",
        leaf_count + DESKS + 2,
        ms(created.elapsed())
    );

    let started = Instant::now();
    let fleet = rt.block_on(spawn_children(&dsn, processes, handles, leaf_count));
    let mut report = vec![format!(
        "{processes} processes × {handles} handles × {} leaves each: all ready and \
         operational {} after spawning",
        leaf_count,
        ms(started.elapsed())
    )];
    let (total, listen) = rt.block_on(connections(cluster.primary(), &db));
    report.push(format!(
        "{total} backends on the primary ({listen} *_listen: {:.2} per process; each \
         child's plain baseline listener is not named *_listen)",
        listen as f64 / processes as f64
    ));
    let notifier = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("notifier");
        tokio::spawn(connection);
        client
    });
    let parent = Arc::new(tokio::sync::Mutex::new(Parent {
        fleet,
        scopes,
        root,
        notifier,
        samples: Samples::default(),
        round: 0,
    }));

    let mut group = criterion.benchmark_group("scope_fleet");
    group.sample_size(10);
    let name = |what: &str| {
        format!("{what}, {processes} processes x {handles} handles x {leaf_count} leaves")
    };
    group.bench_function(name("firm halt → every leaf"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut parent = parent.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += parent.round().await.0;
                }
                total
            })
        })
    });
    group.bench_function(name("receipt complete"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut parent = parent.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += parent.round().await.1;
                }
                total
            })
        })
    });
    group.bench_function(name("baseline: bare NOTIFY → every listener"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut parent = parent.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += parent.baseline().await;
                }
                total
            })
        })
    });
    group.finish();

    rt.block_on(async {
        let parent = parent.lock().await;
        let s = &parent.samples;
        report.push(line(
            "firm halt, every leaf observation from the write returning",
            &s.leaves,
        ));
        report.push(line("firm halt, the last leaf of each round", &s.rounds));
        report.push(line(
            &format!(
                "receipt complete ({processes} processes, {} handles)",
                processes * handles
            ),
            &s.receipts,
        ));
        report.push(line(
            "baseline: bare NOTIFY, the last listener",
            &s.baseline,
        ));
    });
    for l in &report {
        eprintln!("scope_fleet: {l}");
    }
}

/// Starts the children and waits until each says `ready`.
async fn spawn_children(dsn: &str, processes: usize, handles: usize, leaves: usize) -> Fleet {
    let exe = std::env::current_exe().expect("this bench's path");
    let (tx, lines) = mpsc::unbounded_channel::<String>();
    let mut children = Vec::new();
    for k in 0..processes {
        let mut child = std::process::Command::new(&exe)
            .env(CHILD_ENV, k.to_string())
            .env("FLEET_CHILD_DSN", dsn)
            .env("FLEET_HANDLES", handles.to_string())
            .env("FLEET_LEAVES", leaves.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child process");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        // One reader thread per child forwards its lines.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let mut fleet = Fleet {
        lines,
        children,
        processes,
    };
    for _ in 0..processes {
        assert_eq!(fleet.next().await, "ready");
    }
    fleet
}

fn wall(at: Instant) -> u128 {
    // Instant → wall clock: now minus how long ago it was.
    unix_nanos(SystemTime::now() - at.elapsed())
}

/// The child: `FLEET_HANDLES` handles over one pool, `FLEET_LEAVES` gates in all,
/// every handle reporting receipts; prints `ready`, then per round `halted <ns>…`
/// (one time per gate) and `resumed`, and `notified <ns>` per baseline NOTIFY.
fn child_main() {
    let k = std::env::var(CHILD_ENV).expect("child number");
    let dsn = std::env::var("FLEET_CHILD_DSN").expect("FLEET_CHILD_DSN");
    let handles = env_usize("FLEET_HANDLES", 1);
    let leaf_count = env_usize("FLEET_LEAVES", 1000);
    let per_handle = leaf_count / handles;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (root, scopes) = stores(&dsn, 4);
        let scopes: Arc<PostgresScopeStore> = Arc::new(scopes);
        let root = Arc::new(root);
        let receipts = Receipts::builder()
            .process_name(format!("fleet-{k}"))
            .postgres(scopes.pool().clone());
        let all = leaves(leaf_count);
        let mut modes = Vec::new();
        let mut gates = Vec::new();
        for h in 0..handles {
            let switch = KillSwitch::spawn(root.clone(), push_only());
            let handle =
                ScopeModes::spawn(scopes.clone(), switch, push_only()).with_receipts(&receipts);
            assert!(
                handle.ready(Duration::from_secs(100)).await,
                "{:?}",
                handle.health()
            );
            for leaf in &all[h * per_handle..(h + 1) * per_handle] {
                gates.push(handle.gate(&[leaf.as_str()]).expect("gate"));
            }
            modes.push(handle);
        }
        let deadline = Instant::now() + Duration::from_secs(100);
        while modes
            .iter()
            .any(|m| m.health().status != ComponentStatus::Operational)
        {
            assert!(Instant::now() < deadline, "handles not operational");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One task per gate, parked on its watch: it reports each flip of "halted".
        let (tx, mut flips) = mpsc::unbounded_channel::<(bool, Instant)>();
        for gate in &gates {
            let mut watch = gate.subscribe();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut halted = *watch.borrow_and_update() == ScopeMode::Halted;
                while watch.changed().await.is_ok() {
                    let now = *watch.borrow_and_update() == ScopeMode::Halted;
                    if now != halted {
                        halted = now;
                        if tx.send((now, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        // The baseline: a plain LISTEN connection of this process's own.
        let (client, mut connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("baseline listener");
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = message {
                    let at = unix_nanos(SystemTime::now());
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "notified {at}").expect("stdout");
                    out.flush().expect("stdout");
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {BASELINE_CHANNEL}"))
            .await
            .expect("LISTEN");
        println!("ready");
        let n = gates.len();
        loop {
            let mut halted = String::from("halted");
            for _ in 0..n {
                let Some((now, at)) = flips.recv().await else {
                    return;
                };
                assert!(now, "a gate resumed before every gate halted");
                halted.push(' ');
                halted.push_str(&wall(at).to_string());
            }
            println!("{halted}");
            for _ in 0..n {
                let Some((now, _)) = flips.recv().await else {
                    return;
                };
                assert!(!now);
            }
            println!("resumed");
        }
    });
}
