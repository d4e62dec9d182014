#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod elector;
mod fence;
#[cfg(feature = "http")]
pub mod http;
mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod split_brain;

pub use elector::{ElectorConfig, FollowerReason, LeaderElector, Leadership};
pub use failover_core::{ConfigError, DbError, DbErrorKind};
pub use fence::MemoryFence;
pub use memory::{Clock, ManualClock, MemoryLeaseFencer, TokioClock};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PgStore, PostgresLeaseFencer};
pub use split_brain::{choose_authoritative, Anomaly, Observation, SplitBrainDetector};

use std::time::Duration;
use tokio::time::Instant;

/// The error code of a write refused because its fencing token is older than the
/// newest the resource has seen. It opens the message of [`Error::FencingToken`]
/// (and of the SQL error raised by `fencing_check`), so logs can be searched
/// for it.
pub const FENCING_TOKEN: &str = "FENCING_TOKEN";

/// Longest resource or holder name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Shortest lease accepted.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// Longest lease accepted: a crashed holder blocks its resource for at most this long.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The share of the ttl by which a holder's local deadline precedes the store's
/// expiry, unless a store is configured otherwise (`with_safety_margin`).
pub const DEFAULT_SAFETY_MARGIN: f64 = 0.1;

/// A granted lease: the right to act for `resource` until [`deadline`](Self::deadline),
/// and the fencing token to attach to every write made under it.
///
/// The deadline is local and monotonic: the instant read *before* the request was
/// sent, plus the ttl, less the store's safety margin. The store's own expiry (judged
/// by its clock from the moment it handled the request) is never earlier, so a
/// holder that stops acting at the deadline stops before anyone else can be granted
/// the resource — unless the process is paused past it, which is what the fencing
/// token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    resource: String,
    holder: String,
    token: u64,
    ttl: Duration,
    deadline: Instant,
}

impl Lease {
    /// A lease granted or renewed by a request sent at `sent_at`.
    pub(crate) fn issued(
        resource: &str,
        holder: &str,
        token: u64,
        ttl: Duration,
        sent_at: Instant,
        safety_margin: f64,
    ) -> Self {
        Self {
            resource: resource.to_owned(),
            holder: holder.to_owned(),
            token,
            ttl,
            deadline: sent_at + ttl - ttl.mul_f64(safety_margin),
        }
    }

    /// The leased resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fencing token: strictly greater than every token issued before for this
    /// resource. Attach it to every write.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The requested lease duration.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The local instant at which the holder must stop acting (already less the
    /// safety margin).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the local deadline is still ahead (reads the clock).
    pub fn is_live(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Time left before the local deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The unexpired holder of a resource, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLease {
    /// The resource.
    pub resource: String,
    /// Who holds it.
    pub holder: String,
    /// The token of the holder's lease.
    pub token: u64,
    /// Time left until the store expires the lease, judged by the store's clock at
    /// the time of the read.
    pub expires_in: Duration,
}

/// Why a lease can no longer be renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// A newer token was issued for the resource (to another holder, or to the same
    /// holder by a later `acquire`).
    Superseded {
        /// The newest token issued.
        token: u64,
    },
    /// The lease expired by the store's clock before the renewal reached it.
    Expired,
    /// The lease was released.
    Released,
    /// The store has no record of this token. With PostgreSQL this happens when the
    /// acquire was lost in an asynchronous failover.
    Unrecorded,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Superseded { token } => write!(f, "superseded by token {token}"),
            Self::Expired => f.write_str("expired before the renewal reached the store"),
            Self::Released => f.write_str("released"),
            Self::Unrecorded => f.write_str(
                "the store has no record of this token (lost in an asynchronous database failover?)",
            ),
        }
    }
}

