//! Order-rate throttles: a limit of new orders per second (plus a burst) on a
//! symbol, set through the audited store, carried on the change feed like a mode,
//! and enforced by the hot-path handle ([`SymbolModes::admit`](crate::SymbolModes::admit)).
//!
//! # Per process, and how a fleet divides it
//! A limit is enforced **per handle**: every [`SymbolModes`](crate::SymbolModes) (and its clones, which
//! share it) holds its own token bucket per symbol. Spawn one handle per process and
//! clone it; two handles in one process would each admit the limit. `50/s` on `BTC-USD` lets each gateway process place
//! 50 new orders a second on it. A fleet that must stay under a total divides the
//! total by the number of processes that place orders on the symbol and sets that
//! (10 gateways under a fleet-wide 500/s: `throttle set BTC-USD 50/s`). Counting
//! across processes would put a network round trip on every order.
//!
//! # The bucket
//! A GCRA ("leaky bucket as a meter") in one atomic word per symbol: the
//! theoretical arrival time of the next order. `admit` reads the packed limit, the
//! process's [`CoarseClock`] and that word, and takes a token with one
//! compare-and-swap; a refusal writes nothing but its counter. No lock, no
//! allocation, no system clock read.

use crate::Transition;
use failover_core::clock::CoarseClock;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A limit of new orders: `per_second` on average, up to `burst` at once.
/// Written and parsed as `50/s` (with the burst given separately); displayed as
/// `50/s burst 100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawThrottle", into = "RawThrottle")]
pub struct Throttle {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

#[derive(Serialize, Deserialize)]
struct RawThrottle {
    per_second: u32,
    burst: u32,
}

impl TryFrom<RawThrottle> for Throttle {
    type Error = ThrottleError;
    fn try_from(raw: RawThrottle) -> Result<Self, ThrottleError> {
        Self::new(raw.per_second, raw.burst)
    }
}

impl From<Throttle> for RawThrottle {
    fn from(t: Throttle) -> Self {
        Self {
            per_second: t.per_second(),
            burst: t.burst(),
        }
    }
}

/// A limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThrottleError {
    /// Zero orders a second or a zero burst.
    #[error("a throttle of 0 orders stops trading: use a mode (CANCEL_ONLY) to stop new orders; a throttle needs at least 1/s and a burst of at least 1")]
    Zero,
    /// Above [`Throttle::MAX`].
    #[error("{what} {value} is above the most a throttle can express ({max}); clear the throttle instead")]
    TooHigh {
        /// `rate` or `burst`.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// The largest allowed.
        max: u32,
    },
    /// A burst too small for the rate on a clock that ticks once a millisecond.
    #[error("{per_second}/s needs a burst of at least {least} (the limiter's clock advances once a millisecond, so at most the burst passes per millisecond); give --burst {least} or more")]
    BurstTooSmall {
        /// The rate.
        per_second: u32,
        /// The burst given.
        burst: u32,
        /// The smallest burst that lets the rate through.
        least: u32,
    },
    /// Not `N/s`.
    #[error("{text:?} is not a rate: write orders per second as N/s (e.g. 50/s)")]
    Format {
        /// The text given.
        text: String,
    },
}

impl Throttle {
    /// The largest rate and burst (one million): above it, clear the throttle.
    pub const MAX: u32 = 1_000_000;

