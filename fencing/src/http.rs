//! The fencing admin routes (feature `http`), for a service to mount:
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /admin/leases/{resource}` | viewer | the current lease: holder, token, time left (`null` when free) |
//! | `GET /admin/leases/{resource}/history?limit=&before=` | viewer | acquire/release events newest first (PostgreSQL store); `next` is the cursor of the following page |
//!
//! Leases change only through their holders (acquire, renew, release), so there is
//! no mutating route.

use crate::{CurrentLease, LeaseFencer};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use failover_core::http::{ApiError, Caller, HistoryQuery, Role};
use std::sync::Arc;

/// What the routes need.
#[derive(Debug, Clone)]
pub struct LeaseRoutes {
    fencer: Arc<dyn LeaseFencer>,
    #[cfg(feature = "postgres")]
    history: Option<Arc<crate::postgres::PostgresLeaseFencer>>,
}

impl LeaseRoutes {
    /// Routes over `fencer`.
    pub fn new(fencer: Arc<dyn LeaseFencer>) -> Self {
        Self {
            fencer,
            #[cfg(feature = "postgres")]
            history: None,
        }
    }

    /// Also serves the lease trail of a PostgreSQL store.
    #[cfg(feature = "postgres")]
    #[must_use]
    pub fn with_history(mut self, store: Arc<crate::postgres::PostgresLeaseFencer>) -> Self {
        self.history = Some(store);
        self
    }

    /// The router (state applied; merge or nest it).
    pub fn router(self) -> Router {
        Router::new()
            .route("/admin/leases/{resource}", get(current))
            .route("/admin/leases/{resource}/history", get(history))
            .with_state(Arc::new(self))
    }
}

fn lease_json(lease: Option<CurrentLease>) -> serde_json::Value {
    match lease {
        None => serde_json::Value::Null,
        Some(l) => serde_json::json!({
            "resource": l.resource,
            "holder": l.holder,
            "token": l.token,
            "expires_in_ms": l.expires_in.as_millis() as u64,
        }),
    }
}

async fn current(
    State(s): State<Arc<LeaseRoutes>>,
    caller: Caller,
    Path(resource): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a lease")?;
    let lease = s.fencer.current(&resource).await?;
    Ok(
        axum::Json(serde_json::json!({ "resource": resource, "lease": lease_json(lease) }))
            .into_response(),
    )
}

async fn history(
    State(s): State<Arc<LeaseRoutes>>,
    caller: Caller,
    Path(resource): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read a lease history")?;
    #[cfg(feature = "postgres")]
    if let Some(store) = &s.history {
        let (events, next) = failover_core::http::history_page(
            q,
            |e: &crate::postgres::LeaseEvent| e.id,
            |n| store.lease_history(Some(&resource), n),
        )
        .await?;
        return Ok(
            axum::Json(serde_json::json!({ "events": events, "next": next })).into_response(),
        );
    }
    let _ = (&s, q, resource);
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "history_unavailable",
        "this service's lease store keeps no trail (only the PostgreSQL store has fencing_lease_events)",
    ))
}