/// Errors of every lease store, fenced write and elector. Each says what happened and
/// what to do; a refused call changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input: an empty, whitespace-only, padded, too long or control-character
    /// name, a ttl out of range, or a token no store issues.
    #[error("refused, nothing changed: {what} {problem}")]
    Invalid {
        /// What was wrong: `resource`, `holder`, `ttl`, `token` or an elector setting.
        what: &'static str,
        /// Why, and what to pass instead.
        problem: String,
    },
    /// Another holder has an unexpired lease on the resource.
    #[error("{resource} is held by {holder} (token {token}) for another {expires_in:?}: stay a follower and campaign again after that")]
    Held {
        /// The resource.
        resource: String,
        /// The current holder.
        holder: String,
        /// The current holder's token.
        token: u64,
        /// Time left on the holder's lease (store's clock).
        expires_in: Duration,
    },
    /// The lease cannot be renewed: stop acting as holder.
    #[error("lease on {resource} with token {token} is lost ({reason}): stop acting as its holder and campaign again")]
    LeaseLost {
        /// The resource.
        resource: String,
        /// The token of the lost lease.
        token: u64,
        /// Why.
        reason: LostReason,
    },
    /// A fenced write carried a token older than the newest the resource has seen: the
    /// writer is a stale leader. Error code [`FENCING_TOKEN`].
    #[error("FENCING_TOKEN: token {token} is older than {highest} for resource {resource}")]
    FencingToken {
        /// The resource.
        resource: String,
        /// The refused token.
        token: u64,
        /// The newest token the resource has accepted.
        highest: u64,
    },
    /// The tables or functions are missing.
    #[error("fencing_leases/fencing_check missing: run fencing migrations (PostgresLeaseFencer::migrate or tradepulse_fencing::postgres::migrate) ({source})")]
    SchemaMissing {
        /// The database error.
        source: DbError,
    },
    /// The database could not be reached within the retry budget. The outcome of an
    /// acquire is unknown: acquire again (a lease granted meanwhile is superseded).
    #[error("fencing database unavailable: a leader stops at its local deadline; retrying is safe (a repeated acquire supersedes the first grant): {source}")]
    Unavailable {
        /// The database error.
        source: DbError,
    },
    /// Another session holds the row this command must change (a transaction left
    /// open in psql, an application idle in transaction): the wait was bounded by
    /// `lock_timeout`, nothing was written, and the message names the session and
    /// the statement that ends it ([`DbError::blockers`] has their pids).
    #[error("fencing store locked, nothing was written: {source}")]
    Locked {
        /// The database error, with the blocking sessions.
        source: DbError,
    },
    /// Any other database error.
    #[error("fencing database error: {source}")]
    Database {
        /// The database error.
        source: DbError,
    },
    /// Settings that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    /// `Some("FENCING_TOKEN")` for a refused fenced write, `None` otherwise.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::FencingToken { .. } => Some(FENCING_TOKEN),
            _ => None,
        }
    }

    /// Parses the message that [`Error::FencingToken`] displays (and that the SQL
    /// function `fencing_check` raises), wherever it appears in `text`.
    pub(crate) fn parse_fencing(text: &str) -> Option<Self> {
        let rest = &text[text.find("FENCING_TOKEN: token ")? + "FENCING_TOKEN: token ".len()..];
        let (token, rest) = rest.split_once(" is older than ")?;
        let (highest, resource) = rest.split_once(" for resource ")?;
        Some(Self::FencingToken {
            resource: resource.trim_end().to_owned(),
            token: token.parse().ok()?,
            highest: highest.parse().ok()?,
        })
    }
}

impl failover_core::ControlError for Error {
    fn outcome(&self) -> failover_core::Outcome<'_> {
        use failover_core::Outcome;
        let (status, code) = match self {
            Self::Unavailable { .. } => return Outcome::Unavailable,
            Self::Locked { .. } => return Outcome::Locked,
            Self::SchemaMissing { .. } => return Outcome::SchemaMissing,
            Self::Database { .. } => return Outcome::Failed,
            Self::Invalid { .. } => (400, "invalid"),
            Self::Config(_) => (400, "invalid_config"),
            Self::Held { .. } => (409, "held"),
            Self::LeaseLost { .. } => (409, "lease_lost"),
            Self::FencingToken { .. } => (409, FENCING_TOKEN),
        };
        Outcome::Invalid { status, code }
    }
}

impl From<DbError> for Error {
    fn from(source: DbError) -> Self {
        if let Some(fencing) = Error::parse_fencing(source.message()) {
            return fencing;
        }
        match source.kind() {
            DbErrorKind::Unavailable => Self::Unavailable { source },
            DbErrorKind::SchemaMissing => Self::SchemaMissing { source },
            DbErrorKind::Locked => Self::Locked { source },
            _ => Self::Database { source },
        }
    }
}

