//! The failover drill: a quarterly game day as one command (feature `drill`: it
//! starts throw-away clusters through tradepulse-testkit).
//!
//! Starts a local primary + streaming replica (testkit), drives a steady load of
//! kill-switch, symbol-mode and lease writes through stores over a multi-host DSN,
//! kills the primary (`kill -9`), promotes the replica, and measures per control:
//!
//! * **detection** — kill → the kill-switch handle's health says `failed` (the pool
//!   finds no writable host: the health's words for a dead primary);
//! * **promotion** — `pg_promote` until the replica accepts writes;
//! * **first write** — promotion complete → the control's first acknowledged write;
//! * **recovery gap (RTO)** — the control's last acknowledged write on the old
//!   timeline → its first on the new one;
//! * **writes lost (RPO)** — writes acknowledged before the kill that the promoted
//!   server does not have, and the window they span.
//!
//! Objectives: RPO ≤ 60 s, RTO ≤ 10 min; a dead primary shows in health within 1 s;
//! the first write lands within 500 ms of promotion.
//!
//! It prints a handful of progress lines and the report; the log lines of its own
//! load (every state change of the kill switch it flips) are the caller's to filter.

use failover_core::{Audit, ComponentStatus};
use fencing::LeaseFencer;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use symbol_mode::{SymbolMode, SymbolModeStore};
use tokio::time::Instant;
use tradepulse_testkit::{fast_settings, Cluster};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The recovery point objective.
pub const RPO_OBJECTIVE: Duration = Duration::from_secs(60);
/// The recovery time objective.
pub const RTO_OBJECTIVE: Duration = Duration::from_secs(600);
/// A dead primary shows in health within this.
pub const DETECTION_TARGET: Duration = Duration::from_secs(1);
/// The first write lands within this after promotion.
pub const FIRST_WRITE_TARGET: Duration = Duration::from_millis(500);

/// How to run the drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillConfig {
    /// Synchronous replication: no acknowledged write may be lost.
    pub synchronous: bool,
    /// Load before the fault.
    pub warm_up: Duration,
    /// Stop the replica this long before the kill (asynchronous replication then
    /// loses what was acknowledged meanwhile; the drill must report it).
    pub cut_replication: Option<Duration>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            synchronous: false,
            warm_up: Duration::from_secs(2),
            cut_replication: None,
        }
    }
}

/// One control's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReport {
    /// `kill switch`, `symbol mode` or `lease`.
    pub control: &'static str,
    /// Writes acknowledged before the kill.
    pub acked_before_kill: usize,
    /// Of those, missing on the promoted server.
    pub lost: usize,
    /// Oldest lost write's acknowledgement → the kill (the data-loss window).
    pub loss_window: Duration,
    /// Promotion complete → first acknowledged write.
    pub first_write_after_promotion: Duration,
    /// Last acknowledged write on the old timeline → first on the new one.
    pub recovery_gap: Duration,
}

/// What the drill measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillReport {
    /// Replication mode.
    pub synchronous: bool,
    /// Kill → kill-switch health `failed`.
    pub detection: Duration,
    /// Promotion duration.
    pub promotion: Duration,
    /// Per control.
    pub controls: Vec<ControlReport>,
    /// What happened when, from the start of the drill.
    pub timeline: Vec<(Duration, String)>,
}

impl DrillReport {
    /// The worst data-loss window.
    pub fn rpo(&self) -> Duration {
        self.controls
            .iter()
            .map(|c| c.loss_window)
            .max()
            .unwrap_or_default()
    }

    /// The worst recovery gap.
    pub fn rto(&self) -> Duration {
        self.controls
            .iter()
            .map(|c| c.recovery_gap)
            .max()
            .unwrap_or_default()
    }

    /// True when RPO and RTO meet the objectives (RPO <= 60 s, RTO <= 10 min).
    pub fn objectives_met(&self) -> bool {
        self.rpo() <= RPO_OBJECTIVE && self.rto() <= RTO_OBJECTIVE
    }

