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
    /// too many connections, no primary yet …). Try again later or fail over.
    /// [`DbError::no_primary`] says when every host answered but each was in recovery
    /// or read-only; [`DbError::reached_server`] whether any statement was sent.
    Unavailable,
    /// The statement waited longer than `lock_timeout` for a row or table lock held by
    /// another session (SQLSTATE 55P03) and was cancelled: nothing was written. The
    /// database is up; [`DbError::blockers`] names the sessions in the way. Ending
    /// them (or waiting for them to commit) and trying again helps.
    Locked,
    /// A table or function is missing: the migrations were not run.
    SchemaMissing,
    /// A constraint or trigger refused the statement (for example an append-only table).
    Rejected,
    /// Anything else that retrying cannot fix (permissions, syntax, bad data).
    Permanent,
}

impl DbErrorKind {
    /// What the kind means, as a [`DbError`]'s message starts: "database
    /// unavailable", "locked by another session", "no primary" …
    fn text(self) -> &'static str {
        match self {
            Self::Unavailable => "database unavailable",
            Self::Locked => "locked by another session",
            Self::SchemaMissing => "schema missing, run migrations",
            Self::Rejected => "rejected by the database",
            Self::Permanent => "database error",
        }
    }
}

/// How far a failed operation got, which decides what is known of a write's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reach {
    /// No connection to a server could be opened (refused, 53300 too many
    /// connections, 57P03 starting up, authentication failed, no primary): nothing
    /// was sent, so nothing was written.
    NotConnected,
    /// The server answered the statement with an error (refused, cancelled by
    /// `lock_timeout` …): it did not take effect.
    Refused,
    /// The statement may have reached the server and its answer was lost (the
    /// connection dropped or the attempt timed out): a write may or may not have
    /// committed.
    Unknown,
}

/// A session holding a lock that another statement waited for: what an operator
/// needs to find and end it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Blocker {
    /// The server process id (`pg_terminate_backend(pid)` ends the session).
    pub pid: i32,
    /// The locked relation (table) it holds a lock on.
    pub relation: String,
    /// Its `application_name` (`psql`, a service name …); empty when unset.
    pub application_name: String,
    /// The login, when visible.
    pub user: Option<String>,
    /// Its state (`idle in transaction`, `active` …); `None` when the login asking
    /// may not see it (grant it `pg_read_all_stats`).
    pub state: Option<String>,
    /// How long it has been in that state.
    pub state_for: Option<std::time::Duration>,
}

impl std::fmt::Display for Blocker {
    /// `pid 4242 (psql, user ops, idle in transaction for 31 s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (", self.pid)?;
        let app = if self.application_name.is_empty() {
            "no application_name"
        } else {
            &self.application_name
        };
        f.write_str(app)?;
        if let Some(user) = &self.user {
            write!(f, ", user {user}")?;
        }
        match (&self.state, self.state_for) {
            (Some(state), Some(d)) => write!(f, ", {state} for {} s", d.as_secs())?,
            (Some(state), None) => write!(f, ", {state}")?,
            (None, _) => f.write_str(", state not visible to this login")?,
        }
        f.write_str(")")
    }
}

/// `kill_switch_state is locked by pid 4242 (psql, user ops, idle in transaction for
/// 31 s); end it with SELECT pg_terminate_backend(4242)`: what to say about `blockers`
/// of `relation` (all of them when there are several).
pub fn describe_blockers(relation: Option<&str>, blockers: &[Blocker]) -> String {
    let what = relation.unwrap_or("the row or table");
    if blockers.is_empty() {
        return format!(
            "{what} is locked by another session, which ended or could not be named since; \
             look for it in pg_locks joined with pg_stat_activity"
        );
    }
    let list: Vec<String> = blockers.iter().map(Blocker::to_string).collect();
    let ends: Vec<String> = blockers
        .iter()
        .map(|b| format!("pg_terminate_backend({})", b.pid))
        .collect();
    let it = if blockers.len() == 1 { "it" } else { "them" };
    format!(
        "{what} is locked by {}; end {it} with SELECT {}",
        list.join(", "),
        ends.join(", ")
    )
}

/// A classified database failure. Cheap to clone; never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {} after {attempts} attempt(s) in {elapsed:?}: {message}", .kind.text())]
pub struct DbError {
    kind: DbErrorKind,
    op: &'static str,
    sqlstate: Option<String>,
    attempts: u32,
    elapsed: Duration,
    message: String,
    write: bool,
    reach: Reach,
    no_primary: bool,
    /// Shared, so the error stays small and cheap to clone.
    blockers: Option<std::sync::Arc<[Blocker]>>,
}

