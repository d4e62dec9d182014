//! The scopes' admin routes (feature `http`), for a service to mount:
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /admin/scopes?under=PATH` | viewer | every scope (or those under `PATH`) with its own and effective mode, and whether the kill switch (the root) is engaged |
//! | `PUT /admin/scopes/{path…}` | operator | creates the scope (audited): body `{"reason", "ticket"?, "request_id"?}`; 201 when new, 200 for the same request again; 409 `already_exists` for another request, 404 `parent_missing` without its parent, 409 `near_miss` for another spelling of a known path |
//! | `GET /admin/scope-modes/{path…}` | viewer | the scope's own mode, its effective mode and which node decides it, with `ETag: "<position>"` of the scope's own last change |
//! | `PUT /admin/scope-modes/{path…}` | operator to tighten, supervisor to relax | body `{"mode", "reason", "ticket"?, "request_id"?, "break_glass"?}`; a relaxation needs `If-Match` with the GET's `ETag` (428 without, 412 naming the change in between), a ticket, and goes from `HALTED` to `CANCEL_ONLY` first (409 `step_too_large`); 202 with the pending request while `scope.relax` requires a second supervisor's approval |
//! | `GET /admin/scope-history/{path…}?limit=&before=` | viewer | the scope's audit events, newest first; `next` is the cursor of the following page |
//!
//! A path is written with its slashes (`/admin/scope-modes/acme/eq/mm-1`). An unknown
//! path answers 404 `unknown_scope` naming the known one it resembles. Whether a
//! command tightens or relaxes is decided by the store inside the write, against the
//! mode it locks. The audit actor is the authenticated caller; a body `actor` is
//! refused with 400 `actor_not_accepted`.

use super::{effective_tree, Error, ScopeEvent, ScopeMode, ScopePath, ScopeStore};
use crate::KillSwitchStore;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use failover_core::http::{
    applied, history_page, with_etag, ApiError, Caller, HistoryQuery, IfMatch, JsonBody, Role,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// The body of a scope's creation. There is no `actor`: it is the caller.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Why.
    pub reason: String,
    /// Incident or change ticket.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key: resending the same id is applied once.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

/// The body of a mode change: `mode` is `NORMAL`, `REDUCE_ONLY`, `CANCEL_ONLY` or
/// `HALTED`.
pub type ModeBody = failover_core::http::ModeBody<ScopeMode>;

/// The `?under=` of the tree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeQuery {
    /// Only this scope and those below it.
    #[serde(default)]
    pub under: Option<String>,
}

/// What the routes need: the scopes and their root, the kill switch.
#[derive(Debug, Clone)]
pub struct ScopeRoutes {
    store: Arc<dyn ScopeStore>,
    root: Arc<dyn KillSwitchStore>,
}

impl ScopeRoutes {
    /// Routes over `store`, whose root is the kill switch of `root`.
    pub fn new(store: Arc<dyn ScopeStore>, root: Arc<dyn KillSwitchStore>) -> Self {
        Self { store, root }
    }

    /// The router (state applied; merge or nest it).
    pub fn router(self) -> Router {
        Router::new()
            .route("/admin/scopes", get(tree))
            .route("/admin/scopes/{*path}", axum::routing::put(create))
            .route("/admin/scope-modes/{*path}", get(show).put(set_mode))
            .route("/admin/scope-history/{*path}", get(history))
            .with_state(Arc::new(self))
    }
}

type S = State<Arc<ScopeRoutes>>;

fn parse(path: &str) -> Result<ScopePath, ApiError> {
    Ok(ScopePath::parse(path).map_err(Error::from)?)
}

async fn tree(
    State(s): S,
    caller: Caller,
    Query(q): Query<TreeQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the scopes")?;
    let under = q.under.as_deref().map(parse).transpose()?;
    if let Some(under) = &under {
        // An unknown subtree answers 404 naming the known path it resembles.
        s.store.effective(under.as_str()).await?;
    }
    let all = s.store.scopes(None).await?;
    let root = s.root.load().await?;
    let rows = effective_tree(&all, root.engaged, under.as_ref());
    let scopes: Vec<_> = rows
        .iter()
        .map(|(state, effective)| serde_json::json!({"scope": state, "effective": effective}))
        .collect();
    Ok(axum::Json(serde_json::json!({
        "kill_switch_engaged": root.engaged,
        "scopes": scopes,
    }))
    .into_response())
}

async fn create(
    State(s): S,
    caller: Caller,
    Path(path): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "create a scope")?;
    let path = parse(&path)?;
    let audit = caller.audit(&body.reason, body.ticket.as_deref(), body.request_id);
    let result = s.store.create_scope(&path, &audit).await?;
    let position = result.position;
    let mut response = applied(result, position);
    if response.status() == StatusCode::OK
        && !response.headers().contains_key("idempotent-replayed")
    {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

async fn show(State(s): S, caller: Caller, Path(path): Path<String>) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a scope")?;
    let effective = s.store.effective(&path).await?;
    let own = s.store.scope(effective.path.as_str()).await?;
    let position = own.as_ref().map_or(effective.position, |o| o.position);
    Ok(with_etag(
        position,
        &serde_json::json!({
            "path": effective.path,
            "mode": effective.own,
            "effective": effective.effective,
            "decided_by": effective.decided_by,
            "decision": effective,
            "last_change": own,
        }),
    ))
}

async fn set_mode(
    State(s): S,
    caller: Caller,
    Path(path): Path<String>,
    if_match: IfMatch,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "set a scope's mode")?;
    let audit = body.audit(&caller, if_match);
    let result = match s.store.set_scope_mode(&path, body.mode, &audit).await {
        Err(Error::PendingApproval(request)) => {
            return Ok(failover_core::http::approvals::pending(&request))
        }
        other => other?,
    };
    if !result.replayed {
        tracing::warn!(%path, mode = %body.mode, actor = caller.actor(), reason = %body.reason, position = %result.position, "scope mode set via admin API");
    }
    let position = result.position;
    Ok(applied(result, position))
}

#[derive(Serialize)]
struct Page {
    events: Vec<ScopeEvent>,
    next: Option<u64>,
}

async fn history(
    State(s): S,
    caller: Caller,
    Path(path): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a scope's history")?;
    let path = parse(&path)?;
    // An unknown path answers 404 (naming a near miss), not an empty history.
    s.store.effective(path.as_str()).await?;
    let (events, next) = history_page(
        q,
        |e: &ScopeEvent| e.position.0,
        |n| s.store.scope_history(Some(&path), n),
    )
    .await?;
    Ok(axum::Json(Page { events, next }).into_response())
}

/// Describes the scope handle's metrics (`# HELP`); [`gauges`] calls it.
pub fn describe_metrics() {
    metrics::describe_gauge!("scope_nodes", "Scopes the process's scope handle holds");
    metrics::describe_gauge!(
        "scope_restricted_nodes",
        "Scopes whose own mode is stricter than NORMAL"
    );
    metrics::describe_gauge!(
        "scope_root_halted",
        "1 when the scopes' root (the kill switch) halts every scope in this process, else 0"
    );
    metrics::describe_gauge!(
        "scope_gates",
        "Live leaf gates of the process's scope handle"
    );
    metrics::describe_gauge!(
        "scope_state_age_seconds",
        metrics::Unit::Seconds,
        "Age of the scope handle's last successful read"
    );
}

/// A scrape-time collector of the scope handle's gauges: `scope_nodes`,
/// `scope_restricted_nodes`, `scope_root_halted`, `scope_gates` and
/// `scope_state_age_seconds` (from [`ScopeModes::status`](super::ScopeModes::status)).
pub fn gauges(handle: super::ScopeModes) -> impl Fn() + Send + Sync + 'static {
    describe_metrics();
    move || {
        let status = handle.status();
        metrics::gauge!("scope_nodes").set(status.scopes as f64);
        metrics::gauge!("scope_restricted_nodes").set(status.restricted as f64);
        metrics::gauge!("scope_root_halted").set(if status.root == ScopeMode::Halted {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("scope_gates").set(status.gates as f64);
        if let Some(age) = crate::http::age_seconds(status.last_success) {
            metrics::gauge!("scope_state_age_seconds").set(age);
        }
    }
}