    /// `failover-sync` or `failover-async`: the evidence files' kind.
    pub fn kind(&self) -> &'static str {
        if self.synchronous {
            "failover-sync"
        } else {
            "failover-async"
        }
    }

    /// The report as JSON (durations in milliseconds).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "kind": self.kind(),
            "generated_at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "replication": if self.synchronous { "synchronous" } else { "asynchronous" },
            "rpo_ms": ms(self.rpo()),
            "rto_ms": ms(self.rto()),
            "objectives": { "rpo_ms": ms(RPO_OBJECTIVE), "rto_ms": ms(RTO_OBJECTIVE), "met": self.objectives_met() },
            "detection_ms": ms(self.detection),
            "promotion_ms": ms(self.promotion),
            "controls": self.controls.iter().map(|c| serde_json::json!({
                "control": c.control,
                "acked_before_kill": c.acked_before_kill,
                "writes_lost": c.lost,
                "loss_window_ms": ms(c.loss_window),
                "first_write_after_promotion_ms": ms(c.first_write_after_promotion),
                "recovery_gap_ms": ms(c.recovery_gap),
            })).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().map(|(at, what)| serde_json::json!({"at_ms": ms(*at), "event": what})).collect::<Vec<_>>(),
        })
    }

    /// The report as Markdown, for people.
    pub fn to_markdown(&self) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let mut md = format!(
            "# Failover drill ({})\n\nGenerated {} (UTC).\n\n| objective | measured | target | |\n|---|---|---|---|\n| RPO | {} | <= 60 s | {} |\n| RTO | {} | <= 10 min | {} |\n| detection | {} | <= {} | |\n| promotion | {} | | |\n\n## Per control\n\n| control | acked before kill | writes lost | loss window | first write after promotion | recovery gap |\n|---|---|---|---|---|---|\n",
            if self.synchronous { "synchronous replication" } else { "asynchronous replication" },
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            ms(self.rpo()),
            if self.rpo() <= RPO_OBJECTIVE { "met" } else { "MISSED" },
            ms(self.rto()),
            if self.rto() <= RTO_OBJECTIVE { "met" } else { "MISSED" },
            ms(self.detection),
            ms(DETECTION_TARGET),
            ms(self.promotion),
        );
        for c in &self.controls {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                c.control,
                c.acked_before_kill,
                c.lost,
                ms(c.loss_window),
                ms(c.first_write_after_promotion),
                ms(c.recovery_gap)
            ));
        }
        md.push_str("\n## Timeline\n\n| at | event |\n|---|---|\n");
        for (at, what) in &self.timeline {
            md.push_str(&format!("| +{} | {} |\n", ms(*at), what));
        }
        md
    }

    /// Writes `<UTC date>-<kind>.json`, `.md` and `.sha256` into `dir`.
    pub fn write_evidence(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<crate::evidence::Evidence> {
        crate::evidence::write(dir, self.kind(), &self.to_json(), &self.to_markdown())
    }

    /// The table the example prints.
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let ok = |pass: bool| if pass { "ok" } else { "MISSED" };
        let mut out = String::new();
        out.push_str(&format!(
            "replication: {}\n",
            if self.synchronous {
                "synchronous"
            } else {
                "asynchronous"
            }
        ));
        out.push_str(&format!(
            "detection (kill -> health failed)     {:>10}   target <= {}  {}\n",
            ms(self.detection),
            ms(DETECTION_TARGET),
            ok(self.detection <= DETECTION_TARGET)
        ));
        out.push_str(&format!(
            "promotion (pg_promote)               {:>10}\n",
            ms(self.promotion)
        ));
        out.push_str("\ncontrol        acked  lost  loss window  first write after promotion  recovery gap (RTO)\n");
        for c in &self.controls {
            out.push_str(&format!(
                "{:<13} {:>6} {:>5} {:>12}  {:>11} (target <= {}) {:<6} {:>12}\n",
                c.control,
                c.acked_before_kill,
                c.lost,
                ms(c.loss_window),
                ms(c.first_write_after_promotion),
                ms(FIRST_WRITE_TARGET),
                ok(c.first_write_after_promotion <= FIRST_WRITE_TARGET),
                ms(c.recovery_gap),
            ));
        }
        out.push_str(&format!(
            "\nRPO {} (objective <= 60 s) {}   RTO {} (objective <= 10 min) {}\n",
            ms(self.rpo()),
            ok(self.rpo() <= RPO_OBJECTIVE),
            ms(self.rto()),
            ok(self.rto() <= RTO_OBJECTIVE),
        ));
        out
    }
}