    /// A limit of `per_second` new orders a second, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Result<Self, ThrottleError> {
        for (what, value) in [("rate", per_second), ("burst", burst)] {
            if value > Self::MAX {
                return Err(ThrottleError::TooHigh {
                    what,
                    value: value.into(),
                    max: Self::MAX,
                });
            }
        }
        let (Some(per_second), Some(burst)) = (NonZeroU32::new(per_second), NonZeroU32::new(burst))
        else {
            return Err(ThrottleError::Zero);
        };
        let least = Self::least_burst(per_second.get());
        if burst.get() < least {
            return Err(ThrottleError::BurstTooSmall {
                per_second: per_second.get(),
                burst: burst.get(),
                least,
            });
        }
        Ok(Self { per_second, burst })
    }

    /// The smallest burst that lets `per_second` through: the bucket is read
    /// against a clock that advances once a millisecond, so at most `burst` orders
    /// pass per tick.
    pub const fn least_burst(per_second: u32) -> u32 {
        per_second.div_ceil(1_000)
    }

    /// [`new`](Self::new) for constants: `None` when either is 0 or above
    /// [`MAX`](Self::MAX).
    pub const fn const_new(per_second: u32, burst: u32) -> Option<Self> {
        if per_second > Self::MAX || burst > Self::MAX {
            return None;
        }
        if burst < Self::least_burst(per_second) {
            return None;
        }
        match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(per_second), Some(burst)) => Some(Self { per_second, burst }),
            _ => None,
        }
    }

    /// Parses a rate written `N/s` (or `N`), with `burst` (default: the rate, at
    /// least 1).
    pub fn parse(rate: &str, burst: Option<u32>) -> Result<Self, ThrottleError> {
        let text = rate.trim();
        let digits = text
            .strip_suffix("/s")
            .or_else(|| text.strip_suffix("/sec"))
            .unwrap_or(text)
            .trim();
        let per_second: u64 = digits.parse().map_err(|_| ThrottleError::Format {
            text: rate.to_owned(),
        })?;
        let per_second = u32::try_from(per_second).map_err(|_| ThrottleError::TooHigh {
            what: "rate",
            value: per_second,
            max: Self::MAX,
        })?;
        Self::new(per_second, burst.unwrap_or(per_second))
    }

    /// New orders a second.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Orders admitted at once after a quiet period.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The stricter of two limits in each dimension.
    pub fn tightest(self, other: Self) -> Self {
        Self {
            per_second: self.per_second.min(other.per_second),
            burst: self.burst.min(other.burst),
        }
    }

    /// Whether going from `from` to `to` (`None`: no limit) tightens or relaxes.
    /// Setting a limit where there was none, lowering one or re-asserting it
    /// tightens; clearing it or raising its rate or its burst relaxes (a supervisor
    /// and a ticket). Never [`Transition::Forbidden`].
    pub fn transition(from: Option<Self>, to: Option<Self>) -> Transition {
        match (from, to) {
            (_, Some(to)) if from.is_none_or(|f| to.tightest(f) == to) => Transition::Tighten,
            (None, None) => Transition::Tighten,
            _ => Transition::Relax,
        }
    }

    /// The packed form the bucket reads: emission interval (ns) in the high 32 bits,
    /// burst in the low 32 (0 for no limit).
    fn packed(limit: Option<Self>) -> u64 {
        limit.map_or(0, |t| {
            // Rounded up: the rate admitted never exceeds the rate set.
            let emission = 1_000_000_000u64.div_ceil(u64::from(t.per_second()));
            (emission << 32) | u64::from(t.burst())
        })
    }
}

/// `50/s burst 100`.
impl std::fmt::Display for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s burst {}", self.per_second, self.burst)
    }
}

/// Formats an optional limit: `50/s burst 100`, or `none`.
pub(crate) fn describe(limit: Option<Throttle>) -> String {
    limit.map_or_else(|| "none".to_owned(), |t| t.to_string())
}

/// A symbol's throttle and who set it (table `symbol_throttles`). A cleared
/// throttle keeps its row with `limit: None`, so that what cleared it stays named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleState {
    /// The symbol, verbatim.
    pub symbol: String,
    /// The limit in force; `None` once cleared.
    pub limit: Option<Throttle>,
    /// The version of the command that last set it.
    pub version: u64,
    /// Who last set it.
    pub updated_by: String,
    /// Why.
    pub reason: String,
    /// Under which ticket, if any.
    pub ticket: Option<String>,
    /// When.
    #[serde(with = "failover_core::time::rfc3339")]
    pub updated_at: SystemTime,
    /// The position of the change that last set it: what relaxing it names.
    pub position: failover_core::Position,
}

/// A new order refused by a throttle: retry after `retry_after`. `Copy`, built
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Throttled {
    /// When the next order would be admitted (if no other takes the token first).
    pub retry_after: Duration,
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "new order throttled: the symbol's order-rate limit is used up; retry after {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for Throttled {}

/// One symbol's token bucket in one process (see the module docs).
#[derive(Debug)]
pub(crate) struct Bucket {
    /// [`Throttle::packed`] of the limit in force.
    limit: AtomicU64,
    /// Theoretical arrival time of the next order, on `clock`.
    tat: AtomicU64,
    refused: AtomicU64,
    clock: CoarseClock,
}

impl Bucket {
    pub(crate) fn new(limit: Option<Throttle>, clock: CoarseClock) -> Self {
        Self {
            limit: AtomicU64::new(Throttle::packed(limit)),
            tat: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            clock,
        }
    }

    /// Puts `limit` in force. A limit set where there was none starts with its
    /// whole burst; a changed limit keeps the tokens already taken, but never a
    /// wait longer than the new limit's own (a backlog built under a stricter
    /// limit does not outlast its relaxation).
    pub(crate) fn set(&self, limit: Option<Throttle>) {
        let packed = Throttle::packed(limit);
        let old = self.limit.swap(packed, Ordering::AcqRel);
        if old == packed || packed == 0 {
            return;
        }
        if old == 0 {
            self.tat.store(0, Ordering::Release);
            return;
        }
        let emission = packed >> 32;
        let longest = emission * (packed & 0xFFFF_FFFF);
        let cap = self.clock.now_nanos() + longest;
        self.tat.fetch_min(cap, Ordering::AcqRel);
    }

    /// Whether a limit is in force.
    pub(crate) fn is_limited(&self) -> bool {
        self.limit.load(Ordering::Acquire) != 0
    }

    /// How many orders this bucket refused.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn admit(&self) -> Result<(), Throttled> {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == 0 {
            return Ok(());
        }
        let emission = limit >> 32;
        let tolerance = emission * ((limit & 0xFFFF_FFFF) - 1);
        let now = self.clock.now_nanos();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let wait = start - now;
            if wait > tolerance {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Throttled {
                    retry_after: Duration::from_nanos(wait - tolerance),
                });
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + emission,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now_tat) => tat = now_tat,
            }
        }
    }
}

