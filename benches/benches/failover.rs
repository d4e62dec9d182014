//! Failover figures, not criterion (there is no same-run baseline to put beside them):
//!
//! * **first successful write after promotion** — `safetyctl::drill` (the code behind
//!   `safetyctl drill` and the `failover-drill` example) run `FAILOVER_DRILLS` times
//!   (default 20; asynchronous replication, 0.5 s of load before the kill): per control
//!   (kill switch, symbol mode, lease) p50/p99/max of promotion complete → the
//!   control's first acknowledged write on the new primary;
//! * **detection with the default settings** — a store built from a DSN alone and a
//!   default `KillSwitchConfig`; kill -9 of the primary; time until the handle's health
//!   says `failed`, over `FAILOVER_DETECTIONS` runs (default 5) on one primary that is
//!   restarted between runs.
//!
//! cargo bench -p tradepulse-benches --bench failover [-- drills | detection]

// A plain `harness = false` bench: no criterion items to document.
#![allow(missing_docs)]

use failover_core::postgres::PgSettings;
use failover_core::ComponentStatus;
use killswitch::{KillSwitch, KillSwitchConfig, PostgresKillSwitchStore};
use safetyctl::drill::{run, DrillConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tradepulse_testkit::{own_primary, wait_until};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {}, p99 {}, min {}, max {} ({} runs)",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench` (and criterion's options when every bench runs);
    // the words `drills` / `detection` select a part, none means both.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "drills" || a == "detection")
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let mut lines = Vec::new();

    if wants("drills") {
        let drills = env_usize("FAILOVER_DRILLS", 20).max(1);
        let config = DrillConfig {
            warm_up: Duration::from_millis(500),
            ..DrillConfig::default()
        };
        let mut reports = Vec::new();
        let started = Instant::now();
        for i in 1..=drills {
            let report = run(config.clone(), |_| {}).await.expect("drill");
            eprintln!(
                "drill {i}/{drills}: detection {}, promotion {}, first write after promotion: {}",
                ms(report.detection),
                ms(report.promotion),
                report
                    .controls
                    .iter()
                    .map(|c| format!(
                        "{} {} (gap {})",
                        c.control,
                        ms(c.first_write_after_promotion),
                        ms(c.recovery_gap)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            reports.push(report);
        }
        lines.push(format!(
            "{drills} drills (asynchronous replica, kill -9, promote) in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
        for (i, control) in reports[0].controls.iter().enumerate() {
            lines.push(format!(
                "first write after promotion, {}: {}",
                control.control,
                summary(
                    reports
                        .iter()
                        .map(|r| r.controls[i].first_write_after_promotion)
                        .collect()
                )
            ));
        }
        lines.push(format!(
            "first write after promotion, any control (all {} samples): {}",
            reports.len() * reports[0].controls.len(),
            summary(
                reports
                    .iter()
                    .flat_map(|r| r.controls.iter().map(|c| c.first_write_after_promotion))
                    .collect()
            )
        ));
        for (i, control) in reports[0].controls.iter().enumerate() {
            lines.push(format!(
                "recovery gap (last write acknowledged by the old primary → first by the new), \
                 {}: {}",
                control.control,
                summary(reports.iter().map(|r| r.controls[i].recovery_gap).collect())
            ));
        }
        lines.push(format!(
            "drill detection (fast settings, poll 100 ms: health leaves operational): {}",
            summary(reports.iter().map(|r| r.detection).collect())
        ));
        lines.push(format!(
            "promotion (pg_promote until writable): {}",
            summary(reports.iter().map(|r| r.promotion).collect())
        ));
    }

    if wants("detection") {
        let runs = env_usize("FAILOVER_DETECTIONS", 5).max(1);
        let (cluster, db) = own_primary().await.expect("cluster");
        let dsn = cluster.primary().dsn(&db);
        let store =
            PostgresKillSwitchStore::new(PgSettings::builder().with_dsn(&dsn).build().unwrap())
                .unwrap();
        store.migrate().await.expect("migrate");
        let handle = KillSwitch::spawn(Arc::new(store), KillSwitchConfig::default());
        let mut detected = Vec::new();
        let mut details = String::new();
        for i in 1..=runs {
            wait_until("operational", Duration::from_secs(30), || {
                handle.health().status == ComponentStatus::Operational
            })
            .await;
            // Kill at a random point of the 1 s poll cycle.
            tokio::time::sleep(Duration::from_millis(300 + 137 * i as u64 % 700)).await;
            // From the kill -9 call: the testkit returns once the server is gone.
            let killed = Instant::now();
            cluster.primary().kill9().await.expect("kill -9");
            let mut watch = handle.subscribe();
            let took = loop {
                if handle.health().status == ComponentStatus::Failed {
                    break killed.elapsed();
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "never reported failed"
                );
                // Health has no watch of its own: wake on a hot-path change or every 5 ms.
                tokio::select! {
                    _ = watch.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            };
            details = handle.health().details.unwrap_or_default();
            eprintln!("detection {i}/{runs}: failed after {}", ms(took));
            detected.push(took);
            cluster.primary().start().await.expect("restart");
        }
        lines.push(format!(
            "detection, default settings (kill -9 → health `failed`): {}",
            summary(detected)
        ));
        lines.push(format!("  health said: {details}"));
    }

    println!("\n== failover report");
    for l in &lines {
        println!("{l}");
    }
}
