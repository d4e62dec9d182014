//! Prometheus exposition: one process-wide recorder whose latencies are histograms in
//! seconds (aggregatable across pods), a `# HELP` line for every metric the crates
//! record, counters registered at zero, and gauges refreshed at scrape time
//! (`pg_pool_*` per store, `health_status` per component).
//!
//! Label spelling: `component` / `store` carry the health component names
//! (`kill_switch`, `symbol_mode`, `fencing`).

use crate::health::{ComponentStatus, HealthRegistry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Histogram buckets (seconds) of every `*_seconds` metric: 0.5 ms … 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once (later calls return the same
/// handle; `None` when another recorder was installed first) and describes every
/// metric of failover-core.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// `# HELP` text of failover-core's metrics, and its label-complete counters at zero.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    crate::audit_log::describe_metrics();
    describe_counter!(
        "approvals_break_glass_total",
        "Relaxations that required a second person's approval and were applied at once by breaking the glass, by action; each waits in the review until a second supervisor acknowledges it"
    );
    for action in crate::approvals::ACTIONS
        .into_iter()
        .chain([crate::approvals::WAIVE_ACTION])
    {
        metrics::counter!("approvals_break_glass_total", "action" => action).absolute(0);
    }
    describe_counter!(
        "failover_history_diverged_total",
        "Times a handle found its position lost from the store's history after a failover and adopted the store's state, by component"
    );
    describe_counter!(
        "failover_pg_attempts_total",
        "PostgreSQL operation attempts, by component and op"
    );
    describe_counter!(
        "failover_pg_retries_total",
        "PostgreSQL operation attempts that were retries, by component and op"
    );
    describe_counter!(
        "failover_pg_timeouts_total",
        "PostgreSQL operations that exceeded their timeout, by component and op"
    );
    describe_counter!(
        "failover_pg_errors_total",
        "PostgreSQL operations that failed after retries, by component, op and error class"
    );
    describe_counter!(
        "failover_pg_failovers_total",
        "Times a pool moved to another server (host change or DSN swap), by component and cause"
    );
    describe_counter!(
        "failover_pg_connects_total",
        "PostgreSQL connection attempts, by component and outcome"
    );
    describe_histogram!(
        "failover_pg_operation_seconds",
        Unit::Seconds,
        "Latency of PostgreSQL operations including retries, by component and op"
    );
    describe_gauge!("pg_pool_size", "Connections in the pool now, by store");
    describe_gauge!(
        "pg_pool_available",
        "Idle connections ready for use, by store"
    );
    describe_gauge!(
        "pg_pool_waiting",
        "Callers waiting for a connection, by store"
    );
    describe_gauge!("pg_pool_max", "Configured maximum pool size, by store");
    describe_gauge!(
        "health_status",
        "Health of each component: 0 operational, 1 degraded, 2 failed"
    );
    metrics::describe_gauge!(
        "failover_push_connected",
        "1 while the component's changes arrive by push (its LISTEN connection works), 0 while it polls only, by component"
    );
    describe_counter!(
        "admin_auth_refusals_total",
        "Admin requests refused by authentication (401) or role (403), by reason"
    );
    for reason in super::auth::REFUSAL_REASONS {
        metrics::counter!("admin_auth_refusals_total", "reason" => *reason).absolute(0);
    }
    describe_counter!(
        "auth_fail_total",
        "Failed admin authentications, by reason: missing, malformed, unknown_token, unknown_certificate (401, counted by the per-address throttle) and forbidden (403, a known caller lacking the role)"
    );
    for reason in super::auth::AUTH_FAIL_REASONS {
        metrics::counter!("auth_fail_total", "reason" => *reason).absolute(0);
    }
    describe_counter!(
        "auth_throttled_total",
        "Admin requests refused with 429 because their client address had too many failed authentications"
    );
    metrics::counter!("auth_throttled_total").absolute(0);
    describe_replay_metrics();
}

/// Every `outcome` label of `replay_detect_total`: `replayed` (a request id already
/// applied, not applied again), `superseded` (a request overtaken by a newer change
/// of the same state) and `request_reused` (a request id reused for a different
/// change, refused).
pub const REPLAY_OUTCOMES: &[&str] = &["replayed", "superseded", "request_reused"];

/// `# HELP` of `replay_detect_total{outcome}` (the stores count it) and its counters
/// at zero for every outcome of [`REPLAY_OUTCOMES`], so that `/metrics` shows it
/// before the first replay. [`describe`] calls it.
pub fn describe_replay_metrics() {
    metrics::describe_counter!(
        "replay_detect_total",
        "Change requests detected as replays by the stores, by outcome: replayed (request id already applied, not applied again), superseded (overtaken by a newer change), request_reused (request id reused for a different change, refused)"
    );
    for outcome in REPLAY_OUTCOMES {
        metrics::counter!("replay_detect_total", "outcome" => *outcome).absolute(0);
    }
}

/// Registers the counters of one pool component at zero, so that dashboards and
/// `rate()` see them before the first failure.
pub fn register_component(component: &'static str) {
    for cause in ["dsn_swap", "host_change"] {
        metrics::counter!("failover_pg_failovers_total", "component" => component, "cause" => cause)
            .absolute(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("failover_pg_connects_total", "component" => component, "outcome" => outcome)
            .absolute(0);
    }
}

/// A scrape-time collector: sets `pg_pool_{size,available,waiting,max}{store}`.
#[cfg(feature = "postgres")]
pub fn pool_gauges(
    store: &'static str,
    pool: crate::postgres::PgPool,
) -> impl Fn() + Send + Sync + 'static {
    register_component(pool.component());
    move || {
        let (size, available, waiting) = pool.status();
        metrics::gauge!("pg_pool_size", "store" => store).set(size as f64);
        metrics::gauge!("pg_pool_available", "store" => store).set(available as f64);
        metrics::gauge!("pg_pool_waiting", "store" => store).set(waiting as f64);
        metrics::gauge!("pg_pool_max", "store" => store).set(pool.settings().pool_size() as f64);
    }
}

/// A scrape-time collector: sets `health_status{component}` (0 operational,
/// 1 degraded, 2 failed).
pub fn health_gauges(health: HealthRegistry) -> impl Fn() + Send + Sync + 'static {
    move || {
        for c in health.readiness().components {
            let v = match c.status {
                ComponentStatus::Operational => 0.0,
                ComponentStatus::Degraded => 1.0,
                ComponentStatus::Failed => 2.0,
            };
            if let Some(push) = c.push {
                metrics::gauge!("failover_push_connected", "component" => c.name.clone())
                    .set(if push { 1.0 } else { 0.0 });
            }
            metrics::gauge!("health_status", "component" => c.name).set(v);
        }
    }
}
