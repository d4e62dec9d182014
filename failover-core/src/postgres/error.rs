//! Database errors, classified once for every store.

use crate::errors::{DbError, DbErrorKind, Reach};
use crate::retry::{AttemptError, Classify, ErrorClass, GiveUp, RetryError};
use tokio_postgres::error::SqlState;

/// SQLSTATE 55P03 lock_not_available: `lock_timeout` cancelled the statement.
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The words every no-primary error starts with.
pub(crate) const NO_PRIMARY: &str = "every host is in recovery: no primary yet (a promotion under way, or the DSN names only standbys)";

/// One attempt's failure inside the pool.
#[derive(Debug)]
pub(crate) enum PgFailure {
    Query(tokio_postgres::Error),
    Pool(String, ErrorClass),
    /// No connection could be opened; the SQLSTATE the server refused it with, if any
    /// (53300 too many connections, 57P03 starting up …).
    Connect(String, Option<String>),
    /// Every host answered, each in recovery or read-only.
    NoPrimary(String),
}

impl std::fmt::Display for PgFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Query(e) => f.write_str(&describe(e)),
            Self::Pool(m, _) | Self::Connect(m, _) | Self::NoPrimary(m) => f.write_str(m),
        }
    }
}

impl Classify for PgFailure {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Query(e) => classify(e),
            Self::Pool(_, c) => *c,
            Self::Connect(..) | Self::NoPrimary(_) => ErrorClass::Retryable,
        }
    }
}

impl PgFailure {
    /// The SQLSTATE of the failure, when the server sent one.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Query(e) => e.code().map(SqlState::code),
            Self::Connect(_, code) => code.as_deref(),
            Self::Pool(..) | Self::NoPrimary(_) => None,
        }
    }

    /// True when the server answered the statement with an error, so that a single
    /// statement in its own transaction certainly did not take effect. Connection-level
    /// errors (class 08, 57P0x shutdown) leave the outcome open.
    pub(crate) fn refused_by_server(&self) -> bool {
        match self {
            Self::Query(e) => e.as_db_error().is_some_and(|db| {
                let c = db.code().code();
                !c.starts_with("08") && !c.starts_with("57P0")
            }),
            _ => false,
        }
    }
}

/// Where a statement waited for a lock, from the error's context: `while locking
/// tuple (0,1) in relation "kill_switch_state"`, `while updating tuple (0,1) in
/// relation "t"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LockSite {
    /// The relation, as PostgreSQL prints it (unqualified).
    pub(crate) relation: Option<String>,
    /// The tuple's `ctid`, e.g. `(0,1)`.
    pub(crate) tuple: Option<String>,
}

pub(crate) fn lock_site(e: &tokio_postgres::Error) -> LockSite {
    let Some(context) = e.as_db_error().and_then(|db| db.where_()) else {
        return LockSite::default();
    };
    lock_site_of(context)
}

fn lock_site_of(context: &str) -> LockSite {
    let relation = context.find("in relation \"").and_then(|at| {
        let rest = &context[at + "in relation \"".len()..];
        let end = rest.find('"')?;
        Some(rest[..end].to_owned()).filter(|r| !r.is_empty())
    });
    let tuple = context.find("tuple (").and_then(|at| {
        let rest = &context[at + "tuple ".len()..];
        let end = rest.find(')')? + 1;
        let ctid = &rest[..end];
        ctid[1..end - 1]
            .split(',')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| ctid.to_owned())
    });
    LockSite { relation, tuple }
}

/// Full text of a tokio-postgres error, including the server's message and cause
/// (its `Display` says only "db error" for a server error).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Retryable when the failure is about reaching a writable server; permanent otherwise.
///
/// Retryable: connection refused/reset/closed, I/O and timeouts, SQLSTATE class 08,
/// 57P01–57P03 (admin/crash shutdown, cannot connect now), 25006 (read-only
/// transaction: a standby or a demoted primary), 40001 (serialization), 40P01
/// (deadlock), 53300 (too many connections), and a server refused by
/// `target_session_attrs=read-write`.
///
/// 55P03 (lock_not_available: `lock_timeout` cancelled the statement) is permanent
/// here, so the pool does not wait for the same session again and again; the
/// [`DbError`] it becomes ([`DbErrorKind::Locked`]) is retryable for callers.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(code) = e.code() {
        return classify_sqlstate(code);
    }
    // No SQLSTATE: the connection itself failed (I/O, closed, TLS, session attrs).
    if e.is_closed() {
        return ErrorClass::Retryable;
    }
    let text = describe(e).to_ascii_lowercase();
    let permanent = [
        "password authentication",
        "invalid configuration",
        "certificate",
        "unknown ca",
        "invalid peer",
        "unexpected message",
    ];
    if permanent.iter().any(|p| text.contains(p)) {
        return ErrorClass::Permanent;
    }
    ErrorClass::Retryable
}

