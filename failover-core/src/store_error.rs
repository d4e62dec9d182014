//! One store error for every audited control: [`StoreError<R>`] holds the variants
//! every control's store shares (an invalid audit, an authority refusal, a pending
//! approval, the database unavailable, locked, missing its schema or failing,
//! unusable settings, a closed store) once, and [`StoreError::Control`] holds the
//! control's own refusals `R` (an unknown symbol, a step too large…).
//!
//! A control declares its refusals as an enum implementing [`ControlRefusal`] (its
//! name in messages, the text of its missing schema, and the [`Outcome`] of each
//! refusal) and names its error `pub type Error = StoreError<MyRefusal>;`. The
//! error then is a [`ControlError`], so its HTTP answer, CLI exit code and retry
//! class follow from the outcome like every other control's.
//!
//! ```
//! use tradepulse_failover_core::{ControlRefusal, ControlError, Outcome, StoreError};
//!
//! #[derive(Debug, Clone, thiserror::Error)]
//! enum GateRefusal {
//!     #[error("refused, nothing changed: no such gate {0}")]
//!     UnknownGate(String),
//! }
//!
//! impl ControlRefusal for GateRefusal {
//!     const STORE: &'static str = "gate";
//!     const SCHEMA_MISSING: &'static str = "gate table missing: run gate migrations";
//!     fn outcome(&self) -> Outcome<'_> {
//!         Outcome::Invalid { status: 404, code: "unknown_gate" }
//!     }
//! }
//!
//! type Error = StoreError<GateRefusal>;
//!
//! let closed: Error = StoreError::Closed;
//! assert_eq!(closed.to_string(), "gate store closed");
//! let unknown = Error::Control(GateRefusal::UnknownGate("north".into()));
//! assert_eq!(unknown.outcome().exit_code(), 2);
//! ```

use crate::{AuditError, ConfigError, ControlError, DbError, DbErrorKind, Outcome};
use crate::{PendingApproval, Refusal};

/// A control's own refusals: what only this control refuses, and how its store is
/// named in the shared messages of [`StoreError`].
pub trait ControlRefusal: std::error::Error + Clone + Send + Sync + 'static {
    /// The store's name in messages, e.g. `"kill switch"`: "kill switch store
    /// unavailable: …".
    const STORE: &'static str;
    /// What is missing and the call that creates it, e.g. `"kill_switch_state table
    /// missing: run killswitch migrations (PostgresKillSwitchStore::migrate)"`; the
    /// database error follows in parentheses.
    const SCHEMA_MISSING: &'static str;

    /// What this refusal means to the caller: usually [`Outcome::Invalid`] with its
    /// HTTP status and machine-readable code.
    fn outcome(&self) -> Outcome<'_>;
}

/// Errors of a control's store. Each says what happened and what to do; a refused
/// call changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError<R: ControlRefusal> {
    /// The audit context is invalid (empty reason, control characters, too long) or
    /// a ticket is missing for a command that relaxes safety.
    #[error("refused, nothing changed: {0}")]
    InvalidAudit(#[from] AuditError),
    /// Refused by the authority rules: an operator relaxing, a relaxation whose
    /// state moved or that names none, a replay superseded by a later change, a
    /// request id reused by another actor or command.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The relaxation needs a second supervisor's approval
    /// ([`crate::approvals`]): a pending request now holds it and nothing changed.
    /// Not an outcome to retry: approve it (another login and actor), or break the
    /// glass.
    #[error("{0}")]
    PendingApproval(PendingApproval),
    /// The control's own refusal of what was asked; nothing changed.
    #[error(transparent)]
    Control(R),
    /// The tables are missing: run the control's migrations.
    #[error("{} ({source})", R::SCHEMA_MISSING)]
    SchemaMissing {
        /// The database error.
        source: DbError,
    },
    /// The database could not be reached within the retry budget. For a write the
    /// outcome is unknown; retrying with the same `Audit` is safe (idempotent).
    #[error("{} store unavailable: {source}{}", R::STORE, .source.outcome_note())]
    Unavailable {
        /// The database error.
        source: DbError,
    },
    /// Another session holds the row this command must change (a transaction left
    /// open in psql, an application idle in transaction): the wait was bounded by
    /// `lock_timeout`, nothing was written, and the message names the session and
    /// the statement that ends it ([`DbError::blockers`] has their pids).
    #[error("{} store locked, nothing was written: {source}", R::STORE)]
    Locked {
        /// The database error, with the blocking sessions.
        source: DbError,
    },
    /// Any other database error.
    #[error("{} store error: {source}", R::STORE)]
    Database {
        /// The database error.
        source: DbError,
    },
    /// Settings that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store was shut down.
    #[error("{} store closed", R::STORE)]
    Closed,
}

