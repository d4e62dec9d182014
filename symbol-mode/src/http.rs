//! The symbol-mode admin routes (feature `http`), for a service to mount:
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /admin/symbols` | viewer | the registered symbols |
//! | `PUT /admin/symbols/{symbol}` | operator | registers the symbol (audited): body `{"reason", "ticket"?, "request_id"?}`; 201 when new, 200 when registered already, 409 `symbol_conflict` for another spelling of a registered one |
//! | `GET /admin/symbols/{symbol}/mode` | viewer | the symbol's own, global and effective mode |
//! | `PUT /admin/symbols/{symbol}/mode` | operator to tighten, supervisor to relax | `SetSymbolMode`: body `{"mode", "reason", "ticket"?, "request_id"?}` |
//! | `POST /admin/symbols/{symbol}/cancel-all` | operator | `CancelAll(symbol)`: body `{"reason", "ticket"?, "request_id"?}` |
//! | `GET /admin/global-mode` | viewer | global mode, withdrawals halted, version |
//! | `PUT /admin/global-mode` | operator to tighten, supervisor to relax | body `{"mode", "reason", "ticket"?, "request_id"?}` |
//! | `GET /admin/withdrawals` | viewer | whether withdrawals are halted |
//! | `POST /admin/withdrawals/halt` | operator to halt, supervisor to lift | `WithdrawalsHalt`: body `{"on", "reason", "ticket"?, "request_id"?}` |
//! | `GET /admin/strategies` | viewer | whether new strategy activations are halted firm-wide (`new_strategies_disabled`), who set it (`updated_by`, `reason`, `ticket`, `updated_at`), its `position` and `ETag`, and `hot_path`: what this process's handle answers |
//! | `POST /admin/strategies/disable-new` | operator | `NewStrategiesHalt(on)`: halts new strategy activations; body `{"reason", "ticket"?, "request_id"?}` |
//! | `POST /admin/strategies/enable-new` | supervisor | `NewStrategiesHalt(off)`: enables them again; body `{"reason", "ticket", "request_id"?, "break_glass"?}`, `If-Match` of `GET /admin/strategies` |
//! | `GET /admin/throttles` | viewer | every symbol that has or had an order-rate throttle |
//! | `GET /admin/symbols/{symbol}/throttle` | viewer | the symbol's throttle (`limit` null: none) and its `ETag` |
//! | `PUT /admin/symbols/{symbol}/throttle` | operator to set or lower, supervisor to raise or clear | `SetThrottle`: body `{"per_second", "burst"?, "reason", "ticket"?, "request_id"?}`; `per_second` null clears |
//! | `GET /admin/symbol-modes/history?limit=&before=` | viewer | audit events newest first; `next` is the cursor of the following page |
//! | `GET /admin/modes/receipt?position=&live_within=` | viewer | which live processes applied `position` (confirmed, pending, aged out), when built [`with_receipts`](SymbolModeRoutes::with_receipts) |
//!
//! Whether a command tightens or relaxes is decided by the store inside the write,
//! against the mode it locks — never from a read made here. Relaxing needs the
//! supervisor role, a ticket, and `If-Match: "<position>"` with the `ETag` of the
//! GET the decision was made on (the symbol's, the global mode's, the withdrawals
//! halt's or the new-strategies halt's own position): 403 `forbidden` for an operator whose request would relax
//! (also when another change made it one in between), 428 without `If-Match`, 412
//! naming the change in between when the state moved. Tightening never waits. A
//! mode change or `CancelAll` on a symbol that is not registered answers 404
//! `unknown_symbol`, naming the registered near match. A request sent again with the
//! same `request_id` answers its original result with `Idempotent-Replayed: true`
//! while it is in force, 409 `superseded` after a later change, 409 `request_reused`
//! for another caller or command. The audit actor is the authenticated caller; a
//! body `actor` is refused with 400 `actor_not_accepted`.
//!
//! Four eyes ([`failover_core::approvals`]): while a relaxation's action
//! (`mode.relax`, `global-mode.relax`, `withdrawals.lift`, `throttle.relax`,
//! `strategies.enable-new`) requires
//! approval, a supervisor's relaxation answers 202 with the pending request and
//! changes nothing, unless the body says `"break_glass": true`.

use crate::{
    AuditEvent, Error, Position, SymbolMode, SymbolModeStore, SymbolModes, SymbolRefusal, Throttle,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use failover_core::http::{
    applied, history_page, with_etag, ApiError, Caller, HistoryQuery, IfMatch, JsonBody, Role,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// Body of `CancelAll`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// Why.
    pub reason: String,
    /// Ticket (optional: `CancelAll` tightens).
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

/// Body of the mode routes: `mode` is `NORMAL`, `CANCEL_ONLY`, `SOFT_HALT` or
/// `HARD_HALT`.
pub type ModeBody = failover_core::http::ModeBody<SymbolMode>;

/// Body of `POST /admin/withdrawals/halt`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalsBody {
    /// `true` halts withdrawals, `false` lifts the halt.
    pub on: bool,
    /// Why.
    pub reason: String,
    /// Ticket; required to lift.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Relax at once although a second supervisor's approval is required:
    /// audited, counted and listed for review until another supervisor
    /// acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

/// Body of `POST /admin/strategies/enable-new`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnableStrategiesBody {
    /// Why.
    pub reason: String,
    /// Ticket; required (enabling again relaxes).
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Relax at once although a second supervisor's approval is required:
    /// audited, counted and listed for review until another supervisor
    /// acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

/// Body of `PUT /admin/symbols/{symbol}/throttle`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleBody {
    /// New orders a second; `null` clears the throttle. Required: a body without it
    /// is refused rather than read as "clear".
    #[serde(deserialize_with = "present")]
    pub per_second: Option<u32>,
    /// Orders at once (default: `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Why.
    pub reason: String,
    /// Ticket; required to raise or clear.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Relax at once although a second supervisor's approval is required:
    /// audited, counted and listed for review until another supervisor
    /// acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

