//! Admin HTTP building blocks (feature `http`): the JSON error shape every admin route
//! answers with, a JSON body extractor whose refusals name the problem, the
//! operations routes (`/healthz`, `/health`, `/ready`, `/livez`, `/metrics`),
//! authentication (bearer tokens, mTLS client certificates) with roles, and a TLS
//! server helper that maps a client certificate's subject to an identity.
//!
//! The store crates (`killswitch`, `symbol-mode`, `fencing`) offer their admin routes
//! behind their own `http` feature, built on these. A service composes them:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tradepulse_failover_core::http::{Authenticator, Ops};
//! use tradepulse_failover_core::HealthRegistry;
//! let health = HealthRegistry::new();
//! let auth = Authenticator::from_file("admin-tokens");
//! let admin = axum::Router::new();
//!     // .merge(killswitch::http::KillSwitchRoutes::new(store).router()) …
//! let app = auth
//!     .protect(admin)
//!     // probes and metrics stay open: merged after the layer
//!     .merge(Ops::new(health).router());
//! # let _ = app; Ok(()) }
//! ```

pub mod auth;
pub mod conditional;
pub mod metrics;
mod ops;
pub mod tls;

pub use auth::{Authenticator, Caller, Identity, PeerCertificate, Role};
pub use conditional::{applied, etag, with_etag, IfMatch, IDEMPOTENT_REPLAYED};
pub use ops::Ops;

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A JSON error answer: `{"error": {"code", "message"}}` with an HTTP status. Every
/// refusal of every admin route has this shape; a refused request changed nothing.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status, machine-readable code and human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code, e.g. `ticket_required`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// How an audit error maps to an answer; the store crates share it.
impl From<crate::AuditError> for ApiError {
    fn from(e: crate::AuditError) -> Self {
        let code = match e {
            crate::AuditError::TicketRequired { .. } => "ticket_required",
            _ => "invalid_audit",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

/// `Json<T>` whose rejection is a JSON 400 naming the problem. A body field `actor` is
/// refused with a message saying why: the actor is the authenticated caller.
#[derive(Debug, Clone)]
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
            Err(rejection) => {
                let text = rejection.body_text();
                if text.contains("unknown field `actor`") {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "actor_not_accepted",
                        "refused, nothing changed: the audit actor is the authenticated caller (token or client certificate); remove `actor` from the body",
                    ));
                }
                Err(ApiError::bad_request(format!(
                    "{text}; send a JSON body like {{\"reason\":\"…\",\"ticket\":\"INC-1\"}}"
                )))
            }
        }
    }
}

/// Query of the history routes: `?limit=50&before=<cursor>`.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// At most this many events (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Only events strictly older than this cursor (the `next` of the previous page).
    pub before: Option<u64>,
}

impl HistoryQuery {
    /// Default page size.
    pub const DEFAULT_LIMIT: usize = 50;
    /// Largest page size.
    pub const MAX_LIMIT: usize = 1000;

    /// The page size asked for, bounded.
    pub fn limit(&self) -> usize {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }
}

/// One page of a history newest first, cut from a store whose `history(n)` returns
/// the newest `n` events: `fetch(n)` is asked for growing `n` until the page is full
/// or the history is exhausted. `position` gives an event's strictly increasing
/// position (its version); `next` is the cursor of the following page.
pub async fn history_page<T, E, F, Fut>(
    query: HistoryQuery,
    position: impl Fn(&T) -> u64,
    fetch: F,
) -> Result<(Vec<T>, Option<u64>), E>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
{
    let limit = query.limit();
    let mut want = limit + 1;
    loop {
        let events = fetch(want).await?;
        let exhausted = events.len() < want;
        let mut page: Vec<T> = events
            .into_iter()
            .filter(|e| query.before.is_none_or(|b| position(e) < b))
            .collect();
        if page.len() > limit || exhausted {
            let next = if page.len() > limit {
                page.truncate(limit);
                page.last().map(&position)
            } else {
                None
            };
            return Ok((page, next));
        }
        want = want.saturating_mul(4);
    }
}