/// Where leases live.
///
/// # Contract
/// * `acquire(resource, holder, ttl)` grants the resource when it has no unexpired
///   holder, or when `holder` itself is the unexpired holder (a restarted process
///   re-acquiring under its name); otherwise it returns [`Error::Held`] naming the
///   holder. Every grant carries a fencing token strictly greater than every token
///   issued before for that resource — across release, expiry, process crashes and
///   (PostgreSQL) database failover — so a token is never reused. A same-holder
///   re-acquire supersedes the holder's previous lease.
/// * Expiry is judged by the store's clock (the database clock for PostgreSQL): a
///   lease is unexpired while `now < granted_at + ttl`.
/// * `renew(lease)` succeeds only while the store still has this exact holder and
///   token and the lease is unexpired; it extends the lease by its ttl from the
///   store's now and keeps the token. Otherwise it returns [`Error::LeaseLost`]
///   saying why (superseded, expired, released, unrecorded).
/// * `release(lease)` frees the resource if this lease is still the current one, and
///   is otherwise a no-op (idempotent; a newer holder is never released).
/// * `current(resource)` returns the unexpired holder, if any.
/// * At most one holder is unexpired at any time.
/// * Bad input (empty, whitespace-only, padded, control-character or longer than
///   [`MAX_NAME_CHARS`] names; a ttl outside [`MIN_TTL`]..=[`MAX_TTL`]) is
///   [`Error::Invalid`] and changes nothing.
/// * The returned [`Lease`]'s local deadline is the instant read before the request
///   plus ttl less the safety margin.
#[async_trait::async_trait]
pub trait LeaseFencer: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the resource for `holder` for `ttl`, with a new fencing token.
    async fn acquire(&self, resource: &str, holder: &str, ttl: Duration) -> Result<Lease, Error>;
    /// Extends a lease that is still current and unexpired; same token, new deadline.
    async fn renew(&self, lease: &Lease) -> Result<Lease, Error>;
    /// Gives the resource up if this lease is still current; otherwise does nothing.
    async fn release(&self, lease: &Lease) -> Result<(), Error>;
    /// The unexpired holder of `resource`, if any.
    async fn current(&self, resource: &str) -> Result<Option<CurrentLease>, Error>;
}

/// Checks a resource or holder name.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), Error> {
    let problem = if value.is_empty() {
        "is empty".to_owned()
    } else if value.trim().is_empty() {
        "is only whitespace".to_owned()
    } else if value.trim() != value {
        "has leading or trailing whitespace, which would name a different lease".to_owned()
    } else if value.chars().any(char::is_control) {
        "contains control characters".to_owned()
    } else if value.chars().count() > MAX_NAME_CHARS {
        format!("is longer than {MAX_NAME_CHARS} characters")
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what,
        problem: format!(
            "{problem}: pass a printable name of 1 to {MAX_NAME_CHARS} characters, e.g. 'btc-usd' or 'engine-a'"
        ),
    })
}

/// Checks a lease duration.
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), Error> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Ok(());
    }
    Err(Error::Invalid {
        what: "ttl",
        problem: format!(
            "{ttl:?} is out of range: pass {MIN_TTL:?} to {MAX_TTL:?} (a few renew intervals, e.g. 2s)"
        ),
    })
}

/// Checks a fencing token given to a fenced write.
pub(crate) fn check_token(token: u64) -> Result<(), Error> {
    if token == 0 || token > i64::MAX as u64 {
        return Err(Error::Invalid {
            what: "token",
            problem: format!(
                "{token} was never issued by a lease store: pass the token of your lease (1 to 2^63-1)"
            ),
        });
    }
    Ok(())
}

/// Clamps a configured safety margin to a sane share of the ttl.
pub(crate) fn clamp_margin(share: f64) -> f64 {
    if share.is_nan() {
        DEFAULT_SAFETY_MARGIN
    } else {
        share.clamp(0.0, 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_message_round_trips_through_the_parser() {
        let err = Error::FencingToken {
            resource: "btc usd/perp".into(),
            token: 41,
            highest: 42,
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "FENCING_TOKEN: token 41 is older than 42 for resource btc usd/perp"
        );
        let parsed = Error::parse_fencing(&format!("ERROR (TF001): {text}")).unwrap();
        assert!(matches!(
            parsed,
            Error::FencingToken { ref resource, token: 41, highest: 42 } if resource == "btc usd/perp"
        ));
        assert_eq!(parsed.code(), Some(FENCING_TOKEN));
        assert!(Error::parse_fencing("unrelated").is_none());
    }

    #[test]
    fn names_ttls_and_tokens_are_checked() {
        for bad in ["", "  ", " a", "a ", "a\nb", "a\u{0}", &"x".repeat(201)] {
            assert!(
                matches!(
                    check_name("resource", bad),
                    Err(Error::Invalid {
                        what: "resource",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(check_name("holder", "engine a/ü").is_ok());
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(MAX_TTL + Duration::from_secs(1)).is_err());
        assert!(check_ttl(Duration::from_secs(2)).is_ok());
        assert!(check_token(0).is_err());
        assert!(check_token(u64::MAX).is_err());
        assert!(check_token(1).is_ok());
    }

    #[test]
    fn the_deadline_is_the_send_instant_plus_ttl_less_the_margin() {
        let sent = Instant::now();
        let lease = Lease::issued("r", "h", 7, Duration::from_secs(10), sent, 0.1);
        assert_eq!(lease.deadline(), sent + Duration::from_secs(9));
        assert_eq!(lease.token(), 7);
    }
}
