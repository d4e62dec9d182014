//! The failover drill: a local primary + replica, a steady load of kill-switch, mode
//! and lease writes, kill -9 of the primary, promotion, and a table against the
//! runbook's objectives (RPO <= 60 s, RTO <= 10 min). Exits non-zero on a breach.
//!
//!   cargo run --example failover-drill                 # asynchronous replication
//!   cargo run --example failover-drill -- --sync       # synchronous: RPO must be 0
//!   cargo run --example failover-drill -- --runs 5     # median of five drills
//!   cargo run --example failover-drill -- --cut-replication 500   # provoke loss (async)
//!   cargo run --example failover-drill -- --report-dir DIR        # evidence folder
//!
//! Each drill writes `<UTC date>-failover-<sync|async>.json`, `.md` and `.sha256` into
//! `reports/disaster-recovery/` (or `--report-dir`).
//!
//! Needs PostgreSQL's server binaries (Debian's `postgresql` package).

use std::time::Duration;
use tradepulse_examples::drill::{run, DrillConfig, DrillReport};

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The drill's own load flips the kill switch every few milliseconds and kills the
    // primary on purpose: the stores' log lines about it are its subject, not news. So
    // it prints its progress and report, and logs only errors unless RUST_LOG says more.
    if std::env::var_os("RUST_LOG").is_some() {
        tradepulse_examples::logging::init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
            .try_init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = DrillConfig {
        synchronous: args.iter().any(|a| a == "--sync"),
        cut_replication: arg_value(&args, "--cut-replication").map(Duration::from_millis),
        ..DrillConfig::default()
    };
    let runs = arg_value(&args, "--runs").unwrap_or(1).max(1);
    let mut reports: Vec<DrillReport> = Vec::new();
    for i in 1..=runs {
        println!("== drill {i}/{runs}");
        let report = run(config.clone(), |line| println!("   {line}")).await?;
        println!("{}", report.table());
        let dir = args
            .iter()
            .position(|a| a == "--report-dir")
            .and_then(|i| args.get(i + 1))
            .map_or(safetyctl::evidence::DEFAULT_DIR, String::as_str);
        let evidence = report.write_evidence(std::path::Path::new(dir))?;
        println!(
            "evidence: {} and {} (sha256 in {})",
            evidence.json.display(),
            evidence.markdown.display(),
            evidence.checksums.display()
        );
        reports.push(report);
    }
    if runs > 1 {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!("== median of {runs} drills");
        println!(
            "detection {}",
            ms(median(reports.iter().map(|r| r.detection).collect()))
        );
        println!(
            "promotion {}",
            ms(median(reports.iter().map(|r| r.promotion).collect()))
        );
        for (i, c) in reports[0].controls.iter().enumerate() {
            println!(
                "{:<12} first write after promotion {}, recovery gap {}, lost {}",
                c.control,
                ms(median(
                    reports
                        .iter()
                        .map(|r| r.controls[i].first_write_after_promotion)
                        .collect()
                )),
                ms(median(
                    reports.iter().map(|r| r.controls[i].recovery_gap).collect()
                )),
                reports.iter().map(|r| r.controls[i].lost).sum::<usize>(),
            );
        }
    }
    if reports.iter().all(DrillReport::objectives_met) {
        println!("objectives met: RPO <= 60 s, RTO <= 10 min");
        Ok(())
    } else {
        eprintln!("OBJECTIVE BREACHED: see the table above");
        std::process::exit(1);
    }
}