impl<R: ControlRefusal> ControlError for StoreError<R> {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Self::InvalidAudit(a) => Outcome::InvalidAudit(a),
            Self::Refused(r) => Outcome::Refused(r),
            Self::PendingApproval(p) => Outcome::Pending(p),
            Self::Control(r) => r.outcome(),
            Self::Config(_) => Outcome::Invalid {
                status: 400,
                code: "invalid_config",
            },
            Self::Unavailable { .. } => Outcome::Unavailable,
            Self::Locked { .. } => Outcome::Locked,
            Self::SchemaMissing { .. } => Outcome::SchemaMissing,
            Self::Database { .. } | Self::Closed => Outcome::Failed,
        }
    }
}

/// The control's own refusal.
impl<R: ControlRefusal> From<R> for StoreError<R> {
    fn from(refusal: R) -> Self {
        Self::Control(refusal)
    }
}

/// A refusal raised inside the write ([`Refusal::from_db`]) is [`StoreError::Refused`];
/// otherwise the kind of the database error decides the variant.
impl<R: ControlRefusal> From<DbError> for StoreError<R> {
    fn from(source: DbError) -> Self {
        if let Some(refusal) = Refusal::from_db(&source) {
            return Self::Refused(refusal);
        }
        match source.kind() {
            DbErrorKind::Unavailable => Self::Unavailable { source },
            DbErrorKind::SchemaMissing => Self::SchemaMissing { source },
            DbErrorKind::Locked => Self::Locked { source },
            _ => Self::Database { source },
        }
    }
}

