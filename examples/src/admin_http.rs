//! The admin HTTP API an operator uses during an incident (axum).
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | readiness with every component (`kill_switch` …); 200 when ready, 503 when any component failed |
//! | `GET /admin/kill-switch` | the persisted kill switch state, read from the store, plus what the hot path answers |
//! | `POST /admin/kill-switch/engage` | body `{"actor", "reason", "ticket"?, "request_id"?}` |
//! | `POST /admin/kill-switch/disengage` | same body; `ticket` required |
//! | `GET /admin/symbols/{symbol}/mode` | the symbol's own, global and effective mode |
//! | `PUT /admin/symbols/{symbol}/mode` | `SetSymbolMode`: body `{"mode", "actor", "reason", "ticket"?, "request_id"?}` |
//! | `POST /admin/symbols/{symbol}/cancel-all` | `CancelAll(symbol)`: audit body |
//! | `POST /admin/withdrawals/halt` | `WithdrawalsHalt`: body `{"on", "actor", "reason", "ticket"?}`; lifting needs a ticket |
//! | `GET /metrics` | Prometheus text of every metric the crates record |
//!
//! A bad request gets a 4xx with `{"error": {"code", "message"}}` naming the problem,
//! and changes nothing. A store that cannot be reached gives 503.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use failover_core::{Audit, HealthRegistry};
use killswitch::{KillSwitch, KillSwitchStore, Trading};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use symbol_mode::{SymbolMode, SymbolModeStore, SymbolModes};
use uuid::Uuid;

/// What the routes need.
#[derive(Clone)]
pub struct AdminState {
    /// The kill switch store (source of truth).
    pub kill_store: Arc<dyn KillSwitchStore>,
    /// The hot-path handle, for what the order path answers now.
    pub kill_switch: KillSwitch,
    /// The symbol mode store (source of truth).
    pub mode_store: Arc<dyn SymbolModeStore>,
    /// The hot-path symbol mode snapshot.
    pub modes: SymbolModes,
    /// Every component's health.
    pub health: HealthRegistry,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
}

/// The request body of every audited action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditBody {
    /// Who acts, e.g. `ops:alice`.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Incident or change ticket; required to relax safety.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key: resending the same id is applied once.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

/// Body of `PUT /admin/symbols/{symbol}/mode`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModeBody {
    /// `NORMAL`, `CANCEL_ONLY`, `SOFT_HALT` or `HARD_HALT`.
    pub mode: SymbolMode,
    /// Who acts.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Ticket; required to relax safety.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

/// Body of `POST /admin/withdrawals/halt`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalsBody {
    /// `true` halts withdrawals, `false` lifts the halt (ticket required).
    pub on: bool,
    /// Who acts.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Ticket; required to lift the halt.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

fn audit_of(actor: &str, reason: &str, ticket: &Option<String>, request_id: Option<Uuid>) -> Audit {
    let mut audit = Audit::new(actor, reason);
    if let Some(t) = ticket {
        audit = audit.with_ticket(t);
    }
    if let Some(id) = request_id {
        audit = audit.with_request_id(id);
    }
    audit
}