/// A field that must be sent, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)
}

/// What the routes need.
#[derive(Debug, Clone)]
pub struct SymbolModeRoutes {
    store: Arc<dyn SymbolModeStore>,
    modes: Option<SymbolModes>,
    receipts: Option<failover_core::Receipts>,
}

impl SymbolModeRoutes {
    /// Routes over `store`.
    pub fn new(store: Arc<dyn SymbolModeStore>) -> Self {
        Self {
            store,
            modes: None,
            receipts: None,
        }
    }

    /// Also answers `GET /admin/modes/receipt?position=…` from `receipts`.
    #[must_use]
    pub fn with_receipts(mut self, receipts: failover_core::Receipts) -> Self {
        self.receipts = Some(receipts);
        self
    }

    /// Also shows what this process's hot path answers.
    #[must_use]
    pub fn with_handle(mut self, modes: SymbolModes) -> Self {
        self.modes = Some(modes);
        self
    }

    /// The router (state applied; merge or nest it).
    pub fn router(self) -> Router {
        let receipt = self.receipts.clone().map(|r| {
            let path = "/admin/modes/receipt";
            failover_core::receipt::http::router(
                path,
                r,
                crate::HEALTH_COMPONENT,
                "",
                "the symbol modes",
            )
        });
        Router::new()
            .route("/admin/symbols", get(symbols_list))
            .route("/admin/symbols/{symbol}", axum::routing::put(register))
            .route(
                "/admin/symbols/{symbol}/mode",
                get(symbol_get).put(symbol_put),
            )
            .route("/admin/symbols/{symbol}/cancel-all", post(cancel_all))
            .route("/admin/global-mode", get(global_get).put(global_put))
            .route("/admin/withdrawals", get(withdrawals_get))
            .route("/admin/withdrawals/halt", post(withdrawals))
            .route("/admin/strategies", get(strategies_get))
            .route("/admin/strategies/disable-new", post(strategies_disable))
            .route("/admin/strategies/enable-new", post(strategies_enable))
            .route("/admin/throttles", get(throttles_list))
            .route(
                "/admin/symbols/{symbol}/throttle",
                get(throttle_get).put(throttle_put),
            )
            .route("/admin/symbol-modes/history", get(history))
            .with_state(Arc::new(self))
            .merge(receipt.unwrap_or_default())
    }
}