/// An apply function's answer that changed nothing, as the control's error, so that
/// [`ApplyCall::decode`](crate::postgres::ApplyCall::decode) answers in it.
#[cfg(feature = "postgres")]
impl<R: ControlRefusal> From<crate::postgres::Gated> for StoreError<R> {
    fn from(gated: crate::postgres::Gated) -> Self {
        match gated {
            crate::postgres::Gated::Pending(pending) => Self::PendingApproval(pending),
            crate::postgres::Gated::Refused(refusal) => Self::Refused(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Classify;
    use crate::ErrorClass;

    /// A control with one refusal of its own.
    #[derive(Debug, Clone, thiserror::Error)]
    enum ToyRefusal {
        #[error("refused, nothing changed: no such toy {0}")]
        UnknownToy(String),
    }

    impl ControlRefusal for ToyRefusal {
        const STORE: &'static str = "toy box";
        const SCHEMA_MISSING: &'static str =
            "toy_box table missing: run toy migrations (PostgresToyStore::migrate)";
        fn outcome(&self) -> Outcome<'_> {
            Outcome::Invalid {
                status: 404,
                code: "unknown_toy",
            }
        }
    }

    type Error = StoreError<ToyRefusal>;

    fn db(kind: DbErrorKind) -> DbError {
        DbError::new(kind, "toy.load", None, "connection refused".to_owned())
    }

    #[test]
    fn each_variant_has_its_outcome() {
        let audit: Error = AuditError::Empty { field: "reason" }.into();
        assert!(matches!(audit.outcome(), Outcome::InvalidAudit(_)));
        assert_eq!(audit.outcome().exit_code(), crate::control::exit::REFUSED);

        let refused: Error = Refusal::Forbidden {
            message: "releasing a toy needs supervisor authority".into(),
        }
        .into();
        assert!(matches!(refused.outcome(), Outcome::Refused(_)));

        let control: Error = ToyRefusal::UnknownToy("bear".into()).into();
        assert!(matches!(&control, StoreError::Control(_)));
        assert!(matches!(
            control.outcome(),
            Outcome::Invalid {
                status: 404,
                code: "unknown_toy"
            }
        ));
        assert_eq!(control.outcome().exit_code(), crate::control::exit::REFUSED);

        let config: Error = ConfigError::Missing {
            var: "TOY_DSN".into(),
        }
        .into();
        assert!(matches!(
            config.outcome(),
            Outcome::Invalid {
                status: 400,
                code: "invalid_config"
            }
        ));

        let unavailable: Error = db(DbErrorKind::Unavailable).into();
        assert!(matches!(unavailable, StoreError::Unavailable { .. }));
        assert!(matches!(unavailable.outcome(), Outcome::Unavailable));
        assert_eq!(unavailable.class(), ErrorClass::Retryable);

        let locked: Error = db(DbErrorKind::Locked).into();
        assert!(matches!(locked, StoreError::Locked { .. }));
        assert!(matches!(locked.outcome(), Outcome::Locked));
        assert_eq!(locked.class(), ErrorClass::Permanent);

        let missing: Error = db(DbErrorKind::SchemaMissing).into();
        assert!(matches!(missing, StoreError::SchemaMissing { .. }));
        assert!(matches!(missing.outcome(), Outcome::SchemaMissing));

        let other: Error = db(DbErrorKind::Permanent).into();
        assert!(matches!(other, StoreError::Database { .. }));
        assert!(matches!(other.outcome(), Outcome::Failed));
        assert!(matches!(Error::Closed.outcome(), Outcome::Failed));
        assert_eq!(Error::Closed.class(), ErrorClass::Permanent);
    }

    /// An apply function's pending answer is the pending approval, its refusal the
    /// refusal: neither reads as a failure.
    #[cfg(feature = "postgres")]
    #[test]
    fn gated_answers_keep_their_meaning() {
        use crate::postgres::Gated;
        let refusal = Refusal::Forbidden {
            message: "releasing a toy needs supervisor authority".into(),
        };
        let refused: Error = Gated::Refused(refusal.clone()).into();
        assert!(matches!(&refused, StoreError::Refused(r) if *r == refusal));
        assert_eq!(refused.to_string(), refusal.to_string());
    }

    #[test]
    fn messages_name_the_store() {
        let starts = [
            (DbErrorKind::Unavailable, "toy box store unavailable: "),
            (
                DbErrorKind::Locked,
                "toy box store locked, nothing was written: ",
            ),
            (DbErrorKind::Permanent, "toy box store error: "),
            (
                DbErrorKind::SchemaMissing,
                "toy_box table missing: run toy migrations (PostgresToyStore::migrate) (",
            ),
        ];
        for (kind, start) in starts {
            let text = Error::from(db(kind)).to_string();
            assert!(text.starts_with(start), "{kind:?}: {text}");
            assert!(text.contains("connection refused"), "{kind:?}: {text}");
        }
        assert_eq!(Error::Closed.to_string(), "toy box store closed");
        let control = Error::Control(ToyRefusal::UnknownToy("bear".into()));
        assert_eq!(
            control.to_string(),
            "refused, nothing changed: no such toy bear"
        );
        let audit: Error = AuditError::Empty { field: "reason" }.into();
        assert!(
            audit.to_string().starts_with("refused, nothing changed: "),
            "{audit}"
        );
    }
}
