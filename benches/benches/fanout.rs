//! Fan-out: one engage observed by 10 / 100 / 1,000 kill-switch handles, each with its
//! own store and pool (pool size 1), on a testkit primary with a streaming replica,
//! over the multi-host DSN a fleet would use.
//!
//! * **Propagation** (criterion group `fanout_propagation`, custom measurement): per
//!   engage, every handle's `subscribe()` watch is awaited by its own task, which
//!   takes the time it turned `Halted`; p50/p99 over every handle and engage are
//!   printed after the group, measured from `engage` returning (and from the call).
//!   Same group, same run, the baseline: handles that only poll (push off), at a
//!   100 ms interval scaled down from the products' defaults, engaged at a random
//!   phase; for Unleash (15 s) and Flipt (120 s) the table prints the uniform
//!   `[0, interval]` model scaled from it, labelled as a model.
//! * **Connections on the primary** (`pg_stat_activity` rows of the database, and
//!   those named `*_listen`) with each fleet.
//! * **Ready after a restart** of the primary (stop, start) and **after a failover**
//!   (kill -9, promote the replica): time from the server being up until every
//!   handle's health is `operational` again (read succeeded, push connected).
//! * **Separate processes**: the same bench binary re-executed as child processes
//!   (`P × H` handles); observation times cross the process boundary as wall-clock
//!   nanoseconds (one machine, one clock).
//!
//! cargo bench -p tradepulse-benches --bench fanout -- --warm-up-time 1 --measurement-time 4
//!
//! Knobs (environment): `FANOUT_HANDLES` (default `10,100,1000`), `FANOUT_PROCESSES`
//! (default `10x100`; empty skips), `FANOUT_PROCESS_ROUNDS` (default 30),
//! `FANOUT_FAILOVER` (fleet sizes for the failover runs, default `100,1000`).

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::Criterion;
use failover_core::postgres::{hub, PgSettings};
use failover_core::ComponentStatus;
use killswitch::{Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tradepulse_testkit::Cluster;

#[path = "common/mod.rs"]
mod common;
use common::{connections, ms, percentile, unix_nanos, PollOnly};

const CHILD_ENV: &str = "TRADEPULSE_FANOUT_CHILD";
const POLL_BASELINE: Duration = Duration::from_millis(100);

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Push only: polling at 1 h so that every observation below came by push.
fn fleet_config() -> KillSwitchConfig {
    KillSwitchConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}

/// A handle's store: its own pool of one connection, otherwise the default settings.
fn fleet_store(dsn: &str) -> PostgresKillSwitchStore {
    let settings = PgSettings::builder()
        .with_dsn(dsn)
        .with_pool_size(1)
        .build()
        .expect("settings");
    PostgresKillSwitchStore::new(settings).expect("store")
}

fn spawn_fleet(dsn: &str, n: usize) -> Vec<KillSwitch> {
    (0..n)
        .map(|_| KillSwitch::spawn(Arc::new(fleet_store(dsn)), fleet_config()))
        .collect()
}

fn all_operational(handles: &[KillSwitch]) -> usize {
    handles
        .iter()
        .filter(|h| h.health().status == ComponentStatus::Operational)
        .count()
}

/// Waits (checking every 5 ms) until every handle is operational; the elapsed time,
/// or `Err(how many were)` after `timeout`.
async fn until_operational(handles: &[KillSwitch], timeout: Duration) -> Result<Duration, usize> {
    let start = Instant::now();
    loop {
        let n = all_operational(handles);
        if n == handles.len() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per handle: a task that awaits the handle's watch and reports when it turned
/// halted (true) or allowed (false). Persistent across rounds, so it is parked on
/// the watch before the next change is made.
fn spawn_observers(handles: &[KillSwitch]) -> mpsc::UnboundedReceiver<(bool, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for h in handles {
        let mut watch = h.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                if watch.wait_for(|t| t.is_halted()).await.is_err() {
                    return;
                }
                if tx.send((true, Instant::now())).is_err() {
                    return;
                }
                if watch.wait_for(|t| !t.is_halted()).await.is_err() {
                    return;
                }
                if tx.send((false, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

#[derive(Default)]
struct Samples {
    /// engage returned → handle observed (0 when observed before the call returned).
    from_return: Vec<Duration>,
    /// engage called → handle observed.
    from_call: Vec<Duration>,
    engages: usize,
}

struct Fleet {
    handles: Vec<KillSwitch>,
    observed: mpsc::UnboundedReceiver<(bool, Instant)>,
}

impl Fleet {
    /// One engage, observed by every handle; then a disengage, observed by every
    /// handle (not measured). Returns engage call → last handle observed.
    async fn round(
        &mut self,
        writer: &PostgresKillSwitchStore,
        samples: &Mutex<Samples>,
        random_delay: Option<Duration>,
    ) -> Duration {
        if let Some(max) = random_delay {
            let nanos = rand_below(max.as_nanos() as u64);
            tokio::time::sleep(Duration::from_nanos(nanos)).await;
        }
        let called = Instant::now();
        writer
            .engage(&Audit::new("bench", "fan-out"))
            .await
            .expect("engage");
        let returned = Instant::now();
        let mut last = called;
        let mut got = Vec::with_capacity(self.handles.len());
        while got.len() < self.handles.len() {
            let (halted, at) = self.observed.recv().await.expect("observers");
            assert!(halted, "a handle reported allowed while engaging");
            last = last.max(at);
            got.push(at);
        }
        {
            let mut s = samples.lock().unwrap();
            s.engages += 1;
            for at in got {
                s.from_return.push(at.saturating_duration_since(returned));
                s.from_call.push(at.saturating_duration_since(called));
            }
        }
        writer
            .disengage(&Audit::new("bench", "fan-out").with_ticket("BENCH-11"))
            .await
            .expect("disengage");
        let mut n = 0;
        while n < self.handles.len() {
            let (halted, _) = self.observed.recv().await.expect("observers");
            assert!(!halted, "a handle reported halted while disengaging");
            n += 1;
        }
        last - called
    }
}

/// A small xorshift: the phase of the polling baseline must not lock to the poll.
fn rand_below(max: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    if max == 0 {
        0
    } else {
        x % max
    }
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        eprintln!("fanout: {s}");
        self.lines.push(s);
    }
}

fn propagation_line(name: &str, s: &Samples) -> String {
    let mut r = s.from_return.clone();
    r.sort();
    let mut c = s.from_call.clone();
    c.sort();
    format!(
        "{name}: from engage returning p50 {} p99 {} max {}; from the call p50 {} p99 {} \
         ({} observations, {} engages)",
        ms(percentile(&r, 0.5)),
        ms(percentile(&r, 0.99)),
        ms(percentile(&r, 1.0)),
        ms(percentile(&c, 0.5)),
        ms(percentile(&c, 0.99)),
        r.len(),
        s.engages
    )
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
    let mut report = Report { lines: Vec::new() };
    let sizes: Vec<usize> = env_list("FANOUT_HANDLES", "10,100,1000")
        .iter()
        .map(|s| s.parse().expect("FANOUT_HANDLES: numbers"))
        .collect();

    let (cluster, db) = rt.block_on(async {
        let cluster = Cluster::builder()
            .setting("max_connections", "1200")
            .replica(true)
            .start()
            .await
            .expect("cluster");
        let db = cluster.create_database().await.expect("database");
        (cluster, db)
    });
    let dsn = cluster.multi_host_dsn(&db);
    let writer = rt.block_on(async {
        let writer = fleet_store(&dsn);
        writer.migrate().await.expect("migrate");
        writer
    });

    let mut group = criterion.benchmark_group("fanout_propagation");
    group.sample_size(10);
    for &n in &sizes {
        let started = Instant::now();
        let handles = rt.block_on(async { spawn_fleet(&dsn, n) });
        let ready = rt.block_on(until_operational(&handles, Duration::from_secs(60)));
        report.line(format!(
            "{n} handles: cold start, all operational after {}",
            match ready {
                Ok(_) => ms(started.elapsed()),
                Err(k) => format!("NOT READY ({k}/{n} after 60 s)"),
            }
        ));
        let (total, listen) = rt.block_on(connections(cluster.primary(), &db));
        report.line(format!(
            "{n} handles: {total} backends on the primary for the database ({listen} *_listen; \
             the writer's pool holds 1); hub::connections() = {}",
            hub::connections()
        ));
        let observed = rt.block_on(async { spawn_observers(&handles) });
        let mut fleet = Fleet { handles, observed };
        let samples = Mutex::new(Samples::default());
        group.bench_function(
            format!("push, {n} handles (engage → all observed)"),
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += fleet.round(&writer, &samples, None).await;
                        }
                        total
                    })
                })
            },
        );
        report.line(propagation_line(
            &format!("push, {n} handles"),
            &samples.into_inner().unwrap(),
        ));

        // Restart of the primary: stop, start, until every handle is operational.
        let restart = rt.block_on(async {
            cluster.primary().stop().await.expect("stop");
            let noticed = until_not_operational(&fleet.handles, Duration::from_secs(3)).await;
            cluster.primary().start().await.expect("start");
            let ready = until_operational(&fleet.handles, Duration::from_secs(60)).await;
            (noticed, ready)
        });
        report.line(format!(
            "{n} handles: restart of the primary ({} noticed the stop): all operational {} after \
             the server was up",
            restart.0,
            match restart.1 {
                Ok(d) => ms(d),
                Err(k) => format!("NOT within 60 s ({k}/{n})"),
            }
        ));
        // Still converging after the restart.
        let after = Mutex::new(Samples::default());
        rt.block_on(async {
            for _ in 0..5 {
                fleet.round(&writer, &after, None).await;
            }
        });
        report.line(propagation_line(
            &format!("push, {n} handles, after the restart"),
            &after.into_inner().unwrap(),
        ));
        drop(fleet);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    }

    // Baseline in the same group: readers that only poll, at a scaled-down interval.
    {
        let pollers: Vec<KillSwitch> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..10 {
                let store: Arc<dyn KillSwitchStore> = Arc::new(PollOnly(fleet_store(&dsn)));
                v.push(KillSwitch::spawn(
                    store,
                    KillSwitchConfig::default().with_poll_interval(POLL_BASELINE),
                ));
                // Spread the pollers' phases over the interval.
                tokio::time::sleep(POLL_BASELINE / 10).await;
            }
            for h in &v {
                h.ready(Duration::from_secs(10)).await;
            }
            v
        });
        let observed = rt.block_on(async { spawn_observers(&pollers) });
        let mut fleet = Fleet {
            handles: pollers,
            observed,
        };
        let samples = Mutex::new(Samples::default());
        group.bench_function(
            "baseline: 10 poll-only readers, 100 ms interval (engage → all observed)",
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += fleet.round(&writer, &samples, Some(POLL_BASELINE)).await;
                        }
                        total
                    })
                })
            },
        );
        let samples = samples.into_inner().unwrap();
        report.line(propagation_line(
            "baseline: poll-only readers at 100 ms (measured)",
            &samples,
        ));
        let mut r = samples.from_return.clone();
        r.sort();
        let (p50, p99) = (percentile(&r, 0.5), percentile(&r, 0.99));
        for (product, interval) in [("Unleash", 15.0f64), ("Flipt", 120.0)] {
            let scale = interval / POLL_BASELINE.as_secs_f64();
            report.line(format!(
                "MODEL (not measured): {product} default poll {interval:.0} s — uniform [0, \
                 {interval:.0} s]: p50 {:.1} s, p99 {:.1} s; scaled from the 100 ms measurement: \
                 p50 {:.1} s, p99 {:.1} s",
                interval * 0.5,
                interval * 0.99,
                p50.as_secs_f64() * scale,
                p99.as_secs_f64() * scale,
            ));
        }
        drop(fleet);
    }
    group.finish();

    // Separate processes.
    for spec in env_list("FANOUT_PROCESSES", "10x100") {
        let (p, h) = spec
            .split_once('x')
            .map(|(p, h)| (p.parse().unwrap(), h.parse().unwrap()))
            .expect("FANOUT_PROCESSES: PxH");
        let rounds: usize = std::env::var("FANOUT_PROCESS_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let lines = rt.block_on(processes(&cluster, &db, &dsn, &writer, p, h, rounds));
        for l in lines {
            report.line(l);
        }
    }
    drop(writer);
    drop(cluster);

    // Failover: a cluster per fleet size (the promotion consumes the replica).
    for n in env_list("FANOUT_FAILOVER", "100,1000") {
        let n: usize = n.parse().expect("FANOUT_FAILOVER: numbers");
        let lines = rt.block_on(failover(n));
        for l in lines {
            report.line(l);
        }
    }

    criterion.final_summary();
    println!("\n== fan-out report");
    for l in &report.lines {
        println!("{l}");
    }
}