/// Classification by SQLSTATE alone.
pub fn classify_sqlstate(code: &SqlState) -> ErrorClass {
    let c = code.code();
    let retryable = c.starts_with("08")
        || matches!(
            c,
            "57P01" | "57P02" | "57P03" | "25006" | "40001" | "40P01" | "53300"
        );
    if retryable {
        ErrorClass::Retryable
    } else {
        ErrorClass::Permanent
    }
}

fn kind_of(failure: &AttemptError<PgFailure>, give_up: GiveUp) -> (DbErrorKind, Option<String>) {
    match failure {
        AttemptError::Failed(f) => kind_of_code(f.sqlstate(), give_up),
        AttemptError::TimedOut(_) => kind_of_code(None, give_up),
    }
}

pub(crate) fn from_retry(
    op: &'static str,
    e: RetryError<PgFailure>,
    hint: Option<String>,
    reach: Reach,
) -> DbError {
    let (kind, sqlstate) = kind_of(&e.last, e.reason);
    let mut message = e.last.to_string();
    if let (AttemptError::TimedOut(_), Some(hint)) = (&e.last, hint) {
        message.push_str(&format!(" (last connect: {hint})"));
    }
    let mut err = DbError::new(kind, op, sqlstate, message).with_reach(reach);
    if let AttemptError::Failed(PgFailure::NoPrimary(_)) = &e.last {
        // The last attempt found no primary; an earlier one may still have sent the
        // statement, so keep the reach of all attempts.
        err = err.with_no_primary().with_reach(reach);
    }
    err.with_attempts(e.attempts, e.elapsed)
}

/// Classifies one failed statement that ran outside [`PgPool::run`](super::PgPool::run)
/// (for example inside a caller's own transaction) into a [`DbError`].
pub fn db_error(op: &'static str, e: &tokio_postgres::Error) -> DbError {
    let give_up = match classify(e) {
        ErrorClass::Retryable => GiveUp::BudgetExhausted,
        ErrorClass::Permanent => GiveUp::Permanent,
    };
    let (kind, sqlstate) = match e.code() {
        Some(code) => kind_of_code(Some(code.code()), give_up),
        None => kind_of_code(None, give_up),
    };
    let reach = if e.as_db_error().is_some_and(|db| {
        let c = db.code().code();
        !c.starts_with("08") && !c.starts_with("57P0")
    }) {
        Reach::Refused
    } else {
        Reach::Unknown
    };
    DbError::new(kind, op, sqlstate, describe(e)).with_reach(reach)
}