type S = State<Arc<SymbolModeRoutes>>;

/// The audit, breaking the glass when the body asks to.
fn glass(audit: failover_core::Audit, break_glass: bool) -> failover_core::Audit {
    if break_glass {
        audit.breaking_glass()
    } else {
        audit
    }
}

async fn symbol_get(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a symbol mode")?;
    crate::validate_symbol(&symbol).map_err(Error::from)?;
    let own = s.store.symbol_state(&symbol).await?;
    let venue = s.store.venue().await?;
    let own_mode = own.as_ref().map_or(SymbolMode::Normal, |s| s.mode);
    let position = own.as_ref().map_or(Position::ZERO, |s| s.position);
    let body = serde_json::json!({
        "symbol": symbol,
        "mode": own_mode,
        "global": venue.global,
        "effective": SymbolMode::effective(venue.global, own_mode),
        "hot_path": s.modes.as_ref().map(|m| m.mode(&symbol)),
        "last_change": own,
        "position": position,
    });
    Ok(with_etag(position, &body))
}

async fn symbols_list(State(s): S, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the symbol registry")?;
    let symbols = s.store.symbols().await?;
    Ok(axum::Json(serde_json::json!({ "symbols": symbols })).into_response())
}

async fn register(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "register a symbol")?;
    let audit = caller.audit(&body.reason, body.ticket.as_deref(), body.request_id);
    match s.store.register_symbol(&symbol, &audit).await? {
        Some(event) => {
            tracing::info!(%symbol, actor = caller.actor(), "symbol registered via admin API");
            let mut response =
                axum::Json(serde_json::json!({"registered": true, "event": event})).into_response();
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        }
        None => Ok(
            axum::Json(serde_json::json!({"registered": false, "symbol": symbol})).into_response(),
        ),
    }
}

async fn symbol_put(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
    if_match: IfMatch,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "set a symbol mode")?;
    let audit = body.audit(&caller, if_match);
    let event = match s.store.set_symbol_mode(&symbol, body.mode, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !event.replayed {
        tracing::warn!(%symbol, mode = %body.mode, actor = caller.actor(), "SetSymbolMode via admin API");
    }
    let position = event.position;
    Ok(applied(event, position))
}

async fn cancel_all(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "cancel all orders of a symbol")?;
    let audit = caller.audit(&body.reason, body.ticket.as_deref(), body.request_id);
    let command = s.store.cancel_all(&symbol, &audit).await?;
    if !command.replayed {
        tracing::warn!(%symbol, actor = caller.actor(), seq = command.seq, "CancelAll via admin API");
    }
    let position = Position(command.seq);
    Ok(applied(command, position))
}

async fn global_get(State(s): S, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the global mode")?;
    let venue = s.store.venue().await?;
    Ok(with_etag(venue.global_position, &venue))
}

async fn global_put(
    State(s): S,
    caller: Caller,
    if_match: IfMatch,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "set the global mode")?;
    let audit = body.audit(&caller, if_match);
    let event = match s.store.set_global_mode(body.mode, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !event.replayed {
        tracing::warn!(mode = %body.mode, actor = caller.actor(), "global mode set via admin API");
    }
    let position = event.position;
    Ok(applied(event, position))
}