/// A symbol's throttle resolved once ([`SymbolModes::gate`](crate::SymbolModes::gate)): `admit` is one
/// atomic load while the symbol has no limit, and follows every change the handle
/// sees. For an order loop that trades a known set of symbols.
#[derive(Debug, Clone)]
pub struct ThrottleGate {
    pub(crate) bucket: std::sync::Arc<Bucket>,
}

impl ThrottleGate {
    /// Takes a token for one new order, or says when to retry.
    #[inline]
    pub fn admit(&self) -> Result<(), Throttled> {
        self.bucket.admit()
    }

    /// Whether the symbol has a limit in force in this handle (what `admit` reads;
    /// for admin pages and tests).
    pub fn is_limited(&self) -> bool {
        self.bucket.is_limited()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rate: u32, burst: u32) -> Option<Throttle> {
        Some(Throttle::new(rate, burst).unwrap())
    }

    #[test]
    fn parsing_says_what_is_wrong() {
        assert_eq!(
            Throttle::parse("50/s", Some(100)).unwrap(),
            t(50, 100).unwrap()
        );
        assert_eq!(Throttle::parse(" 5 ", None).unwrap(), t(5, 5).unwrap());
        assert_eq!(Throttle::parse("0/s", None), Err(ThrottleError::Zero));
        assert!(matches!(
            Throttle::parse("fast", None),
            Err(ThrottleError::Format { .. })
        ));
        assert!(matches!(
            Throttle::parse("5000000/s", None),
            Err(ThrottleError::TooHigh { .. })
        ));
        assert_eq!(t(50, 100).unwrap().to_string(), "50/s burst 100");
    }

    #[test]
    fn clearing_or_raising_relaxes_lowering_tightens() {
        use Transition::{Relax, Tighten};
        assert_eq!(Throttle::transition(None, t(5, 5)), Tighten);
        assert_eq!(Throttle::transition(t(5, 5), t(5, 5)), Tighten);
        assert_eq!(Throttle::transition(t(50, 100), t(5, 100)), Tighten);
        assert_eq!(Throttle::transition(t(5, 5), None), Relax);
        assert_eq!(Throttle::transition(t(5, 5), t(6, 5)), Relax);
        assert_eq!(Throttle::transition(t(5, 5), t(1, 6)), Relax);
        assert_eq!(Throttle::transition(None, None), Tighten);
    }

    #[test]
    fn a_burst_is_admitted_then_refused_until_a_token_accrues() {
        let clock = CoarseClock::shared();
        let bucket = Bucket::new(t(5, 5), clock);
        for i in 0..5 {
            assert_eq!(bucket.admit(), Ok(()), "order {i} of the burst");
        }
        let refused = bucket.admit().unwrap_err();
        // One token accrues every 200 ms at 5/s.
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(200),
            "{refused:?}"
        );
        assert_eq!(bucket.refused(), 1);
        std::thread::sleep(refused.retry_after);
        admitted_within(&bucket, Duration::from_millis(500), "a token accrued");
        bucket.set(None);
        for _ in 0..100 {
            assert_eq!(bucket.admit(), Ok(()), "cleared: no limit");
        }
        bucket.set(t(5, 5));
        for i in 0..5 {
            assert_eq!(
                bucket.admit(),
                Ok(()),
                "set again: order {i} of a whole burst"
            );
        }
    }

    /// Admits within `bound` (the coarse clock may lag a loaded machine by a tick
    /// or two).
    fn admitted_within(bucket: &Bucket, bound: Duration, what: &str) {
        let start = std::time::Instant::now();
        while bucket.admit().is_err() {
            assert!(
                start.elapsed() < bound,
                "{what}: still refused after {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_relaxed_limit_does_not_keep_the_stricter_backlog() {
        let bucket = Bucket::new(t(1, 60), CoarseClock::shared());
        while bucket.admit().is_ok() {}
        let refused = bucket.admit().unwrap_err();
        assert!(
            refused.retry_after > Duration::from_millis(900),
            "{refused:?}"
        );
        // Raised by a supervisor: the wait is the new limit's (10 ms), not the
        // minute the old backlog would take.
        bucket.set(t(100, 100));
        admitted_within(&bucket, Duration::from_millis(200), "after the raise");
    }

    #[test]
    fn a_burst_below_one_tick_of_the_rate_is_refused() {
        assert_eq!(Throttle::least_burst(50), 1);
        assert_eq!(Throttle::least_burst(5_000), 5);
        assert!(matches!(
            Throttle::new(5_000, 1),
            Err(ThrottleError::BurstTooSmall { least: 5, .. })
        ));
        assert!(Throttle::new(5_000, 5).is_ok());
        let err = Throttle::parse("5000/s", Some(2)).unwrap_err().to_string();
        assert!(err.contains("--burst 5"), "{err}");
    }
}
