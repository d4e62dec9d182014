//! Staleness: a value together with the monotonic instant it was observed.

use std::time::Duration;
use tokio::time::Instant;

/// A value and when it was observed, on the monotonic clock (tokio's, so tests can
/// pause time).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<T> {
    value: T,
    at: Instant,
}

impl<T> Observed<T> {
    /// Observed now.
    pub fn now(value: T) -> Self {
        Self::at(value, Instant::now())
    }

    /// Observed at `at`.
    pub fn at(value: T, at: Instant) -> Self {
        Self { value, at }
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Consumes and returns the value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// When it was observed.
    pub fn observed_at(&self) -> Instant {
        self.at
    }

    /// How old the observation is.
    pub fn age(&self) -> Duration {
        Instant::now().saturating_duration_since(self.at)
    }

    /// True when the observation is older than `window`.
    pub fn is_stale(&self, window: Duration) -> bool {
        self.age() > window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn becomes_stale_only_after_the_window() {
        let seen = Observed::now(7);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(!seen.is_stale(Duration::from_secs(300)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(seen.is_stale(Duration::from_secs(300)));
        assert_eq!(*seen.value(), 7);
    }
}