/// Acknowledged writes of one control: (key, when acknowledged).
#[derive(Debug, Default)]
struct Acks(Mutex<Vec<(String, Instant)>>);

impl Acks {
    fn push(&self, key: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, Instant::now()));
    }
    fn all(&self) -> Vec<(String, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How many progress lines a drill sends to `run`'s `progress` (for a progress bar).
pub const STEPS: u64 = 6;

/// Runs the drill; `progress` receives [`STEPS`] lines as it goes.
pub async fn run(
    config: DrillConfig,
    mut progress: impl FnMut(String),
) -> Result<DrillReport, BoxError> {
    let started = Instant::now();
    let mut timeline: Vec<(Duration, String)> = Vec::new();
    let mut out = |line: String| {
        timeline.push((started.elapsed(), line.clone()));
        progress(line);
    };
    let cluster = Cluster::builder()
        .replica(true)
        .synchronous(config.synchronous)
        .start()
        .await?;
    let db = cluster.create_database().await?;
    let (primary, replica) = (cluster.primary(), cluster.replica().ok_or("no replica")?);
    let settings = fast_settings(&cluster.multi_host_dsn(&db))
        .with_retry_budget(Duration::from_millis(800))
        .build()?;
    let kill_store = killswitch::PostgresKillSwitchStore::new(settings.clone())?;
    kill_store.migrate().await?;
    let mode_store = symbol_mode::PostgresSymbolModeStore::new(settings.clone())?;
    mode_store.migrate().await?;
    mode_store
        .register_symbol("DRILL-USD", &Audit::new("drill", "drill symbol"))
        .await?;
    let leases = fencing::PostgresLeaseFencer::new(settings)?;
    leases.migrate().await?;
    let kill_store: Arc<dyn KillSwitchStore> = Arc::new(kill_store);
    let mode_store: Arc<dyn SymbolModeStore> = Arc::new(mode_store);
    let leases: Arc<dyn LeaseFencer> = Arc::new(leases);
    let switch = KillSwitch::spawn(
        kill_store.clone(),
        KillSwitchConfig::default().with_poll_interval(Duration::from_millis(100)),
    );
    switch.ready(Duration::from_secs(10)).await;
    out(format!(
        "cluster up: primary :{} and {} replica :{}",
        primary.port(),
        if config.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        replica.port()
    ));

    let acks: [Arc<Acks>; 3] = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    {
        let (store, acks, stop) = (kill_store.clone(), acks[0].clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let audit = Audit::new("drill", format!("write {i}")).with_ticket("DRILL-1");
                let result = if i.is_multiple_of(2) {
                    store.engage(&audit).await.map(drop)
                } else {
                    store.disengage(&audit).await.map(drop)
                };
                if result.is_ok() {
                    acks.push(audit.request_id().to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    {
        let (store, acks, stop) = (mode_store.clone(), acks[1].clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let audit = Audit::new("drill", format!("write {i}")).with_ticket("DRILL-1");
                let mode = if i.is_multiple_of(2) {
                    SymbolMode::CancelOnly
                } else {
                    SymbolMode::Normal
                };
                if store
                    .set_symbol_mode("DRILL-USD", mode, &audit)
                    .await
                    .is_ok()
                {
                    acks.push(audit.request_id().to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    {
        let (store, acks, stop) = (leases.clone(), acks[2].clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Re-acquiring by the holder grants a new, higher token each time.
                if let Ok(lease) = store
                    .acquire("drill-book", "engine-a", Duration::from_secs(30))
                    .await
                {
                    acks.push(lease.token().to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    tokio::time::sleep(config.warm_up).await;
    if let Some(cut) = config.cut_replication {
        out(format!(
            "replication cut: replica stopped {cut:?} before the kill"
        ));
        replica.stop_immediate().await?;
        tokio::time::sleep(cut).await;
    }
    let before: Vec<usize> = acks.iter().map(|a| a.all().len()).collect();
    out(format!(
        "load: {} kill-switch, {} mode, {} lease writes acknowledged; kill -9 the primary",
        before[0], before[1], before[2]
    ));
    let killed_at = Instant::now();
    primary.kill9().await?;
    let acked_at_kill: Vec<Vec<(String, Instant)>> = acks.iter().map(|a| a.all()).collect();
    let mut health = switch.subscribe();
    let detection = loop {
        if switch.health().status == ComponentStatus::Failed {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err("the dead primary never showed in health as failed".into());
        }
        tokio::select! {
            _ = health.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    };
    out(format!(
        "health failed after {detection:?}; promoting the replica"
    ));
    if config.cut_replication.is_some() {
        replica.start().await?;
    }
    let promote_start = Instant::now();
    replica.promote().await?;
    let promoted_at = Instant::now();
    let promotion = promoted_at - promote_start;
    out(format!("promoted in {promotion:?}"));

    // Wait until every control has landed a write on the new timeline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = acks
            .iter()
            .zip(&acked_at_kill)
            .all(|(a, old)| a.all().len() > old.len());
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err("a control did not recover within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out("every control wrote on the new timeline; load stopped".into());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // What the promoted server holds.
    let kill_durable: HashSet<String> = column(
        &cluster,
        &db,
        "SELECT request_id::text FROM kill_switch_events",
    )
    .await?;
    let mode_durable: HashSet<String> = column(
        &cluster,
        &db,
        "SELECT request_id::text FROM symbol_mode_events",
    )
    .await?;
    let lease_durable: HashSet<String> = column(
        &cluster,
        &db,
        "SELECT token::text FROM fencing_lease_events WHERE event = 'acquire' AND resource = 'drill-book'",
    )
    .await?;
    let mut controls = Vec::new();
    for (i, (name, durable)) in [
        ("kill switch", &kill_durable),
        ("symbol mode", &mode_durable),
        ("lease", &lease_durable),
    ]
    .into_iter()
    .enumerate()
    {
        let old = &acked_at_kill[i];
        let lost: Vec<&(String, Instant)> =
            old.iter().filter(|(k, _)| !durable.contains(k)).collect();
        let loss_window = lost
            .iter()
            .map(|(_, t)| killed_at.saturating_duration_since(*t))
            .max()
            .unwrap_or_default();
        // Everything acknowledged once the kill had completed is on the new timeline.
        let last_old = old.last().map(|(_, t)| *t).unwrap_or(killed_at);
        let first_new = acks[i]
            .all()
            .get(old.len())
            .map(|(_, t)| *t)
            .unwrap_or(promoted_at);
        controls.push(ControlReport {
            control: name,
            acked_before_kill: old.len(),
            lost: lost.len(),
            loss_window,
            first_write_after_promotion: first_new.saturating_duration_since(promoted_at),
            recovery_gap: first_new.saturating_duration_since(last_old),
        });
    }
    Ok(DrillReport {
        synchronous: config.synchronous,
        detection,
        promotion,
        controls,
        timeline,
    })
}

async fn column(cluster: &Cluster, db: &str, sql: &str) -> Result<HashSet<String>, BoxError> {
    let node = cluster.replica().ok_or("no replica")?;
    Ok(node
        .query(db, sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}