fn kind_of_code(code: Option<&str>, give_up: GiveUp) -> (DbErrorKind, Option<String>) {
    let kind = match (give_up, code) {
        (_, Some(LOCK_NOT_AVAILABLE)) => DbErrorKind::Locked,
        (GiveUp::BudgetExhausted, _) => DbErrorKind::Unavailable,
        (_, Some("42P01" | "42883" | "3F000")) => DbErrorKind::SchemaMissing,
        (_, Some(c)) if c.starts_with("23") || c == "P0001" => DbErrorKind::Rejected,
        _ => DbErrorKind::Permanent,
    };
    (kind, code.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify_as_the_design_says() {
        let table: &[(&str, ErrorClass, &str)] = &[
            ("08006", ErrorClass::Retryable, "connection failure"),
            ("08001", ErrorClass::Retryable, "cannot connect"),
            ("57P01", ErrorClass::Retryable, "admin shutdown"),
            ("57P02", ErrorClass::Retryable, "crash shutdown"),
            ("57P03", ErrorClass::Retryable, "cannot connect now"),
            (
                "25006",
                ErrorClass::Retryable,
                "read-only: a standby or demoted primary",
            ),
            ("40001", ErrorClass::Retryable, "serialization failure"),
            ("40P01", ErrorClass::Retryable, "deadlock"),
            ("53300", ErrorClass::Retryable, "too many connections"),
            (
                "42P01",
                ErrorClass::Permanent,
                "undefined table: run migrations",
            ),
            ("42883", ErrorClass::Permanent, "undefined function"),
            ("23505", ErrorClass::Permanent, "unique violation"),
            ("42501", ErrorClass::Permanent, "permission denied"),
            ("28P01", ErrorClass::Permanent, "bad password"),
            ("P0001", ErrorClass::Permanent, "raised by a trigger"),
            ("26000", ErrorClass::Permanent, "prepared statement missing"),
            (
                "55P03",
                ErrorClass::Permanent,
                "lock timeout: not waited for again by the pool",
            ),
        ];
        for (code, class, what) in table {
            assert_eq!(
                classify_sqlstate(&SqlState::from_code(code)),
                *class,
                "{code} ({what})"
            );
        }
    }

    #[test]
    fn sqlstates_map_to_the_kinds_stores_turn_into_typed_errors() {
        let table: &[(Option<&str>, GiveUp, DbErrorKind)] = &[
            (None, GiveUp::BudgetExhausted, DbErrorKind::Unavailable),
            (
                Some("25006"),
                GiveUp::BudgetExhausted,
                DbErrorKind::Unavailable,
            ),
            (Some("42P01"), GiveUp::Permanent, DbErrorKind::SchemaMissing),
            (Some("42883"), GiveUp::Permanent, DbErrorKind::SchemaMissing),
            (Some("3F000"), GiveUp::Permanent, DbErrorKind::SchemaMissing),
            (Some("23505"), GiveUp::Permanent, DbErrorKind::Rejected),
            (Some("P0001"), GiveUp::Permanent, DbErrorKind::Rejected),
            (Some("42501"), GiveUp::Permanent, DbErrorKind::Permanent),
            (Some("55P03"), GiveUp::Permanent, DbErrorKind::Locked),
            (Some("55P03"), GiveUp::BudgetExhausted, DbErrorKind::Locked),
        ];
        for (code, give_up, kind) in table {
            assert_eq!(
                kind_of_code(*code, *give_up).0,
                *kind,
                "{code:?} {give_up:?}"
            );
        }
    }

    #[test]
    fn lock_errors_name_the_relation_and_tuple_waited_for() {
        let site = lock_site_of(
            "while locking tuple (0,1) in relation \"kill_switch_state\"\nSQL statement \"SELECT …\"\nPL/pgSQL function engage() line 1",
        );
        assert_eq!(site.relation.as_deref(), Some("kill_switch_state"));
        assert_eq!(site.tuple.as_deref(), Some("(0,1)"));
        let site = lock_site_of("while updating tuple (12,3) in relation \"t\"");
        assert_eq!(
            (site.relation.as_deref(), site.tuple.as_deref()),
            (Some("t"), Some("(12,3)"))
        );
        assert_eq!(
            lock_site_of("PL/pgSQL function f() line 3"),
            LockSite::default()
        );
    }

    #[test]
    fn health_causes_start_with_the_word_operators_grep_for() {
        use crate::postgres::pool::cause_of;
        let table = [
            (
                "no writable host: 127.0.0.1:5432: error connecting to server: Connection refused (os error 111)",
                "connection refused: ",
            ),
            (
                "no writable host: 127.0.0.1:5433: server does not allow writes",
                "no writable host: ",
            ),
            ("timed out after 2s", "timed out after 2s"),
            ("connection closed", "connection lost: "),
            (
                "every host is in recovery: no primary yet (a promotion under way, or the DSN names only standbys): 127.0.0.1:5433: error connecting to server: database does not allow writes",
                "every host is in recovery: no primary yet",
            ),
        ];
        for (text, start) in table {
            assert!(
                cause_of(text).starts_with(start),
                "{text} -> {}",
                cause_of(text)
            );
        }
    }
}
