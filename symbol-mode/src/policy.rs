//! The settlement-lag policy: past T2 throttle new orders of the
//! symbol (its order-rate throttle lowered to the policy's limit, default
//! [`SettlementLagPolicy::DEFAULT_THROTTLE`]); past T3 put it in `SOFT_HALT`,
//! automatically and audited with the policy as the actor.
//!
//! The policy only ever tightens. It never lifts a halt: resuming needs an operator
//! with a ticket, like any relaxation. It never lowers a stricter mode either (a
//! `HARD_HALT` symbol stays `HARD_HALT`), and a symbol already in `SOFT_HALT` or
//! stricter is left alone without writing an audit row, so evaluating the policy
//! every second does not flood the audit trail. The same holds for the throttle: a
//! symbol already throttled at or below the policy's limit is left alone, and the
//! policy never clears or raises a throttle.

use crate::{Audit, AuditEvent, Error, SymbolMode, SymbolModeStore, Throttle};
use std::time::Duration;

/// The actor recorded in the audit trail for changes made by the policy.
pub const POLICY_ACTOR: &str = "policy:settlement-lag";

/// What the policy says about a measured lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LagVerdict {
    /// At or below T2.
    WithinPolicy,
    /// Above T2, at or below T3: throttle new orders of the symbol.
    Throttle,
    /// Above T3: `SOFT_HALT`.
    Halt,
}

impl LagVerdict {
    /// `within_policy`, `throttle` or `halt` (metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WithinPolicy => "within_policy",
            Self::Throttle => "throttle",
            Self::Halt => "halt",
        }
    }
}

/// What [`SettlementLagPolicy::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagOutcome {
    /// The verdict for the lag.
    pub verdict: LagVerdict,
    /// The audited `SetSymbolMode(symbol, SOFT_HALT)` when the policy halted the
    /// symbol now; `None` when no change was needed.
    pub halted: Option<AuditEvent>,
    /// The audited `SetThrottle(symbol, …)` when the policy throttled the symbol
    /// now; `None` when no change was needed.
    pub throttled: Option<AuditEvent>,
}

/// Thresholds that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// T2 must not exceed T3.
    #[error("settlement-lag policy: throttle threshold T2 ({t2:?}) is above halt threshold T3 ({t3:?}); set T2 <= T3")]
    ThresholdsOutOfOrder {
        /// T2.
        t2: Duration,
        /// T3.
        t3: Duration,
    },
}

/// Settlement-lag thresholds: above `t2` throttle, above `t3` halt (`SOFT_HALT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SettlementLagPolicy {
    t2: Duration,
    t3: Duration,
    throttle: Throttle,
}

impl SettlementLagPolicy {
    /// The limit put on a symbol past T2 unless [`with_throttle`](Self::with_throttle)
    /// says otherwise: 10 new orders a second, 10 at once, per process.
    pub const DEFAULT_THROTTLE: Throttle = match Throttle::const_new(10, 10) {
        Some(t) => t,
        None => panic!("the default throttle is valid"),
    };

    /// A policy with throttle threshold `t2` and halt threshold `t3` (`t2 <= t3`).
    pub fn new(t2: Duration, t3: Duration) -> Result<Self, PolicyError> {
        if t2 > t3 {
            return Err(PolicyError::ThresholdsOutOfOrder { t2, t3 });
        }
        Ok(Self {
            t2,
            t3,
            throttle: Self::DEFAULT_THROTTLE,
        })
    }

    /// The limit put on a symbol past T2 (each process's new orders).
    #[must_use]
    pub fn with_throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = throttle;
        self
    }

    /// The limit put on a symbol past T2.
    pub fn throttle(&self) -> Throttle {
        self.throttle
    }

    /// T2, the throttle threshold.
    pub fn t2(&self) -> Duration {
        self.t2
    }

    /// T3, the halt threshold.
    pub fn t3(&self) -> Duration {
        self.t3
    }

    /// The verdict for a measured lag (e.g. settlement lag p99). Strictly above a
    /// threshold counts.
    pub fn verdict(&self, lag: Duration) -> LagVerdict {
        if lag > self.t3 {
            LagVerdict::Halt
        } else if lag > self.t2 {
            LagVerdict::Throttle
        } else {
            LagVerdict::WithinPolicy
        }
    }

    /// Evaluates `lag` for `symbol`: above T2 lowers the symbol's order-rate
    /// throttle to the policy's limit (unless it already is at most that) through
    /// [`SymbolModeStore::tighten_throttle`]; above T3 also raises the symbol to
    /// `SOFT_HALT` (unless it already is at least that) through
    /// [`SymbolModeStore::tighten_symbol_mode`]. Both are audited with actor
    /// [`POLICY_ACTOR`] and a reason stating the lag and the threshold, and reach
    /// every handle on the change feed.
    pub async fn apply(
        &self,
        store: &dyn SymbolModeStore,
        symbol: &str,
        lag: Duration,
    ) -> Result<LagOutcome, Error> {
        crate::validate_symbol(symbol)?;
        let verdict = self.verdict(lag);
        metrics::counter!("symbol_mode_settlement_lag_verdicts_total", "verdict" => verdict.as_str())
            .increment(1);
        // Past T3 the halt comes first: a throttle that cannot be written (a lock,
        // an outage) must not keep the symbol from being halted.
        let halted = match verdict {
            LagVerdict::WithinPolicy | LagVerdict::Throttle => None,
            LagVerdict::Halt => {
                let audit = Audit::new(
                    POLICY_ACTOR,
                    format!(
                        "settlement lag {} above T3 {}: SOFT_HALT per settlement-lag policy",
                        humantime::format_duration(lag),
                        humantime::format_duration(self.t3)
                    ),
                );
                let event = store
                    .tighten_symbol_mode(symbol, SymbolMode::SoftHalt, &audit)
                    .await?;
                if event.is_some() {
                    tracing::error!(symbol, ?lag, t3 = ?self.t3, "settlement lag above T3: symbol put in SOFT_HALT");
                }
                event
            }
        };
        let throttled = match verdict {
            LagVerdict::WithinPolicy => None,
            LagVerdict::Throttle | LagVerdict::Halt => {
                let audit = Audit::new(
                    POLICY_ACTOR,
                    format!(
                        "settlement lag {} above T2 {}: throttle {} per settlement-lag policy",
                        humantime::format_duration(lag),
                        humantime::format_duration(self.t2),
                        self.throttle
                    ),
                );
                let event = store
                    .tighten_throttle(symbol, self.throttle, &audit)
                    .await?;
                if event.is_some() {
                    tracing::warn!(symbol, ?lag, t2 = ?self.t2, limit = %self.throttle, "settlement lag above T2: new orders throttled");
                }
                event
            }
        };
        Ok(LagOutcome {
            verdict,
            halted,
            throttled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_strict_and_ordered() {
        let p = SettlementLagPolicy::new(Duration::from_secs(2), Duration::from_secs(10)).unwrap();
        assert_eq!(p.verdict(Duration::from_secs(2)), LagVerdict::WithinPolicy);
        assert_eq!(p.verdict(Duration::from_millis(2001)), LagVerdict::Throttle);
        assert_eq!(p.verdict(Duration::from_secs(10)), LagVerdict::Throttle);
        assert_eq!(p.verdict(Duration::from_millis(10_001)), LagVerdict::Halt);
        let err =
            SettlementLagPolicy::new(Duration::from_secs(5), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("T2 <= T3"), "{err}");
    }
}
