//! Admin HTTP building blocks (feature `http`): the JSON error shape every admin route
//! answers with, a JSON body extractor whose refusals name the problem, the
//! operations routes (`/healthz`, `/health`, `/ready`, `/livez`, `/metrics`),
//! authentication (bearer tokens, mTLS client certificates) with roles and a
//! per-address throttle of failed authentication, and the one server loop
//! ([`serve`], [`tls::serve_tls`]) that bounds how long a client may take over its
//! request and maps a client certificate's subject to an identity.
//!
//! Bounds of the admin surface:
//!
//! | what | bound | answer |
//! |---|---|---|
//! | failed authentications per client address | 20 a minute (burst 20), [`Authenticator::with_failure_limit`] | 429 `auth_throttled` with `Retry-After` |
//! | request line and headers | 10 s ([`ServeLimits::header_read`]) | connection closed |
//! | request body, in total | 30 s ([`ServeLimits::body`]) | 408 `request_timeout` |
//! | request body size | [`MAX_BODY_BYTES`] (64 KiB) on protected routes | 413 `payload_too_large` |
//! | body content type | `application/json` | 415 `unsupported_media_type` |
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
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tradepulse_failover_core::http::serve(listener, app, Default::default()).await?;
//! # Ok(()) }
//! ```

pub mod approvals;
pub mod auth;
pub mod conditional;
pub mod metrics;
mod ops;
mod serve;
pub mod tls;

pub use auth::{Authenticator, Caller, Identity, PeerCertificate, Role};
pub use conditional::{applied, etag, with_etag, IfMatch, ModeBody, IDEMPOTENT_REPLAYED};
pub use ops::Ops;
pub use serve::{serve, serve_with_shutdown, ServeLimits};

/// Largest request body the protected admin routes accept (64 KiB): a change request
/// is a reason, a ticket and a request id. Larger bodies are answered 413
/// `payload_too_large` without being read further.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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
    retry_after: Option<std::time::Duration>,
}

/// The `code` of an [`ApiError`] answer, left in the response's extensions so that
/// middleware can count refusals without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    /// An error with this status, machine-readable code and human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    #[must_use]
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The `Retry-After` of this answer, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
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
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(after) = self.retry_after {
            headers.insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_seconds(after)),
            );
        }
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // The rest of the body is not read: the connection cannot carry another request.
            headers.insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub(crate) fn retry_after_seconds(after: std::time::Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
        .max(1)
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

/// How every control's store error answers, decided once by its [`Outcome`](crate::Outcome): the
/// control's own refusals with their status and code, authority refusals and invalid
/// audits as above, 503 `store_unavailable`, 423 `locked`, 503 `schema_missing`, 500
/// `store_error`. A pending approval is answered 202 by the route itself
/// ([`approvals::pending`]); reaching this mapping it is 202 `pending_approval`.
impl<E: crate::ControlError> From<E> for ApiError {
    fn from(e: E) -> Self {
        use crate::Outcome;
        let (status, code) = match e.outcome() {
            Outcome::InvalidAudit(a) => return ApiError::from(a.clone()),
            Outcome::Refused(r) => return ApiError::from(r.clone()),
            Outcome::Pending(_) => (StatusCode::ACCEPTED, "pending_approval"),
            Outcome::Invalid { status, code } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                code,
            ),
            Outcome::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Outcome::Locked => (StatusCode::LOCKED, "locked"),
            Outcome::SchemaMissing => (StatusCode::SERVICE_UNAVAILABLE, "schema_missing"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// `Json<T>` whose rejection is a JSON error naming the problem: 415
/// `unsupported_media_type` without `Content-Type: application/json`, 413
/// `payload_too_large` over the body limit ([`MAX_BODY_BYTES`] on protected routes),
/// 408 `request_timeout` when the body is not received within
/// [`ServeLimits::body`] (30 s when served otherwise), 400 for anything else. A body
/// field `actor` is refused with a message saying why: the actor is the authenticated
/// caller.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

/// The body deadline when the request did not come through [`serve`].
const DEFAULT_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let deadline = req
            .extensions()
            .get::<serve::BodyDeadline>()
            .map_or(DEFAULT_BODY_DEADLINE, |d| d.0);
        let read = tokio::time::timeout(deadline, axum::Json::<T>::from_request(req, state));
        let rejection = match read.await {
            Ok(Ok(axum::Json(v))) => return Ok(Self(v)),
            Ok(Err(rejection)) => rejection,
            Err(_) => return Err(body_timeout(deadline)),
        };
        if is_body_timeout(&rejection) {
            return Err(body_timeout(deadline));
        }
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "refused, nothing changed: the body must be JSON; send the header `Content-Type: application/json`",
                ))
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "refused, nothing changed: the body is larger than {MAX_BODY_BYTES} bytes; send only the reason, ticket and request id"
                    ),
                ))
            }
            _ => {}
        }
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

fn body_timeout(deadline: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "refused, nothing changed: the request body did not arrive within {}; send the whole body at once",
            humantime::format_duration(deadline)
        ),
    )
}

/// Whether reading the body failed because a body frame did not arrive in time
/// (tower-http's body timeout, somewhere in the rejection's chain of causes).
fn is_body_timeout(rejection: &JsonRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
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
