//! The kill switch's admin routes (feature `http`), for a service to mount:
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /admin/kill-switch` | viewer | the persisted state (from the store), which server answered, and what the hot path answers with the age of its last read |
//! | `POST /admin/kill-switch/engage` | operator | body `{"reason", "ticket"?, "request_id"?}` |
//! | `POST /admin/kill-switch/disengage` | supervisor | same body; `ticket` required; `If-Match: "<position>"` from the GET's `ETag` required (428 without, 412 when the state moved since); 202 with the pending request while `kill-switch.disengage` requires a second supervisor's approval, unless `"break_glass": true` |
//! | `GET /admin/kill-switch/history?limit=&before=` | viewer | audit events newest first; `next` is the cursor of the following page |
//! | `GET /admin/kill-switch/receipt?position=&live_within=` | viewer | which live processes applied `position` (confirmed, pending, aged out), when built [`with_receipts`](KillSwitchRoutes::with_receipts) |
//!
//! `GET /admin/kill-switch` answers `ETag: "<position>"`. A command sent again with
//! the same `request_id` answers its original result with `Idempotent-Replayed: true`
//! while it is in force, 409 `superseded` after a later change, and 409
//! `request_reused` for another caller or action.
//!
//! The audit actor is the authenticated caller ([`Caller`]); a body `actor` is refused
//! with 400 `actor_not_accepted`. Mount the router behind
//! [`Authenticator::protect`](failover_core::http::Authenticator::protect).

use crate::{Action, Error, KillSwitch, KillSwitchEvent, KillSwitchStore, Trading};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use failover_core::http::{
    applied, history_page, with_etag, ApiError, Caller, HistoryQuery, IfMatch, JsonBody, Role,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;

/// The body of engage and disengage. There is no `actor`: it is the caller.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Why.
    pub reason: String,
    /// Incident or change ticket; required to disengage.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key: resending the same id is applied once.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Disengage at once although a second supervisor's approval is required:
    /// audited, counted and listed for review until another supervisor
    /// acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

/// What the routes need.
#[derive(Debug, Clone)]
pub struct KillSwitchRoutes {
    store: Arc<dyn KillSwitchStore>,
    handle: Option<KillSwitch>,
    #[cfg(feature = "postgres")]
    pool: Option<failover_core::postgres::PgPool>,
    receipts: Option<failover_core::Receipts>,
}

impl KillSwitchRoutes {
    /// Routes over `store`.
    pub fn new(store: Arc<dyn KillSwitchStore>) -> Self {
        Self {
            store,
            handle: None,
            #[cfg(feature = "postgres")]
            pool: None,
            receipts: None,
        }
    }

    /// Also answers `GET /admin/kill-switch/receipt?position=…` from `receipts`.
    #[must_use]
    pub fn with_receipts(mut self, receipts: failover_core::Receipts) -> Self {
        self.receipts = Some(receipts);
        self
    }

    /// Also shows what this process's hot path answers and how old its last read is.
    #[must_use]
    pub fn with_handle(mut self, handle: KillSwitch) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Also shows which PostgreSQL server answers (the pool of a Postgres store).
    #[cfg(feature = "postgres")]
    #[must_use]
    pub fn with_pool(mut self, pool: failover_core::postgres::PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The router (state applied; merge or nest it).
    pub fn router(self) -> Router {
        let receipt = self.receipts.clone().map(|r| {
            let path = "/admin/kill-switch/receipt";
            failover_core::receipt::http::router(
                path,
                r,
                crate::HEALTH_COMPONENT,
                "",
                "the kill switch",
            )
        });
        Router::new()
            .route("/admin/kill-switch", get(show))
            .route(
                "/admin/kill-switch/engage",
                post(
                    |State(s): State<Arc<Self>>,
                     caller: Caller,
                     if_match: IfMatch,
                     JsonBody(b): JsonBody<ChangeBody>| {
                        change(s, caller, if_match, b, Action::Engage)
                    },
                ),
            )
            .route(
                "/admin/kill-switch/disengage",
                post(
                    |State(s): State<Arc<Self>>,
                     caller: Caller,
                     if_match: IfMatch,
                     JsonBody(b): JsonBody<ChangeBody>| {
                        change(s, caller, if_match, b, Action::Disengage)
                    },
                ),
            )
            .route("/admin/kill-switch/history", get(history))
            .with_state(Arc::new(self))
            .merge(receipt.unwrap_or_default())
    }
}

pub(crate) fn age_seconds(at: Option<SystemTime>) -> Option<f64> {
    at.and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs_f64())
}

async fn show(
    State(s): State<Arc<KillSwitchRoutes>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the kill switch")?;
    let persisted = s.store.load().await?;
    let hot_path = s.handle.as_ref().map(|h| {
        let status = h.status();
        let (trading, halt) = match status.trading {
            Trading::Allowed => ("allowed", None),
            Trading::Halted(h) => ("halted", Some(h.to_string())),
        };
        serde_json::json!({
            "trading": trading,
            "halt": halt,
            "last_read_age_seconds": age_seconds(status.last_success),
            "last_error": status.last_error,
            "version": status.state.as_ref().map(|s| s.version),
            "position": status.state.as_ref().map(|s| s.position),
        })
    });
    #[cfg(feature = "postgres")]
    let answered_by = match &s.pool {
        Some(pool) => server_of(pool).await.ok(),
        None => None,
    };
    #[cfg(not(feature = "postgres"))]
    let answered_by: Option<String> = None;
    let body = serde_json::json!({
        "state": persisted,
        "answered_by": answered_by,
        "hot_path": hot_path,
        "health": s.handle.as_ref().map(KillSwitch::health),
    });
    Ok(with_etag(persisted.position, &body))
}

/// `host:port` of the server the pool reaches now.
#[cfg(feature = "postgres")]
async fn server_of(
    pool: &failover_core::postgres::PgPool,
) -> Result<String, failover_core::DbError> {
    let row = pool
        .query_one(
            "kill_switch.server",
            "SELECT coalesce(host(inet_server_addr()), 'local socket') || ':' || current_setting('port')",
            &[],
        )
        .await?;
    Ok(row.get::<_, String>(0))
}

async fn change(
    s: Arc<KillSwitchRoutes>,
    caller: Caller,
    if_match: IfMatch,
    body: ChangeBody,
    action: Action,
) -> Result<Response, ApiError> {
    match action {
        Action::Engage => caller.require(Role::Operator, "engage the kill switch")?,
        Action::Disengage => caller.require(Role::Supervisor, "disengage the kill switch")?,
    }
    let mut audit =
        if_match.apply(caller.audit(&body.reason, body.ticket.as_deref(), body.request_id));
    if body.break_glass {
        audit = audit.breaking_glass();
    }
    let result = match action {
        Action::Engage => s.store.engage(&audit).await,
        Action::Disengage => s.store.disengage(&audit).await,
    };
    let result = match result {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !result.replayed {
        tracing::warn!(%action, actor = caller.actor(), reason = %body.reason, ticket = ?body.ticket, position = %result.position, "kill switch changed via admin API");
    }
    let position = result.position;
    Ok(applied(result, position))
}

#[derive(Serialize)]
struct Page {
    events: Vec<KillSwitchEvent>,
    next: Option<u64>,
}

async fn history(
    State(s): State<Arc<KillSwitchRoutes>>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the kill switch history")?;
    let (events, next) = history_page(
        q,
        |e: &KillSwitchEvent| e.position.0,
        |n| s.store.history(n),
    )
    .await?;
    Ok(axum::Json(Page { events, next }).into_response())
}

/// `# HELP` of the kill switch gauges.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "kill_switch_engaged",
        "1 when the last state this process read is engaged, else 0"
    );
    metrics::describe_gauge!(
        "kill_switch_state_age_seconds",
        metrics::Unit::Seconds,
        "Age of the hot path's last successful read of the kill switch state"
    );
}

/// A scrape-time collector of `kill_switch_engaged` and `kill_switch_state_age_seconds`.
pub fn gauges(handle: KillSwitch) -> impl Fn() + Send + Sync + 'static {
    describe_metrics();
    move || {
        let status = handle.status();
        let engaged = status.state.as_ref().is_some_and(|s| s.engaged);
        metrics::gauge!("kill_switch_engaged").set(if engaged { 1.0 } else { 0.0 });
        if let Some(age) = age_seconds(status.last_success) {
            metrics::gauge!("kill_switch_state_age_seconds").set(age);
        }
    }
}
