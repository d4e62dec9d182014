//! Conditional requests and replays over HTTP, the same for every control:
//!
//! * every GET of a control answers `ETag: "<position>"` (the position of the state
//!   it shows, as a number);
//! * a request that may relax sends `If-Match` with it ([`IfMatch`]); without it a
//!   relaxation is refused with 428 Precondition Required, and against a state that
//!   moved with 412 Precondition Failed naming the change in between;
//! * a replayed request's answer carries `Idempotent-Replayed: true` and
//!   `"replayed": true` ([`applied`]);
//! * [`Refusal`]s answer 403 `forbidden`, 428 `precondition_required`, 412
//!   `precondition_failed`, 409 `superseded` and 409 `request_reused`.

use super::ApiError;
use crate::{Applied, Audit, Position, Refusal};
use axum::extract::FromRequestParts;
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The header marking the original answer of a request sent again.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The `ETag` of a control's state at `position`: `"<position as a number>"`.
pub fn etag(position: Position) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", position.0))
        .unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A JSON answer with the state's `ETag`.
pub fn with_etag<T: serde::Serialize>(position: Position, body: &T) -> Response {
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(ETAG, etag(position));
    response
}

/// A command's answer: its value as JSON, `"replayed"` in the body, and
/// `Idempotent-Replayed: true` when it is the original answer of a request sent again.
pub fn applied<T: serde::Serialize>(result: Applied<T>, position: Position) -> Response {
    let replayed = result.replayed;
    let mut response = with_etag(position, &result);
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The `If-Match` of a request: the position of the state the caller saw. Routes
/// that may relax require it ([`IfMatch::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<Position>);

impl IfMatch {
    /// Makes `audit` conditional on the named position, or, without `If-Match`,
    /// refuse a relaxation (428) — tightenings are applied either way.
    pub fn apply(self, audit: Audit) -> Audit {
        match self.0 {
            Some(position) => audit.expecting(position),
            None => audit.requiring_precondition(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IF_MATCH) else {
            return Ok(Self(None));
        };
        let text = value.to_str().unwrap_or("").trim();
        let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        inner.parse::<u64>().map(|p| Self(Some(Position(p)))).map_err(|_| {
            ApiError::bad_request(format!(
                "If-Match {text:?} names no position: send the ETag of the GET you decided on, e.g. If-Match: \"42\""
            ))
        })
    }
}

/// How a refusal of the authority rules answers.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match &r {
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::PreconditionRequired { .. } => StatusCode::PRECONDITION_REQUIRED,
            Refusal::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Refusal::Superseded { .. } | Refusal::RequestReused { .. } => StatusCode::CONFLICT,
        };
        let message = match &r {
            Refusal::PreconditionRequired { .. } => format!("{r} (header If-Match)"),
            _ => r.to_string(),
        };
        ApiError::new(status, r.code(), message)
    }
}

/// The body of a command that sets a control's mode (a symbol's, a scope's):
/// `{"mode", "reason", "ticket"?, "request_id"?, "break_glass"?}`; unknown fields
/// are refused.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModeBody<M> {
    /// The mode to set, in the control's own words (e.g. `HALTED`).
    pub mode: M,
    /// Why.
    pub reason: String,
    /// Incident or change ticket; required to relax.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Idempotency key: resending the same id is applied once.
    #[serde(default)]
    pub request_id: Option<uuid::Uuid>,
    /// Relax at once although a second supervisor's approval is required: audited,
    /// counted and listed for review until another supervisor acknowledges it.
    #[serde(default)]
    pub break_glass: bool,
}

impl<M> ModeBody<M> {
    /// The command's audit by `caller`: conditional on `if_match` (see
    /// [`IfMatch::apply`]), breaking the glass when the body asks to.
    pub fn audit(&self, caller: &super::Caller, if_match: IfMatch) -> Audit {
        let audit =
            if_match.apply(caller.audit(&self.reason, self.ticket.as_deref(), self.request_id));
        if self.break_glass {
            audit.breaking_glass()
        } else {
            audit
        }
    }
}
