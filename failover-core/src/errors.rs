//! Errors shared by every store: database failures and unusable settings. They are
//! available without the `postgres` feature so that store crates can name them in
//! their own error enums whatever backends are compiled.

use crate::retry::ErrorClass;
use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure a [`DbError`] is; stores map these onto their own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DbErrorKind {
    /// No writable server answered within the retry budget (refused, reset, hung,
    /// read-only, in recovery …). Try again later or fail over.
    Unavailable,
    /// A table or function is missing: the migrations were not run.
    SchemaMissing,
    /// A constraint or trigger refused the statement (for example an append-only table).
    Rejected,
    /// Anything else that retrying cannot fix (permissions, syntax, bad data).
    Permanent,
}

/// A classified database failure. Cheap to clone; never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {kind_text} after {attempts} attempt(s) in {elapsed:?}: {message}")]
pub struct DbError {
    kind: DbErrorKind,
    kind_text: &'static str,
    op: &'static str,
    sqlstate: Option<String>,
    attempts: u32,
    elapsed: Duration,
    message: String,
    write: bool,
}

impl DbError {
    /// Marks the failure as one of a write: when the database was unavailable, the
    /// write may or may not have committed.
    #[must_use]
    pub fn during_write(mut self) -> Self {
        self.write = true;
        self
    }

    /// True when a write failed so that its outcome is unknown (unavailable during a
    /// write): a retry with the same request id is safe and tells.
    pub fn outcome_unknown(&self) -> bool {
        self.write && self.kind == DbErrorKind::Unavailable
    }

    /// `" (the write's outcome is unknown; …)"` when [`outcome_unknown`](Self::outcome_unknown),
    /// else empty: for store error messages. Reads never claim a write's outcome.
    pub fn outcome_note(&self) -> &'static str {
        if self.outcome_unknown() {
            " (the write's outcome is unknown; retrying with the same Audit is safe)"
        } else {
            ""
        }
    }

    /// The kind.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// The operation that failed, e.g. `kill_switch.engage`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The SQLSTATE, when the server answered with one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// The underlying cause, e.g. `error connecting to server: Connection refused`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time spent.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Retryable (`Unavailable`) or permanent.
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            DbErrorKind::Unavailable => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        }
    }

    /// A classified error (used by the pool and by stores that wrap their own checks).
    pub fn new(
        kind: DbErrorKind,
        op: &'static str,
        sqlstate: Option<String>,
        message: String,
    ) -> Self {
        let kind_text = match kind {
            DbErrorKind::Unavailable => "database unavailable",
            DbErrorKind::SchemaMissing => "schema missing, run migrations",
            DbErrorKind::Rejected => "rejected by the database",
            DbErrorKind::Permanent => "database error",
        };
        Self {
            kind,
            kind_text,
            op,
            sqlstate,
            attempts: 1,
            elapsed: Duration::ZERO,
            message,
            write: false,
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn with_attempts(mut self, attempts: u32, elapsed: Duration) -> Self {
        self.attempts = attempts;
        self.elapsed = elapsed;
        self
    }
}

impl crate::retry::Classify for DbError {
    fn class(&self) -> ErrorClass {
        DbError::class(self)
    }
}

/// A setting that cannot be used. Says which variable (or builder method) and what
/// to do; never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("{var} is not set: set it to a PostgreSQL DSN, e.g. 'host=db1,db2 port=5432,5432 user=trader dbname=trading'")]
    Missing {
        /// The variable or builder method.
        var: String,
    },
    /// A setting has a value that cannot be used.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The variable or builder method.
        var: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A TLS file cannot be read or parsed.
    #[error("{var} names '{path}', which cannot be used: {reason}")]
    TlsFile {
        /// The variable or builder method.
        var: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The password file cannot be read or is empty. The message never contains the
    /// password.
    #[error("{var} names '{path}', which cannot be read as the password: {reason}")]
    PasswordFile {
        /// The variable, config field or builder method.
        var: String,
        /// The file.
        path: PathBuf,
        /// Why (an I/O error or "the file is empty").
        reason: String,
    },
}
