//! The in-memory lease store: unit tests, single-process deployments, and the default
//! of the examples. Held to the same conformance suite as the PostgreSQL store.
//!
//! Its clock is injectable ([`Clock`]): [`TokioClock`] by default (real time, or
//! virtual time under `tokio::time::pause`), [`ManualClock`] for tests that move time
//! by hand. Tokens start at 1 per resource and live as long as the store: a new
//! process starts again at 1, so use the PostgreSQL store when the fenced resource
//! outlives the process.

use crate::{
    check_name, check_ttl, clamp_margin, CurrentLease, Error, Lease, LeaseFencer, LostReason,
    DEFAULT_SAFETY_MARGIN,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The clock by which a [`MemoryLeaseFencer`] judges expiry (the database clock plays
/// this part for PostgreSQL). It must never go backwards.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// `tokio::time::Instant::now()`: real monotonic time, or virtual time in a runtime
/// whose clock is paused.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: deterministic expiry in tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the instant of the call.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Leases in memory.
#[derive(Debug)]
pub struct MemoryLeaseFencer {
    rows: Mutex<HashMap<String, Row>>,
    clock: Arc<dyn Clock>,
    safety_margin: f64,
}

/// The state of one resource, as the `fencing_leases` row holds it in PostgreSQL.
#[derive(Debug)]
struct Row {
    /// `None` once released.
    holder: Option<String>,
    /// The last token issued; kept after release and expiry.
    token: u64,
    expires: Instant,
}

impl Default for MemoryLeaseFencer {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLeaseFencer {
    /// An empty store on [`TokioClock`].
    pub fn new() -> Self {
        Self {
            rows: Mutex::new(HashMap::new()),
            clock: Arc::new(TokioClock),
            safety_margin: DEFAULT_SAFETY_MARGIN,
        }
    }

    /// Judges expiry by `clock` instead.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the share of the ttl by which a lease's local deadline precedes its expiry
    /// (default [`DEFAULT_SAFETY_MARGIN`], clamped to 0.0..=0.5).
    #[must_use]
    pub fn with_safety_margin(mut self, share: f64) -> Self {
        self.safety_margin = clamp_margin(share);
        self
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl LeaseFencer for MemoryLeaseFencer {
    async fn acquire(&self, resource: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        check_name("resource", resource)?;
        check_name("holder", holder)?;
        check_ttl(ttl)?;
        let sent_at = Instant::now();
        let mut rows = self.rows();
        let now = self.clock.now();
        let row = rows.entry(resource.to_owned()).or_insert(Row {
            holder: None,
            token: 0,
            expires: now,
        });
        if let Some(current) = &row.holder {
            if current != holder && row.expires > now {
                return Err(Error::Held {
                    resource: resource.to_owned(),
                    holder: current.clone(),
                    token: row.token,
                    expires_in: row.expires - now,
                });
            }
        }
        row.token += 1;
        row.holder = Some(holder.to_owned());
        row.expires = now + ttl;
        Ok(Lease::issued(
            resource,
            holder,
            row.token,
            ttl,
            sent_at,
            self.safety_margin,
        ))
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, Error> {
        let sent_at = Instant::now();
        let mut rows = self.rows();
        let now = self.clock.now();
        let lost = |reason| Error::LeaseLost {
            resource: lease.resource().to_owned(),
            token: lease.token(),
            reason,
        };
        let Some(row) = rows.get_mut(lease.resource()) else {
            return Err(lost(LostReason::Unrecorded));
        };
        if row.token > lease.token() {
            return Err(lost(LostReason::Superseded { token: row.token }));
        }
        match &row.holder {
            _ if row.token < lease.token() => Err(lost(LostReason::Unrecorded)),
            None => Err(lost(LostReason::Released)),
            Some(h) if h != lease.holder() => Err(lost(LostReason::Unrecorded)),
            Some(_) if row.expires <= now => Err(lost(LostReason::Expired)),
            Some(_) => {
                row.expires = now + lease.ttl();
                Ok(Lease::issued(
                    lease.resource(),
                    lease.holder(),
                    lease.token(),
                    lease.ttl(),
                    sent_at,
                    self.safety_margin,
                ))
            }
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut rows = self.rows();
        let now = self.clock.now();
        if let Some(row) = rows.get_mut(lease.resource()) {
            if row.token == lease.token() && row.holder.as_deref() == Some(lease.holder()) {
                row.holder = None;
                row.expires = row.expires.min(now);
            }
        }
        Ok(())
    }

    async fn current(&self, resource: &str) -> Result<Option<CurrentLease>, Error> {
        check_name("resource", resource)?;
        let rows = self.rows();
        let now = self.clock.now();
        Ok(rows.get(resource).and_then(|row| {
            let holder = row.holder.as_ref().filter(|_| row.expires > now)?;
            Some(CurrentLease {
                resource: resource.to_owned(),
                holder: holder.clone(),
                token: row.token,
                expires_in: row.expires - now,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Property test: random interleavings of acquire/renew/release/expiry by several
    //! holders on a manual clock.
    use super::*;
    use futures_util::FutureExt;
    use proptest::prelude::*;

    const HOLDERS: [&str; 4] = ["a", "b", "c", "d"];

    #[derive(Debug, Clone)]
    enum Op {
        Acquire { holder: usize, ttl_ms: u64 },
        Renew { holder: usize },
        Release { holder: usize },
        Advance { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..HOLDERS.len(), 1u64..50)
                .prop_map(|(holder, ttl_ms)| Op::Acquire { holder, ttl_ms }),
            (0..HOLDERS.len()).prop_map(|holder| Op::Renew { holder }),
            (0..HOLDERS.len()).prop_map(|holder| Op::Release { holder }),
            (0u64..40).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// What a holder believes: its lease and when the store will expire it.
    struct Held {
        lease: Lease,
        expires: Instant,
    }

    /// The memory store never waits, so its futures finish on the first poll.
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        f.now_or_never().expect("the memory store never waits")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn at_most_one_unexpired_holder_and_tokens_strictly_increase(ops in proptest::collection::vec(op(), 1..120)) {
            let clock = Arc::new(ManualClock::new());
            let store = MemoryLeaseFencer::new().with_clock(clock.clone());
            let mut held: Vec<Option<Held>> = (0..HOLDERS.len()).map(|_| None).collect();
            let mut last_token = 0;
            for op in ops {
                match op {
                    Op::Acquire { holder, ttl_ms } => {
                        let ttl = Duration::from_millis(ttl_ms);
                        match now(store.acquire("btc-usd", HOLDERS[holder], ttl)) {
                            Ok(lease) => {
                                prop_assert!(lease.token() > last_token, "token {} after {}", lease.token(), last_token);
                                last_token = lease.token();
                                held[holder] = Some(Held { lease, expires: clock.now() + ttl });
                            }
                            Err(Error::Held { holder: other, .. }) => {
                                let i = HOLDERS.iter().position(|h| *h == other).unwrap();
                                prop_assert_ne!(i, holder);
                                let theirs = held[i].as_ref();
                                prop_assert!(theirs.is_some_and(|h| h.expires > clock.now()),
                                    "refused for {} whose lease has expired or was released", other);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Renew { holder } => {
                        let Some(mine) = held[holder].as_ref() else { continue };
                        match now(store.renew(&mine.lease)) {
                            Ok(lease) => {
                                prop_assert!(mine.expires > clock.now(), "renewed an expired lease");
                                prop_assert_eq!(lease.token(), mine.lease.token());
                                prop_assert_eq!(lease.token(), last_token, "renewed a superseded lease");
                                let expires = clock.now() + lease.ttl();
                                held[holder] = Some(Held { lease, expires });
                            }
                            Err(Error::LeaseLost { .. }) => {
                                prop_assert!(mine.expires <= clock.now() || mine.lease.token() != last_token,
                                    "a current, unexpired lease was reported lost");
                                held[holder] = None;
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release { holder } => {
                        if let Some(mine) = held[holder].take() {
                            now(store.release(&mine.lease)).unwrap();
                        }
                    }
                    Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
                }
                // Holders whose lease is current and unexpired by the store's clock.
                let t = clock.now();
                let live: Vec<&str> = held
                    .iter()
                    .zip(HOLDERS)
                    .filter(|(h, _)| h.as_ref().is_some_and(|h| h.expires > t && h.lease.token() == last_token))
                    .map(|(_, name)| name)
                    .collect();
                prop_assert!(live.len() <= 1, "several unexpired holders: {live:?}");
                // No unexpired, unreleased lease was superseded by a newer token.
                for h in held.iter().flatten() {
                    if h.expires > t && h.lease.token() != last_token {
                        prop_assert!(false, "token {} was superseded while unexpired", h.lease.token());
                    }
                }
                let current = now(store.current("btc-usd")).unwrap();
                prop_assert_eq!(current.map(|c| c.holder), live.first().map(|s| s.to_string()));
            }
        }
    }
}