impl AuditBody {
    fn audit(&self) -> Audit {
        audit_of(&self.actor, &self.reason, &self.ticket, self.request_id)
    }
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<killswitch::Error> for ApiError {
    fn from(e: killswitch::Error) -> Self {
        use killswitch::Error as E;
        let (status, code) = match &e {
            E::InvalidAudit(failover_core::AuditError::TicketRequired { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "ticket_required")
            }
            E::InvalidAudit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_audit"),
            E::RequestReused { .. } => (StatusCode::CONFLICT, "request_reused"),
            E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            E::SchemaMissing { .. } => (StatusCode::SERVICE_UNAVAILABLE, "schema_missing"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<symbol_mode::Error> for ApiError {
    fn from(e: symbol_mode::Error) -> Self {
        use symbol_mode::Error as E;
        let (status, code) = match &e {
            E::InvalidSymbol(_) => (StatusCode::BAD_REQUEST, "invalid_symbol"),
            E::InvalidAudit(failover_core::AuditError::TicketRequired { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "ticket_required")
            }
            E::InvalidAudit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_audit"),
            E::TransitionForbidden { .. } => (StatusCode::CONFLICT, "transition_forbidden"),
            E::RequestReused { .. } => (StatusCode::CONFLICT, "request_reused"),
            E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            E::SchemaMissing { .. } => (StatusCode::SERVICE_UNAVAILABLE, "schema_missing"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// `Json<T>` whose rejection is a JSON 400 that names the problem.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{}; send a JSON body like {{\"actor\":\"ops:alice\",\"reason\":\"…\",\"ticket\":\"INC-1\"}}",
                    rejection.body_text()
                ),
            )),
        }
    }
}

/// The router with every route.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/admin/kill-switch", get(kill_switch_get))
        .route(
            "/admin/kill-switch/engage",
            post(
                |State(s): State<AdminState>, JsonBody(b): JsonBody<AuditBody>| {
                    kill_switch_change(s, b, killswitch::Action::Engage)
                },
            ),
        )
        .route(
            "/admin/kill-switch/disengage",
            post(
                |State(s): State<AdminState>, JsonBody(b): JsonBody<AuditBody>| {
                    kill_switch_change(s, b, killswitch::Action::Disengage)
                },
            ),
        )
        .route(
            "/admin/symbols/{symbol}/mode",
            get(symbol_mode_get).put(symbol_mode_put),
        )
        .route(
            "/admin/symbols/{symbol}/cancel-all",
            post(symbol_cancel_all),
        )
        .route("/admin/withdrawals/halt", post(withdrawals_halt))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let readiness = state.health.readiness();
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

fn trading_words(t: Trading) -> (&'static str, Option<String>) {
    match t {
        Trading::Allowed => ("allowed", None),
        Trading::Halted(h) => ("halted", Some(h.to_string())),
    }
}

async fn kill_switch_get(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let persisted = state.kill_store.load().await?;
    let (trading, halt) = trading_words(state.kill_switch.trading());
    let body = serde_json::json!({
        "state": persisted,
        "hot_path": { "trading": trading, "halt": halt },
        "health": state.kill_switch.health(),
    });
    Ok(axum::Json(body).into_response())
}

async fn kill_switch_change(
    state: AdminState,
    body: AuditBody,
    action: killswitch::Action,
) -> Result<Response, ApiError> {
    let audit = body.audit();
    let s = match action {
        killswitch::Action::Engage => state.kill_store.engage(&audit).await?,
        killswitch::Action::Disengage => state.kill_store.disengage(&audit).await?,
    };
    tracing::warn!(%action, actor = %body.actor, reason = %body.reason, version = s.version, "kill switch changed via admin API");
    Ok(axum::Json(s).into_response())
}

async fn symbol_mode_get(
    State(state): State<AdminState>,
    Path(symbol): Path<String>,
) -> Result<Response, ApiError> {
    symbol_mode::validate_symbol(&symbol).map_err(symbol_mode::Error::from)?;
    let own = state.mode_store.symbol_state(&symbol).await?;
    let venue = state.mode_store.venue().await?;
    let own_mode = own.as_ref().map_or(SymbolMode::Normal, |s| s.mode);
    let body = serde_json::json!({
        "symbol": symbol,
        "mode": own_mode,
        "global": venue.global,
        "effective": SymbolMode::effective(venue.global, own_mode),
        "hot_path": state.modes.mode(&symbol),
        "last_change": own,
    });
    Ok(axum::Json(body).into_response())
}

async fn symbol_mode_put(
    State(state): State<AdminState>,
    Path(symbol): Path<String>,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Response, ApiError> {
    let event = state
        .mode_store
        .set_symbol_mode(
            &symbol,
            body.mode,
            &audit_of(&body.actor, &body.reason, &body.ticket, body.request_id),
        )
        .await?;
    tracing::warn!(%symbol, mode = %body.mode, actor = %body.actor, "SetSymbolMode via admin API");
    Ok(axum::Json(event).into_response())
}

async fn symbol_cancel_all(
    State(state): State<AdminState>,
    Path(symbol): Path<String>,
    JsonBody(body): JsonBody<AuditBody>,
) -> Result<Response, ApiError> {
    let command = state.mode_store.cancel_all(&symbol, &body.audit()).await?;
    tracing::warn!(%symbol, actor = %body.actor, seq = command.seq, "CancelAll via admin API");
    Ok(axum::Json(command).into_response())
}

async fn withdrawals_halt(
    State(state): State<AdminState>,
    JsonBody(body): JsonBody<WithdrawalsBody>,
) -> Result<Response, ApiError> {
    let event = state
        .mode_store
        .withdrawals_halt(
            body.on,
            &audit_of(&body.actor, &body.reason, &body.ticket, body.request_id),
        )
        .await?;
    tracing::warn!(on = body.on, actor = %body.actor, "WithdrawalsHalt via admin API");
    Ok(axum::Json(event).into_response())
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    match &state.prometheus {
        Some(handle) => (
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder installed",
        )
        .into_response(),
    }
}

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
}
