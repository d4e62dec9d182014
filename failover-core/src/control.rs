//! What every control's store error shares: one classification ([`Outcome`]) that
//! decides the HTTP answer (`failover_core::http::ApiError`, feature `http`), the
//! operators' CLI exit code ([`Outcome::exit_code`]) and whether retrying helps
//! ([`crate::retry::Classify`]) — decided once here, so that no control answers a
//! refusal as a success or a transient failure as a refusal.
//!
//! A control's error implements [`ControlError`] by naming, for each of its
//! variants, which outcome it is; the control's own refusals (an unknown symbol, a
//! forbidden transition, a stale fencing token) are [`Outcome::Invalid`] with their
//! HTTP status and machine-readable code. [`StoreError`](crate::StoreError) is that
//! error, written once: the variants every store shares and the control's own
//! refusals.

use crate::{AuditError, PendingApproval, Refusal};

/// What an error means to whoever called: refused (and why), pending, or not done.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The audit context is invalid or a ticket is missing: 422, exit 2.
    InvalidAudit(&'a AuditError),
    /// Refused by the authority rules (forbidden, precondition, superseded, request
    /// reused): 403/428/412/409, exit 2.
    Refused(&'a Refusal),
    /// The relaxation waits for a second supervisor; nothing changed: 202, exit 4.
    Pending(&'a PendingApproval),
    /// The control's own refusal of what was asked (bad input, unknown name, a
    /// transition its rules forbid): nothing changed; exit 2.
    Invalid {
        /// The HTTP status, e.g. 400, 404, 409, 422.
        status: u16,
        /// The machine-readable code, e.g. `unknown_symbol`.
        code: &'static str,
    },
    /// The database could not be reached within the retry budget: 503
    /// `store_unavailable`, exit 3, worth retrying with the same request id.
    Unavailable,
    /// Another session holds the row: nothing written, 423 `locked`, exit 3.
    Locked,
    /// The migrations were not run: 503 `schema_missing`, exit 1.
    SchemaMissing,
    /// Anything else (a database error, a closed store): 500 `store_error`, exit 1.
    Failed,
}

/// Exit codes of the operators' CLI, one per outcome.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Anything else: schema missing, a database error.
    pub const FAILED: i32 = 1;
    /// Refused, nothing changed: bad input, ticket missing, transition forbidden, not
    /// the login's authority, the state moved, a replay superseded or reused, an
    /// unknown name.
    pub const REFUSED: i32 = 2;
    /// Not done now, nothing written, safe to retry: unavailable within the retry
    /// budget, or the row locked by another session.
    pub const UNAVAILABLE: i32 = 3;
    /// Pending approval: the relaxation waits for a second supervisor.
    pub const PENDING: i32 = 4;
}

impl Outcome<'_> {
    /// The operators' CLI exit code ([`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::InvalidAudit(_) | Self::Refused(_) | Self::Invalid { .. } => exit::REFUSED,
            Self::Pending(_) => exit::PENDING,
            Self::Unavailable | Self::Locked => exit::UNAVAILABLE,
            Self::SchemaMissing | Self::Failed => exit::FAILED,
        }
    }

    /// Whether retrying (with the same request id) can help: only when the store was
    /// unreachable.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

/// A control's store error: each variant is one [`Outcome`].
pub trait ControlError: std::error::Error + Send + Sync + 'static {
    /// What this error means to the caller.
    fn outcome(&self) -> Outcome<'_>;
}

/// Only an unreachable store is worth retrying; everything else is a refusal, a
/// pending approval or a defect.
impl<E: ControlError> crate::retry::Classify for E {
    fn class(&self) -> crate::ErrorClass {
        if self.outcome().retryable() {
            crate::ErrorClass::Retryable
        } else {
            crate::ErrorClass::Permanent
        }
    }
}