async fn withdrawals_get(State(s): S, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the withdrawals halt")?;
    let venue = s.store.venue().await?;
    let body = serde_json::json!({
        "withdrawals_halted": venue.withdrawals_halted,
        "position": venue.withdrawals_position,
    });
    Ok(with_etag(venue.withdrawals_position, &body))
}

async fn withdrawals(
    State(s): S,
    caller: Caller,
    if_match: IfMatch,
    JsonBody(body): JsonBody<WithdrawalsBody>,
) -> Result<Response, ApiError> {
    if body.on {
        caller.require(Role::Operator, "halt withdrawals")?;
    } else {
        caller.require(Role::Supervisor, "lift the withdrawals halt")?;
    }
    let audit = glass(
        if_match.apply(caller.audit(&body.reason, body.ticket.as_deref(), body.request_id)),
        body.break_glass,
    );
    let event = match s.store.withdrawals_halt(body.on, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !event.replayed {
        tracing::warn!(
            on = body.on,
            actor = caller.actor(),
            "WithdrawalsHalt via admin API"
        );
    }
    let position = event.position;
    Ok(applied(event, position))
}

async fn strategies_get(State(s): S, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the new-strategies halt")?;
    let state = s.store.new_strategies().await?;
    let mut body = serde_json::to_value(&state).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        )
    })?;
    body["hot_path"] = serde_json::json!(s
        .modes
        .as_ref()
        .map(|m| serde_json::json!({ "may_activate_strategy": m.may_activate_strategy() })));
    Ok(with_etag(state.position, &body))
}

async fn strategies_disable(
    State(s): S,
    caller: Caller,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "halt new strategy activations")?;
    let audit = caller.audit(&body.reason, body.ticket.as_deref(), body.request_id);
    let event = s.store.new_strategies_halt(true, &audit).await?;
    if !event.replayed {
        tracing::warn!(actor = caller.actor(), "NewStrategiesHalt on via admin API");
    }
    let position = event.position;
    Ok(applied(event, position))
}

async fn strategies_enable(
    State(s): S,
    caller: Caller,
    if_match: IfMatch,
    JsonBody(body): JsonBody<EnableStrategiesBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Supervisor, "enable new strategy activations again")?;
    let audit = glass(
        if_match.apply(caller.audit(&body.reason, body.ticket.as_deref(), body.request_id)),
        body.break_glass,
    );
    let event = match s.store.new_strategies_halt(false, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !event.replayed {
        tracing::warn!(
            actor = caller.actor(),
            "NewStrategiesHalt off via admin API"
        );
    }
    let position = event.position;
    Ok(applied(event, position))
}

async fn throttles_list(State(s): S, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the throttles")?;
    let throttles = s.store.throttles().await?;
    Ok(axum::Json(serde_json::json!({ "throttles": throttles })).into_response())
}

async fn throttle_get(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a throttle")?;
    crate::validate_symbol(&symbol).map_err(Error::from)?;
    let known = s.store.symbols().await?;
    if !known.iter().any(|r| r.symbol == symbol) {
        return Err(Error::Control(SymbolRefusal::UnknownSymbol {
            did_you_mean: crate::near_match(&symbol, known.iter().map(|r| r.symbol.as_str())),
            symbol,
        })
        .into());
    }
    let state = s
        .store
        .throttles()
        .await?
        .into_iter()
        .find(|t| t.symbol == symbol);
    let position = state.as_ref().map_or(Position::ZERO, |t| t.position);
    let body = serde_json::json!({
        "symbol": symbol,
        "limit": state.as_ref().and_then(|t| t.limit),
        "last_change": state,
        "position": position,
    });
    Ok(with_etag(position, &body))
}

