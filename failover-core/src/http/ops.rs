//! The probe and metrics routes: open (no authentication), for load balancers,
//! orchestrators and Prometheus.

use super::metrics::health_gauges;
use crate::health::HealthRegistry;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

type Collector = Arc<dyn Fn() + Send + Sync>;

/// `/healthz`, `/health`, `/ready` (readiness of every component: 200 when ready,
/// 503 when any component is `failed`), `/livez` (the process answers: always 200)
/// and `/metrics` (Prometheus text; collectors refresh gauges first).
#[derive(Clone)]
pub struct Ops {
    health: HealthRegistry,
    prometheus: Option<PrometheusHandle>,
    collectors: Vec<Collector>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("health", &self.health)
            .field("prometheus", &self.prometheus.is_some())
            .field("collectors", &self.collectors.len())
            .finish()
    }
}

impl Ops {
    /// Probes over `health`; `/metrics` answers 404 until a recorder is given.
    pub fn new(health: HealthRegistry) -> Self {
        let collectors: Vec<Collector> = vec![Arc::new(health_gauges(health.clone()))];
        Self {
            health,
            prometheus: None,
            collectors,
        }
    }

    /// Renders `/metrics` with this handle (see [`install_prometheus`](super::metrics::install_prometheus)).
    #[must_use]
    pub fn with_prometheus(mut self, handle: Option<PrometheusHandle>) -> Self {
        self.prometheus = handle;
        self
    }

    /// Runs `collector` before each scrape (to refresh gauges).
    #[must_use]
    pub fn with_collector(mut self, collector: impl Fn() + Send + Sync + 'static) -> Self {
        self.collectors.push(Arc::new(collector));
        self
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(readiness))
            .route("/health", get(readiness))
            .route("/ready", get(readiness))
            .route(
                "/livez",
                get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
            )
            .route("/metrics", get(metrics_text))
            .with_state(Arc::new(self))
    }
}

async fn readiness(State(ops): State<Arc<Ops>>) -> Response {
    let readiness = ops.health.readiness();
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    let Some(handle) = &ops.prometheus else {
        return super::ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder installed: call failover_core::http::metrics::install_prometheus() at start-up",
        )
        .into_response();
    };
    for collect in &ops.collectors {
        collect();
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