async fn until_not_operational(handles: &[KillSwitch], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let up = all_operational(handles);
        if up == 0 {
            return format!("all {} in {}", handles.len(), ms(start.elapsed()));
        }
        if start.elapsed() > timeout {
            return format!(
                "{}/{} within {}",
                handles.len() - up,
                handles.len(),
                ms(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn failover(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let cluster = Cluster::builder()
        .setting("max_connections", "1200")
        .replica(true)
        .start()
        .await
        .expect("cluster");
    let db = cluster.create_database().await.expect("database");
    let dsn = cluster.multi_host_dsn(&db);
    let writer = fleet_store(&dsn);
    writer.migrate().await.expect("migrate");
    writer
        .engage(&Audit::new("bench", "before the failover"))
        .await
        .expect("engage");
    let handles = spawn_fleet(&dsn, n);
    if let Err(k) = until_operational(&handles, Duration::from_secs(60)).await {
        out.push(format!("failover, {n} handles: NOT READY before ({k}/{n})"));
        return out;
    }
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .expect("replica caught up");
    cluster.primary().kill9().await.expect("kill -9");
    let killed = Instant::now();
    let noticed = until_not_operational(&handles, Duration::from_secs(3)).await;
    let replica = cluster.replica().expect("replica");
    replica.promote().await.expect("promote");
    let promoted = killed.elapsed();
    let ready = until_operational(&handles, Duration::from_secs(60)).await;
    out.push(format!(
        "failover, {n} handles: kill -9 ({noticed} noticed), promoted {} after the kill; all \
         operational {} after the new primary was up",
        ms(promoted),
        match ready {
            Ok(d) => ms(d),
            Err(k) => format!("NOT within 60 s ({k}/{n})"),
        }
    ));
    let (total, listen) = connections(replica, &db).await;
    out.push(format!(
        "failover, {n} handles: {total} backends on the new primary ({listen} *_listen)"
    ));
    // Propagation on the new primary.
    let observed = spawn_observers(&handles);
    let mut fleet = Fleet { handles, observed };
    writer
        .disengage(&Audit::new("bench", "after the failover").with_ticket("BENCH-11"))
        .await
        .expect("disengage");
    let mut seen = 0;
    while seen < n {
        // The observers report the disengage (allowed) first.
        let (halted, _) = fleet.observed.recv().await.expect("observers");
        if !halted {
            seen += 1;
        }
    }
    let samples = Mutex::new(Samples::default());
    for _ in 0..10 {
        fleet.round(&writer, &samples, None).await;
    }
    out.push(propagation_line(
        &format!("push, {n} handles, on the new primary"),
        &samples.into_inner().unwrap(),
    ));
    out
}

/// The next line from any child, bounded.
async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("a child said nothing for 120 s")
        .expect("the children exited")
}

/// `p` child processes with `h` handles each: every child prints `ready`, then per
/// round one `halted <ns> <ns> …` line (wall-clock observation times) and `allowed`.
async fn processes(
    cluster: &Cluster,
    db: &str,
    dsn: &str,
    writer: &PostgresKillSwitchStore,
    p: usize,
    h: usize,
    rounds: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let exe = std::env::current_exe().expect("this bench's path");
    let started = Instant::now();
    let mut children = Vec::new();
    // One reader thread per child forwards its lines (std::process: no tokio features).
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    for _ in 0..p {
        let mut child = std::process::Command::new(&exe)
            .env(CHILD_ENV, "1")
            .env("FANOUT_CHILD_DSN", dsn)
            .env("FANOUT_CHILD_HANDLES", h.to_string())
            .env("FANOUT_CHILD_ROUNDS", rounds.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child process");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
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
    for _ in 0..p {
        assert_eq!(next(&mut rx).await, "ready");
    }
    out.push(format!(
        "{p} processes × {h} handles: all operational {} after spawning",
        ms(started.elapsed())
    ));
    let (total, listen) = connections(cluster.primary(), db).await;
    out.push(format!(
        "{p} processes × {h} handles: {total} backends on the primary ({listen} *_listen: {:.2} \
         per process)",
        listen as f64 / p as f64
    ));
    let mut samples = Samples::default();
    for _ in 0..rounds {
        let called = SystemTime::now();
        writer
            .engage(&Audit::new("bench", "fan-out"))
            .await
            .expect("engage");
        let returned = SystemTime::now();
        for _ in 0..p {
            let line = next(&mut rx).await;
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("halted"));
            for w in words {
                let at: u128 = w.parse().expect("nanoseconds");
                let since =
                    |t: SystemTime| Duration::from_nanos(at.saturating_sub(unix_nanos(t)) as u64);
                samples.from_return.push(since(returned));
                samples.from_call.push(since(called));
            }
        }
        samples.engages += 1;
        writer
            .disengage(&Audit::new("bench", "fan-out").with_ticket("BENCH-11"))
            .await
            .expect("disengage");
        for _ in 0..p {
            assert_eq!(next(&mut rx).await, "allowed");
        }
    }
    out.push(propagation_line(
        &format!("push, {p} processes × {h} handles"),
        &samples,
    ));
    for mut child in children {
        let _ = child.wait();
    }
    out
}

/// The child process: `FANOUT_CHILD_HANDLES` handles on `FANOUT_CHILD_DSN`.
fn child_main() {
    let dsn = std::env::var("FANOUT_CHILD_DSN").expect("FANOUT_CHILD_DSN");
    let n: usize = std::env::var("FANOUT_CHILD_HANDLES")
        .expect("FANOUT_CHILD_HANDLES")
        .parse()
        .expect("a number");
    let rounds: usize = std::env::var("FANOUT_CHILD_ROUNDS")
        .expect("FANOUT_CHILD_ROUNDS")
        .parse()
        .expect("a number");
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handles = spawn_fleet(&dsn, n);
        until_operational(&handles, Duration::from_secs(110))
            .await
            .expect("child fleet operational");
        let mut observed = spawn_observers(&handles);
        let stdout = std::io::stdout();
        writeln!(stdout.lock(), "ready").expect("stdout");
        for _ in 0..rounds {
            let mut line = String::from("halted");
            for _ in 0..n {
                let (halted, at) = observed.recv().await.expect("observers");
                assert!(halted);
                // Instant → wall clock: now minus how long ago it was.
                let wall = SystemTime::now() - at.elapsed();
                line.push(' ');
                line.push_str(&unix_nanos(wall).to_string());
            }
            writeln!(stdout.lock(), "{line}").expect("stdout");
            for _ in 0..n {
                let (halted, _) = observed.recv().await.expect("observers");
                assert!(!halted);
            }
            writeln!(stdout.lock(), "allowed").expect("stdout");
        }
    });
}
