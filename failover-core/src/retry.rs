//! Retries with exponential backoff, jitter, a per-attempt timeout and a total budget.
//!
//! [`RetryPolicy`] is the only place in the crate family that names the `backoff`
//! crate (flagged unmaintained, see `deny.toml`): it is used for the interval
//! arithmetic only, while the budget is kept on tokio's clock so that tests can
//! pause time and so that no call ever outlives its budget.
//!
//! Errors decide for themselves whether they are worth retrying through
//! [`Classify`]; a permanent error ends the loop at once.

use backoff::backoff::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Whether an error may go away by trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Connection refused/reset/closed, timeouts, SQLSTATE class 08, 57P01–57P03,
    /// 25006 (read-only: a standby or demoted primary), 40001, 40P01, 53300.
    Retryable,
    /// Everything else: constraint violations, undefined table, permissions, bad input.
    Permanent,
}

/// Implemented by errors that [`RetryPolicy::run`] may retry.
pub trait Classify {
    /// Retryable or permanent.
    fn class(&self) -> ErrorClass;
}

/// How to retry: exponential backoff with jitter inside a total budget.
///
/// Deserializes with durations as `humantime` strings; absent fields keep their
/// defaults: `{"initial_interval": "25ms", "max_interval": "500ms", "multiplier": 2.0,
/// "jitter": 0.2, "budget": "5s", "attempt_timeout": "2s"}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// First wait between attempts.
    #[serde(with = "crate::time::humantime")]
    pub initial_interval: Duration,
    /// Longest wait between attempts.
    #[serde(with = "crate::time::humantime")]
    pub max_interval: Duration,
    /// Growth factor of the wait.
    pub multiplier: f64,
    /// Random spread of each wait, 0.0 (none) to 1.0 (±100 %).
    pub jitter: f64,
    /// Total time for all attempts and waits together; the call returns within it.
    #[serde(with = "crate::time::humantime")]
    pub budget: Duration,
    /// Bound of one attempt (cut to what is left of the budget).
    #[serde(with = "crate::time::humantime")]
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.2,
            budget: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// What one failed attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError<E> {
    /// The operation returned an error.
    Failed(E),
    /// The operation did not finish within its attempt timeout.
    TimedOut(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => e.fmt(f),
            Self::TimedOut(d) => write!(f, "timed out after {}", humantime::format_duration(*d)),
        }
    }
}

/// Why [`RetryPolicy::run`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} after {attempts} attempt(s) in {elapsed:?}: {last}")]
pub struct RetryError<E: std::fmt::Display> {
    /// Permanent error, or budget exhausted.
    pub reason: GiveUp,
    /// The last attempt's error.
    pub last: AttemptError<E>,
    /// How many attempts were made.
    pub attempts: u32,
    /// Time spent in all.
    pub elapsed: Duration,
}

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The error is permanent: retrying cannot help.
    Permanent,
    /// The budget is spent.
    BudgetExhausted,
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Permanent => "permanent error",
            Self::BudgetExhausted => "retry budget exhausted",
        })
    }
}

/// `d` ±25 %, without a random-number dependency (the clock's low bits): enough to
/// keep a fleet of processes from retrying in lockstep.
pub fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt bounded by `attempt_timeout`.
    pub fn no_retry(attempt_timeout: Duration) -> Self {
        Self {
            budget: attempt_timeout,
            attempt_timeout,
            ..Self::default()
        }
    }

    /// Sets the total budget.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    fn backoff(&self) -> backoff::ExponentialBackoff {
        backoff::ExponentialBackoff {
            current_interval: self.initial_interval,
            initial_interval: self.initial_interval,
            randomization_factor: self.jitter.clamp(0.0, 1.0),
            multiplier: self.multiplier.max(1.0),
            max_interval: self.max_interval,
            // The budget is enforced below on tokio's clock.
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the budget is spent.
    /// `op` receives the 1-based attempt number. Every attempt is bounded by
    /// `attempt_timeout` (cut to what is left of the budget) and the whole call
    /// returns within `budget` plus scheduling noise.
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, RetryError<E>>
    where
        E: Classify + std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = Instant::now();
        let deadline = start + self.budget;
        let mut intervals = self.backoff();
        let mut attempts = 0;
        let mut previous: Option<AttemptError<E>> = None;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let bound = self.attempt_timeout.min(left).max(Duration::from_millis(1));
            let outcome = tokio::time::timeout(bound, op(attempts)).await;
            let (last, class) = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => {
                    let class = e.class();
                    (AttemptError::Failed(e), class)
                }
                // An attempt cut short by the end of the budget says nothing new:
                // report the previous attempt's error, or the configured bound —
                // never the leftover of the budget ("timed out after 3.9ms").
                Err(_) if bound < self.attempt_timeout && previous.is_some() => (
                    previous.take().expect("checked is_some"),
                    ErrorClass::Retryable,
                ),
                Err(_) => (AttemptError::TimedOut(bound), ErrorClass::Retryable),
            };
            if class == ErrorClass::Permanent {
                return Err(RetryError {
                    reason: GiveUp::Permanent,
                    last,
                    attempts,
                    elapsed: start.elapsed(),
                });
            }
            let wait = intervals.next_backoff().unwrap_or(self.max_interval);
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= wait {
                return Err(RetryError {
                    reason: GiveUp::BudgetExhausted,
                    last,
                    attempts,
                    elapsed: start.elapsed(),
                });
            }
            tracing::debug!(attempt = attempts, wait_ms = wait.as_millis() as u64, error = %last, "retrying");
            previous = Some(last);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Clone, PartialEq)]
    struct E(ErrorClass);
    impl Classify for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let out = RetryPolicy::default()
            .run(|_| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(E(ErrorClass::Retryable))
                } else {
                    Ok(42)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_stop_at_once() {
        let err = RetryPolicy::default()
            .run(|_| async { Err::<(), _>(E(ErrorClass::Permanent)) })
            .await
            .unwrap_err();
        assert_eq!(err.reason, GiveUp::Permanent);
        assert_eq!(err.attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_operation_is_cut_and_the_budget_bounds_the_call() {
        let policy = RetryPolicy::default()
            .with_budget(Duration::from_secs(3))
            .with_attempt_timeout(Duration::from_secs(1));
        let start = Instant::now();
        let err = policy
            .run(|_| std::future::pending::<Result<(), E>>())
            .await
            .unwrap_err();
        assert_eq!(err.reason, GiveUp::BudgetExhausted);
        assert!(matches!(err.last, AttemptError::TimedOut(_)));
        assert!(err.attempts >= 2, "attempts: {}", err.attempts);
        assert!(
            start.elapsed() <= Duration::from_secs(3),
            "took {:?}",
            start.elapsed()
        );
    }
}