/// What to do when no connection could be opened, by cause.
const NOT_CONNECTED_SLOTS: &str = " (nothing was written: no connection to the server could be opened, SQLSTATE 53300; every connection slot is taken: end idle sessions, or give the operators' login a reserved slot (PostgreSQL 16+: GRANT pg_use_reserved_connections TO <login>))";
const NOT_CONNECTED_STARTING: &str = " (nothing was written: no connection to the server could be opened, SQLSTATE 57P03; the server is starting up, shutting down or in crash recovery: try again in a moment)";
const NOT_CONNECTED_AUTH: &str = " (nothing was written: the server refused the login; check the user, the password and pg_hba.conf)";
const NOT_CONNECTED_NO_PRIMARY: &str = " (nothing was written: every host is in recovery or read-only; wait for the promotion to finish, or point the DSN at the primary)";
const NOT_CONNECTED: &str = " (nothing was written: no connection to the server could be opened; check that the server runs and that the DSN names it, then try again)";
const LOCKED: &str = " (nothing was written: the statement was cancelled after waiting for the lock; end the session holding it, or wait for it to finish, then try again)";
const REFUSED_RETRYABLE: &str = " (nothing was written: the server refused the statement, e.g. as read-only or after a serialization failure; trying again is safe)";
const UNKNOWN: &str = " (the write's outcome is unknown; retrying with the same Audit is safe)";

impl DbError {
    /// Marks the failure as one of a write, so that [`outcome_note`](Self::outcome_note)
    /// says what is known of its outcome.
    #[must_use]
    pub fn during_write(mut self) -> Self {
        self.write = true;
        self
    }

    /// True when a write failed so that its outcome is unknown: the statement may have
    /// reached the server and its answer was lost ([`Reach::Unknown`]). A retry with
    /// the same request id is safe and tells. False when no connection was ever opened
    /// or the server refused or cancelled the statement: then nothing was written.
    pub fn outcome_unknown(&self) -> bool {
        self.write && self.reach == Reach::Unknown
    }

    /// True when the statement may have reached a server: false when no connection
    /// could be opened at all ([`Reach::NotConnected`]), so nothing was sent.
    pub fn reached_server(&self) -> bool {
        self.reach != Reach::NotConnected
    }

    /// True when every host answered but each was in recovery or read-only: no
    /// primary yet (a promotion under way, or the DSN names only standbys). The kind
    /// is [`DbErrorKind::Unavailable`]; the message starts with "every host is in
    /// recovery: no primary yet"; nothing was sent.
    pub fn no_primary(&self) -> bool {
        self.no_primary
    }

    /// Marks the error as "no primary yet" (see [`no_primary`](Self::no_primary));
    /// nothing was sent.
    #[must_use]
    pub fn with_no_primary(mut self) -> Self {
        self.no_primary = true;
        self.reach = Reach::NotConnected;
        self
    }

