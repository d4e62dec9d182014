//! Log throttling: one warning per outage, then at most one a minute.

use std::time::Duration;
use tokio::time::Instant;

/// How often a continuing outage is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Decides whether a failure is logged: the first of an outage always, then at most
/// one per [`REPEAT_EVERY`] until [`reset`](Throttle::reset) (the next success).
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// True when this failure should be logged.
    pub fn allow(&mut self) -> bool {
        match self.last {
            Some(at) if at.elapsed() < REPEAT_EVERY => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last = Some(Instant::now());
                self.suppressed = 0;
                true
            }
        }
    }

    /// How many failures were not logged since the last logged one.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The outage is over: the next failure is logged at once. True when an outage
    /// was in progress (worth one "recovered" line).
    pub fn reset(&mut self) -> bool {
        self.suppressed = 0;
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_outage_then_one_a_minute() {
        let mut t = Throttle::default();
        assert!(t.allow());
        let logged = (0..59)
            .map(|_| {
                std::thread::sleep(Duration::ZERO);
                t.allow()
            })
            .filter(|l| *l)
            .count();
        assert_eq!(logged, 0, "a second-by-second reconnect loop stays quiet");
        tokio::time::advance(REPEAT_EVERY).await;
        assert!(t.allow(), "a minute later: one more");
        assert!(t.reset());
        assert!(t.allow(), "a new outage is logged at once");
    }
}