async fn throttle_put(
    State(s): S,
    caller: Caller,
    Path(symbol): Path<String>,
    if_match: IfMatch,
    JsonBody(body): JsonBody<ThrottleBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "set a throttle")?;
    let limit = match (body.per_second, body.burst) {
        (Some(rate), burst) => Some(Throttle::new(rate, burst.unwrap_or(rate)).map_err(Error::from)?),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_throttle",
                "refused, nothing changed: a burst without a rate; send per_second with it, or per_second null and no burst to clear the throttle".to_owned(),
            ))
        }
    };
    let audit = glass(
        if_match.apply(caller.audit(&body.reason, body.ticket.as_deref(), body.request_id)),
        body.break_glass,
    );
    let event = match s.store.set_throttle(&symbol, limit, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !event.replayed {
        tracing::warn!(%symbol, limit = %crate::throttle::describe(limit), actor = caller.actor(), "SetThrottle via admin API");
    }
    let position = event.position;
    Ok(applied(event, position))
}

#[derive(Serialize)]
struct Page {
    events: Vec<AuditEvent>,
    next: Option<u64>,
}

async fn history(
    State(s): S,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the symbol mode history")?;
    let (events, next) =
        history_page(q, |e: &AuditEvent| e.position.0, |n| s.store.history(n)).await?;
    Ok(axum::Json(Page { events, next }).into_response())
}

/// `# HELP` of the symbol-mode gauges.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "symbol_mode_effective_symbols",
        "Symbols with an own entry, by effective mode (global mode applied)"
    );
    metrics::describe_gauge!(
        "symbol_mode_global",
        "1 for the global mode in force, else 0, by mode"
    );
    metrics::describe_gauge!(
        "symbol_mode_withdrawals_halted",
        "1 when withdrawals are halted"
    );
    metrics::describe_gauge!(
        "symbol_mode_new_strategies_disabled",
        "1 when new strategy activations are halted firm-wide"
    );
    metrics::describe_counter!(
        "symbol_mode_settlement_lag_verdicts_total",
        "Settlement-lag policy verdicts, by verdict"
    );
    metrics::describe_gauge!(
        "symbol_mode_throttle_per_second",
        "The order-rate throttle in force, new orders a second per process, by symbol (0: none)"
    );
    metrics::describe_gauge!(
        "symbol_mode_throttle_burst",
        "The burst of the order-rate throttle in force, by symbol (0: none)"
    );
    metrics::describe_counter!(
        "symbol_mode_throttled_total",
        "New orders this process's throttle refused, by symbol"
    );
}

/// A scrape-time collector of the effective-mode counts per mode, the global mode,
/// the withdrawals halt and the new-strategies halt, from the hot-path snapshot.
pub fn gauges(modes: SymbolModes) -> impl Fn() + Send + Sync + 'static {
    describe_metrics();
    move || {
        let snapshot = modes.snapshot();
        let global = snapshot.global();
        let mut counts = [0usize; 4];
        for (_, mode) in snapshot.iter() {
            counts[SymbolMode::effective(global, mode).severity() as usize] += 1;
        }
        for mode in SymbolMode::ALL {
            metrics::gauge!("symbol_mode_effective_symbols", "mode" => mode.as_str())
                .set(counts[mode.severity() as usize] as f64);
            metrics::gauge!("symbol_mode_global", "mode" => mode.as_str()).set(if mode == global {
                1.0
            } else {
                0.0
            });
        }
        metrics::gauge!("symbol_mode_withdrawals_halted").set(if snapshot.withdrawals_halted() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("symbol_mode_new_strategies_disabled").set(
            if snapshot.new_strategies_disabled() {
                1.0
            } else {
                0.0
            },
        );
        for (symbol, refused) in modes.throttle_refusals() {
            let limit = snapshot.throttle(&symbol);
            metrics::gauge!("symbol_mode_throttle_per_second", "symbol" => symbol.clone())
                .set(limit.map_or(0.0, |t| f64::from(t.per_second())));
            metrics::gauge!("symbol_mode_throttle_burst", "symbol" => symbol.clone())
                .set(limit.map_or(0.0, |t| f64::from(t.burst())));
            metrics::counter!("symbol_mode_throttled_total", "symbol" => symbol).absolute(refused);
        }
    }
}
