//! [`CoarseClock`]: a monotonic nanosecond counter for the order path, advanced by
//! one background thread per process, so that a rate check reads one atomic
//! instead of the system clock.
//!
//! The counter lags real time by one tick (1 ms) plus scheduling delay. A limiter
//! read against it admits at most its burst per tick, so a burst must hold at least
//! a millisecond's worth of its rate; and when a tick comes late, the time it
//! skipped is credited at once (at most `rate × delay` orders more in that instant,
//! never more over a second). The thread starts with the first
//! [`CoarseClock::shared`] and stops once every clone of it is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the clock's thread advances the counter.
pub const TICK: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Ticker {
    nanos: AtomicU64,
}

/// A process-wide monotonic counter of nanoseconds since the clock started.
/// Cheap to clone; reading it is one relaxed atomic load.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    ticker: Arc<Ticker>,
}

static SHARED: Mutex<Weak<Ticker>> = Mutex::new(Weak::new());

impl CoarseClock {
    /// The process's clock, starting its thread when no clone of it is alive.
    pub fn shared() -> Self {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ticker) = slot.upgrade() {
            return Self { ticker };
        }
        let ticker = Arc::new(Ticker {
            nanos: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&ticker);
        let start = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("tradepulse-clock".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(ticker) = weak.upgrade() else { break };
                let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                ticker.nanos.store(elapsed, Ordering::Relaxed);
            });
        match spawned {
            Ok(_) => *slot = Arc::downgrade(&ticker),
            // Without the thread this counter stands still: a limiter on it admits
            // its burst and then refuses (fails closed). Not shared, so the next
            // caller tries to start the thread again.
            Err(e) => {
                tracing::error!(error = %e, "could not start the coarse clock's thread; rate limits on this clock refuse after their burst")
            }
        }
        Self { ticker }
    }

    /// Nanoseconds since the clock started, as of the last tick.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.ticker.nanos.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_clock_per_process_that_advances() {
        let a = CoarseClock::shared();
        let b = CoarseClock::shared();
        assert!(Arc::ptr_eq(&a.ticker, &b.ticker), "one ticker per process");
        let before = a.now_nanos();
        std::thread::sleep(Duration::from_millis(30));
        let after = b.now_nanos();
        assert!(
            after >= before + 10_000_000,
            "advanced {} ns in 30 ms",
            after - before
        );
    }
}