    /// How far the operation got.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// For store error messages, what is known of a write's outcome and what to do:
    /// `" (the write's outcome is unknown; …)"` when [`outcome_unknown`](Self::outcome_unknown);
    /// `" (nothing was written: …)"` with the advice for the cause (every connection
    /// slot taken, server starting up, login refused, no primary, a lock in the way)
    /// when the write certainly did not happen; empty for reads and for refusals,
    /// whose own message says it all. Reads never claim a write's outcome.
    pub fn outcome_note(&self) -> &'static str {
        if !self.write {
            return "";
        }
        match self.reach {
            Reach::Unknown => UNKNOWN,
            Reach::NotConnected => match (self.kind, self.sqlstate.as_deref()) {
                _ if self.no_primary => NOT_CONNECTED_NO_PRIMARY,
                (_, Some("53300")) => NOT_CONNECTED_SLOTS,
                (_, Some("57P03")) => NOT_CONNECTED_STARTING,
                (_, Some(c)) if c.starts_with("28") => NOT_CONNECTED_AUTH,
                _ => NOT_CONNECTED,
            },
            Reach::Refused => match self.kind {
                DbErrorKind::Locked => LOCKED,
                DbErrorKind::Unavailable => REFUSED_RETRYABLE,
                _ => "",
            },
        }
    }

    /// The sessions holding the lock a [`DbErrorKind::Locked`] statement waited for
    /// (their pids are what `pg_terminate_backend` takes); empty for other kinds, or
    /// when they could not be looked up (the message then says so).
    pub fn blockers(&self) -> &[Blocker] {
        self.blockers.as_deref().unwrap_or(&[])
    }

    /// The kind.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// The operation that failed, e.g. `kill_switch.engage`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The SQLSTATE, when the server answered with one (also when it refused the
    /// connection, e.g. 53300 too many connections).
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

    /// Retryable (`Unavailable`, `Locked`: trying again later may succeed) or
    /// permanent.
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            DbErrorKind::Unavailable | DbErrorKind::Locked => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        }
    }

    /// A classified error (used by the pool and by stores that wrap their own checks).
    /// Its [`reach`](Self::reach) is [`Reach::Unknown`] for `Unavailable` (the
    /// cautious guess), else
    /// [`Reach::Refused`] (the server answered).
    pub fn new(
        kind: DbErrorKind,
        op: &'static str,
        sqlstate: Option<String>,
        message: String,
    ) -> Self {
        let reach = match kind {
            DbErrorKind::Unavailable => Reach::Unknown,
            _ => Reach::Refused,
        };
        Self {
            kind,
            op,
            sqlstate,
            attempts: 1,
            elapsed: Duration::ZERO,
            message,
            write: false,
            reach,
            no_primary: false,
            blockers: None,
        }
    }

    /// The same error with another [`Reach`] (for stores that know better).
    #[must_use]
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn with_attempts(mut self, attempts: u32, elapsed: Duration) -> Self {
        self.attempts = attempts;
        self.elapsed = elapsed;
        self
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn with_blockers(mut self, blockers: Vec<Blocker>, text: String) -> Self {
        self.blockers = (!blockers.is_empty()).then(|| blockers.into());
        self.message = format!("{text}: {}", self.message);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_error(kind: DbErrorKind, sqlstate: Option<&str>, reach: Reach) -> DbError {
        DbError::new(
            kind,
            "kill_switch.engage",
            sqlstate.map(str::to_owned),
            "x".into(),
        )
        .with_reach(reach)
        .during_write()
    }

    #[test]
    fn a_write_that_never_reached_the_server_says_nothing_was_written() {
        let slots = write_error(DbErrorKind::Unavailable, Some("53300"), Reach::NotConnected);
        assert!(!slots.reached_server());
        assert!(!slots.outcome_unknown());
        let note = slots.outcome_note();
        assert!(note.contains("nothing was written"), "{note}");
        assert!(note.contains("53300"), "{note}");
        assert!(
            note.contains("GRANT pg_use_reserved_connections TO <login>"),
            "{note}"
        );
        let starting = write_error(DbErrorKind::Unavailable, Some("57P03"), Reach::NotConnected);
        assert!(starting.outcome_note().contains("starting up"));
        let auth = write_error(DbErrorKind::Permanent, Some("28P01"), Reach::NotConnected);
        assert!(auth.outcome_note().contains("refused the login"));
        let refused = write_error(DbErrorKind::Unavailable, None, Reach::NotConnected);
        assert!(refused.outcome_note().starts_with(" (nothing was written"));
        let no_primary = DbError::new(DbErrorKind::Unavailable, "op", None, "x".into())
            .with_no_primary()
            .during_write();
        assert!(no_primary.no_primary());
        assert!(!no_primary.reached_server());
        assert!(no_primary.outcome_note().contains("wait for the promotion"));
    }

    #[test]
    fn only_a_statement_lost_in_flight_leaves_the_outcome_unknown() {
        let lost = write_error(DbErrorKind::Unavailable, None, Reach::Unknown);
        assert!(lost.reached_server() && lost.outcome_unknown());
        assert!(lost.outcome_note().contains("outcome is unknown"));
        // The cautious default of a store's own Unavailable error.
        let default = DbError::new(DbErrorKind::Unavailable, "op", None, "x".into()).during_write();
        assert!(default.outcome_unknown());
        let locked = write_error(DbErrorKind::Locked, Some("55P03"), Reach::Refused);
        assert!(locked.reached_server() && !locked.outcome_unknown());
        assert!(locked.outcome_note().contains("nothing was written"));
        let read_only = write_error(DbErrorKind::Unavailable, Some("25006"), Reach::Refused);
        assert!(!read_only.outcome_unknown());
        assert!(read_only.outcome_note().contains("nothing was written"));
        let rejected = write_error(DbErrorKind::Rejected, Some("23505"), Reach::Refused);
        assert_eq!(rejected.outcome_note(), "");
        // Reads never claim a write's outcome.
        let read = DbError::new(DbErrorKind::Unavailable, "op", None, "x".into());
        assert_eq!(read.outcome_note(), "");
    }

    #[test]
    fn blockers_are_named_with_how_to_end_them() {
        let b = Blocker {
            pid: 4242,
            relation: "kill_switch_state".into(),
            application_name: "psql".into(),
            user: Some("ops".into()),
            state: Some("idle in transaction".into()),
            state_for: Some(Duration::from_secs(31)),
        };
        assert_eq!(
            describe_blockers(Some("kill_switch_state"), std::slice::from_ref(&b)),
            "kill_switch_state is locked by pid 4242 (psql, user ops, idle in transaction for 31 s); end it with SELECT pg_terminate_backend(4242)"
        );
        let other = Blocker {
            pid: 7,
            ..b.clone()
        };
        let text = describe_blockers(None, &[b, other]);
        assert!(
            text.ends_with(
                "end them with SELECT pg_terminate_backend(4242), pg_terminate_backend(7)"
            ),
            "{text}"
        );
        let err = DbError::new(
            DbErrorKind::Locked,
            "op",
            Some("55P03".into()),
            "ERROR".into(),
        );
        assert_eq!(err.class(), ErrorClass::Retryable);
        assert!(err.blockers().is_empty());
    }
}
