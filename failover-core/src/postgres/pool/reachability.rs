//! Whether the database can be reached now, from the outcome of the last attempt:
//! health reads it at once instead of waiting for the retry budget, and the text
//! starts with the word operators grep for.

use super::{lock, PgPool};
use crate::log::Throttle;
use crate::postgres::error::NO_PRIMARY;
use tokio::time::Instant;

/// Whether the database can be reached now, from the outcome of the last attempt.
#[derive(Debug, Default)]
pub(super) struct Link {
    failing: Option<(Instant, String)>,
    warnings: Throttle,
}

/// The short word health details start with, from a failure's full text: what an
/// operator greps for ("connection refused", "no writable host", "timed out after 2s").
pub(crate) fn cause_of(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if text.starts_with(NO_PRIMARY) {
        return text.to_owned();
    }
    let word = if lower.contains("connection refused") {
        "connection refused"
    } else if lower.starts_with("no writable host")
        || lower.contains("does not allow writes")
        || lower.contains("read-only")
        || lower.contains("standby")
    {
        "no writable host"
    } else if lower.contains("timed out") || lower.contains("no answer within") {
        return text.to_owned();
    } else if lower.contains("connection closed") || lower.contains("connection reset") {
        "connection lost"
    } else {
        return text.to_owned();
    };
    if lower.starts_with(word) {
        text.to_owned()
    } else {
        format!("{word}: {text}")
    }
}

impl PgPool {
    /// Why the database cannot be reached **now**: the last attempt (of any operation,
    /// or of the LISTEN connection) failed with a retryable error and none succeeded
    /// since. The text starts with the cause, e.g. "connection refused: …",
    /// "no writable host: …", "every host is in recovery: no primary yet …",
    /// "timed out after 2s". `None` while reachable — also while a statement fails
    /// because another session holds a lock ([`DbErrorKind::Locked`]): the server
    /// answered.
    ///
    /// [`DbErrorKind::Locked`]: crate::postgres::DbErrorKind::Locked
    pub fn unreachable(&self) -> Option<String> {
        lock(&self.inner.link)
            .failing
            .as_ref()
            .map(|(_, t)| t.clone())
    }

    /// Records an attempt that reached a writable server.
    pub(crate) fn reached(&self) {
        let mut link = lock(&self.inner.link);
        if let Some((since, _)) = link.failing.take() {
            tracing::info!(component = self.inner.component, after = ?since.elapsed(), "database reachable again");
        }
        link.warnings.reset();
    }

    /// Records an attempt that could not reach a writable server.
    pub(crate) fn not_reached(&self, text: &str) {
        let cause = cause_of(text);
        let mut link = lock(&self.inner.link);
        let first = link.failing.is_none();
        let since = link
            .failing
            .as_ref()
            .map_or_else(Instant::now, |(at, _)| *at);
        link.failing = Some((since, cause.clone()));
        if first || link.warnings.allow() {
            if first {
                link.warnings.allow();
            }
            tracing::warn!(component = self.inner.component, error = %cause, "database unreachable (logged once per outage, then at most once a minute)");
        }
    }
}
