//! The four-eyes admin routes ([`crate::approvals`]), for a service to mount behind
//! [`Authenticator::protect`](super::Authenticator::protect):
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /admin/approvals?all=` | viewer | pending requests (all with `all=true`), newest first |
//! | `GET /admin/approvals/review` | viewer | break-glass relaxations not yet acknowledged |
//! | `GET /admin/approvals/policy` | viewer | which actions require approval, and their expiry |
//! | `GET /admin/approvals/{id}/events` | viewer | the trail of one request |
//! | `POST /admin/approvals/{id}/approve` | supervisor, not the requester | applies the request's command (200), 409 `stale_request` when the state moved, 409 `expired`, 403 `self_approval` |
//! | `POST /admin/approvals/{id}/reject` | operator | body `{"reason"}` |
//! | `POST /admin/approvals/{id}/acknowledge` | supervisor, not the one who broke the glass | closes a break-glass review |
//! | `POST /admin/approvals/require` | operator | body `{"actions": [...], "reason", "ticket"?, "expiry_secs"?, "request_id"?}`: applies at once |
//! | `POST /admin/approvals/waive` | supervisor | body `{"actions": [...], "reason", "ticket", "break_glass"?, "request_id"?}`: 202 while any action is required |
//!
//! A control's relaxation that waits for approval answers **202** with
//! [`pending`]'s body: `{"pending_approval": {"id", "action", "what", "expires_at"}}`.

use super::{ApiError, Caller, JsonBody, Role};
use crate::approvals::{ApprovalError, ApprovalStore, PendingApproval};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;

/// The 202 answer of a relaxation that waits for a second supervisor: nothing was
/// changed; the body names the request to approve.
pub fn pending(request: &PendingApproval) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "pending_approval": request,
            "message": request.to_string(),
        })),
    )
        .into_response()
}

/// An approvals answer: 202 for a pending waiver, the error otherwise.
fn answer(e: ApprovalError) -> Response {
    match e {
        ApprovalError::PendingApproval(p) => pending(&p),
        e => ApiError::from(e).into_response(),
    }
}

/// The body of `reject`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Why.
    pub reason: String,
}

/// The body of `require` and `waive`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// The actions, e.g. `["kill-switch.disengage"]`.
    pub actions: Vec<String>,
    /// Why.
    pub reason: String,
    /// Incident or change ticket; required to waive.
    #[serde(default)]
    pub ticket: Option<String>,
    /// How long requests of these actions stay open (require only), 1..=86400.
    #[serde(default)]
    pub expiry_secs: Option<u64>,
    /// Waive at once while approvals are required (audited, counted, reviewed).
    #[serde(default)]
    pub break_glass: bool,
    /// Idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
}

/// `?all=true` lists closed requests too.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Closed requests too.
    #[serde(default)]
    pub all: bool,
}

/// The routes over an approvals store.
#[derive(Debug, Clone)]
pub struct ApprovalRoutes {
    store: Arc<dyn ApprovalStore>,
}

type Shared = State<Arc<ApprovalRoutes>>;

impl ApprovalRoutes {
    /// Routes over `store`.
    pub fn new(store: Arc<dyn ApprovalStore>) -> Self {
        Self { store }
    }

    /// The router (state applied; merge it).
    pub fn router(self) -> Router {
        Router::new()
            .route("/admin/approvals", get(list))
            .route("/admin/approvals/review", get(review))
            .route("/admin/approvals/policy", get(policy))
            .route("/admin/approvals/require", post(require))
            .route("/admin/approvals/waive", post(waive))
            .route("/admin/approvals/{id}/events", get(events))
            .route("/admin/approvals/{id}/approve", post(approve))
            .route("/admin/approvals/{id}/reject", post(reject))
            .route("/admin/approvals/{id}/acknowledge", post(acknowledge))
            .with_state(Arc::new(self))
    }
}

fn id_of(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{raw:?} is not a request id; list them with GET /admin/approvals"
        ))
    })
}

async fn list(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read approval requests")?;
    let requests = s.store.list(q.all).await?;
    Ok(axum::Json(serde_json::json!({ "requests": requests })).into_response())
}

async fn review(State(s): Shared, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the break-glass review")?;
    let requests = s.store.review().await?;
    Ok(axum::Json(serde_json::json!({ "break_glass": requests })).into_response())
}

async fn policy(State(s): Shared, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the approval policy")?;
    let policy = s.store.policy().await?;
    Ok(axum::Json(serde_json::json!({ "policy": policy })).into_response())
}

async fn events(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read the approval trail")?;
    let events = s.store.events(Some(id_of(&id)?), 1000).await?;
    Ok(axum::Json(serde_json::json!({ "events": events })).into_response())
}

fn authority(caller: &Caller) -> crate::Authority {
    match caller.role() {
        Role::Supervisor => crate::Authority::Supervisor,
        _ => crate::Authority::Operator,
    }
}

async fn approve(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Supervisor, "approve a relaxation")?;
    let id = id_of(&id)?;
    match s
        .store
        .approve(id, caller.actor(), authority(&caller))
        .await
    {
        Ok(approved) => {
            tracing::warn!(request = %id, actor = caller.actor(), requested_by = %approved.requested_by, what = %approved.what, position = %approved.position, "relaxation approved and applied via admin API");
            Ok(axum::Json(serde_json::json!({ "approved": approved })).into_response())
        }
        Err(e) => Ok(answer(e)),
    }
}

async fn reject(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RejectBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "reject a relaxation")?;
    let id = id_of(&id)?;
    let decided = s
        .store
        .reject(id, caller.actor(), &b.reason, authority(&caller))
        .await?;
    Ok(axum::Json(serde_json::json!({ "rejected": decided })).into_response())
}

async fn acknowledge(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Supervisor, "acknowledge a break-glass relaxation")?;
    let id = id_of(&id)?;
    let decided = s
        .store
        .acknowledge(id, caller.actor(), authority(&caller))
        .await?;
    Ok(axum::Json(serde_json::json!({ "acknowledged": decided })).into_response())
}

async fn require(
    State(s): Shared,
    caller: Caller,
    JsonBody(b): JsonBody<PolicyBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "require approvals")?;
    let audit = caller.audit(&b.reason, b.ticket.as_deref(), b.request_id);
    let expiry = b.expiry_secs.map(std::time::Duration::from_secs);
    match s.store.require(&b.actions, expiry, &audit).await {
        Ok(position) => Ok(axum::Json(
            serde_json::json!({ "required": b.actions, "policy_position": position }),
        )
        .into_response()),
        Err(e) => Ok(answer(e)),
    }
}

async fn waive(
    State(s): Shared,
    caller: Caller,
    JsonBody(b): JsonBody<PolicyBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Supervisor, "waive approvals")?;
    let mut audit = caller.audit(&b.reason, b.ticket.as_deref(), b.request_id);
    if b.break_glass {
        audit = audit.breaking_glass();
    }
    match s.store.waive(&b.actions, &audit).await {
        Ok(position) => Ok(axum::Json(
            serde_json::json!({ "waived": b.actions, "policy_position": position }),
        )
        .into_response()),
        Err(e) => Ok(answer(e)),
    }
}
