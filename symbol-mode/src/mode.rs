//! [`SymbolMode`], the action matrix and the transition rules, as data.
//!
//! Everything here is pure and `const`-friendly: the stores, the hot-path handle and
//! the docs all read the same tables, so they cannot drift apart.

use failover_core::Safety;
use serde::{Deserialize, Serialize};

/// A trading mode, of one symbol or of the whole venue (the global mode).
///
/// Severity rises in declaration order, so `Ord` compares severity and the
/// effective mode of a symbol is `max(global, symbol)` ([`SymbolMode::effective`]).
/// Serialised (serde, SQL, `Display`, `FromStr`) with exactly the names operators use:
/// `NORMAL`, `CANCEL_ONLY`, `SOFT_HALT`, `HARD_HALT`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum SymbolMode {
    /// Everything allowed.
    #[default]
    Normal = 0,
    /// No new orders; amends only reduce; cancels allowed; resting orders still match.
    CancelOnly = 1,
    /// No new orders, no amends, no matching; cancels allowed.
    SoftHalt = 2,
    /// Nothing happens, not even cancels (only an admin `CancelAll`).
    HardHalt = 3,
}

/// Something an engine may or may not do on a symbol; the columns of the action matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum TradingAction {
    /// Place a new order.
    Place = 0,
    /// Amend a resting order in any way (price, or quantity up or down).
    Amend = 1,
    /// Amend that only reduces the quantity of a resting order.
    ReduceOnlyAmend = 2,
    /// Cancel an order on the trader's request.
    Cancel = 3,
    /// Match resting orders against each other / incoming flow.
    Matching = 4,
    /// The admin-issued `CancelAll(symbol)`: allowed in every mode.
    AdminCancelAll = 5,
}

impl TradingAction {
    /// Every action, in matrix column order.
    pub const ALL: [TradingAction; 6] = [
        Self::Place,
        Self::Amend,
        Self::ReduceOnlyAmend,
        Self::Cancel,
        Self::Matching,
        Self::AdminCancelAll,
    ];

    /// The column heading used in the printed matrix.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::Amend => "amend",
            Self::ReduceOnlyAmend => "reduce-only amend",
            Self::Cancel => "cancel",
            Self::Matching => "matching",
            Self::AdminCancelAll => "admin CancelAll",
        }
    }
}

impl std::fmt::Display for TradingAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The action matrix: what each mode allows, one row per mode (in severity order), one column
/// per [`TradingAction`] (in [`TradingAction::ALL`] order).
///
/// `CANCEL_ONLY` allows matching of *resting* orders: no new order can arrive, so
/// only what already rests can trade.
pub const ACTION_MATRIX: [[bool; 6]; 4] = [
    // place, amend, reduce-only amend, cancel, matching, admin CancelAll
    [true, true, true, true, true, true],      // NORMAL
    [false, false, true, true, true, true],    // CANCEL_ONLY
    [false, false, false, true, false, true],  // SOFT_HALT
    [false, false, false, false, false, true], // HARD_HALT
];

/// The "may relax to" column: the less severe modes each mode may move to directly.
/// Tightening (to the same or a more severe mode) is always allowed.
pub const RELAX_TO: [&[SymbolMode]; 4] = [
    &[],                                           // NORMAL
    &[SymbolMode::Normal],                         // CANCEL_ONLY
    &[SymbolMode::CancelOnly, SymbolMode::Normal], // SOFT_HALT
    &[SymbolMode::CancelOnly],                     // HARD_HALT: resume in CANCEL_ONLY first
];

/// What a requested mode change is, by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// To the same or a more severe mode: always allowed, ticket optional
    /// (an emergency stop is never blocked by paperwork). Re-asserting the current
    /// mode counts here and is audited like any change.
    Tighten,
    /// To a less severe mode listed in the "may relax to" column: needs a ticket.
    Relax,
    /// To a less severe mode the table does not allow (e.g. `HARD_HALT → NORMAL`).
    Forbidden,
}

impl Transition {
    /// The audit rule that applies; `None` when forbidden.
    pub fn safety(self) -> Option<Safety> {
        match self {
            Self::Tighten => Some(Safety::Tighten),
            Self::Relax => Some(Safety::Relax),
            Self::Forbidden => None,
        }
    }
}

impl SymbolMode {
    /// Every mode, in severity order.
    pub const ALL: [SymbolMode; 4] = [
        Self::Normal,
        Self::CancelOnly,
        Self::SoftHalt,
        Self::HardHalt,
    ];

    /// The operators' name: `NORMAL`, `CANCEL_ONLY`, `SOFT_HALT` or `HARD_HALT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::CancelOnly => "CANCEL_ONLY",
            Self::SoftHalt => "SOFT_HALT",
            Self::HardHalt => "HARD_HALT",
        }
    }

    /// 0 (`NORMAL`) to 3 (`HARD_HALT`).
    pub const fn severity(self) -> u8 {
        self as u8
    }

    /// The mode of a severity byte; anything above 3 is `HARD_HALT` (fail closed).
    pub const fn from_severity(severity: u8) -> Self {
        match severity {
            0 => Self::Normal,
            1 => Self::CancelOnly,
            2 => Self::SoftHalt,
            _ => Self::HardHalt,
        }
    }

    /// The more severe of the global mode and a symbol's own mode.
    pub const fn effective(global: SymbolMode, symbol: SymbolMode) -> SymbolMode {
        if global.severity() >= symbol.severity() {
            global
        } else {
            symbol
        }
    }

    /// Whether `action` may happen in this mode (one array read).
    #[inline]
    pub const fn allows(self, action: TradingAction) -> bool {
        ACTION_MATRIX[self as usize][action as usize]
    }

    /// The modes this one may relax to directly.
    pub const fn may_relax_to(self) -> &'static [SymbolMode] {
        RELAX_TO[self as usize]
    }

    /// Classifies a change from `self` to `to`.
    pub fn transition_to(self, to: SymbolMode) -> Transition {
        if to >= self {
            Transition::Tighten
        } else if self.may_relax_to().contains(&to) {
            Transition::Relax
        } else {
            Transition::Forbidden
        }
    }

    /// The modes from which a change to `to` is classified as `kind` (used by the
    /// Postgres store to check the rule inside the database, under its row lock, with
    /// this table as the single source of truth).
    pub fn sources(to: SymbolMode, kind: Transition) -> Vec<SymbolMode> {
        Self::ALL
            .into_iter()
            .filter(|from| from.transition_to(to) == kind)
            .collect()
    }

    /// Renders the action matrix and the "may relax to" column as a Markdown table
    /// (the table printed in this crate's README, checked by a test).
    pub fn matrix_markdown() -> String {
        let mut out = String::from("| mode |");
        for action in TradingAction::ALL {
            out.push_str(&format!(" {} |", action.label()));
        }
        out.push_str(" may relax to |\n|---|");
        for _ in TradingAction::ALL {
            out.push_str("---|");
        }
        out.push_str("---|\n");
        for mode in Self::ALL {
            out.push_str(&format!("| `{mode}` |"));
            for action in TradingAction::ALL {
                out.push_str(if mode.allows(action) {
                    " yes |"
                } else {
                    " no |"
                });
            }
            let relax: Vec<String> = mode
                .may_relax_to()
                .iter()
                .map(|m| format!("`{m}`"))
                .collect();
            if relax.is_empty() {
                out.push_str(" — |\n");
            } else {
                out.push_str(&format!(" {} |\n", relax.join(", ")));
            }
        }
        out
    }
}

impl std::fmt::Display for SymbolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown symbol mode {0:?}: use NORMAL, CANCEL_ONLY, SOFT_HALT or HARD_HALT")]
pub struct ParseModeError(pub String);

impl std::str::FromStr for SymbolMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseModeError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SymbolMode::*;

    #[test]
    fn names_are_the_runbook_names_in_every_form() {
        for (mode, name) in [
            (Normal, "NORMAL"),
            (CancelOnly, "CANCEL_ONLY"),
            (SoftHalt, "SOFT_HALT"),
            (HardHalt, "HARD_HALT"),
        ] {
            assert_eq!(mode.to_string(), name);
            assert_eq!(name.parse::<SymbolMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<SymbolMode>(&format!("\"{name}\"")).unwrap(),
                mode
            );
        }
        let err = "normal".parse::<SymbolMode>().unwrap_err();
        assert!(err.to_string().contains("CANCEL_ONLY"), "{err}");
    }

    #[test]
    fn the_matrix_is_the_design_table() {
        use TradingAction::*;
        let yes = |m: SymbolMode, a| m.allows(a);
        assert!(TradingAction::ALL.iter().all(|&a| yes(Normal, a)));
        assert!(!yes(CancelOnly, Place) && !yes(CancelOnly, Amend));
        assert!(yes(CancelOnly, ReduceOnlyAmend) && yes(CancelOnly, Cancel));
        assert!(yes(CancelOnly, Matching));
        assert!(!yes(SoftHalt, Place) && !yes(SoftHalt, Amend) && !yes(SoftHalt, ReduceOnlyAmend));
        assert!(yes(SoftHalt, Cancel) && !yes(SoftHalt, Matching));
        for a in [Place, Amend, ReduceOnlyAmend, Cancel, Matching] {
            assert!(!yes(HardHalt, a), "{a}");
        }
        for m in SymbolMode::ALL {
            assert!(m.allows(AdminCancelAll), "admin CancelAll in {m}");
        }
    }

    #[test]
    fn a_more_severe_mode_never_allows_more() {
        for pair in SymbolMode::ALL.windows(2) {
            for a in TradingAction::ALL {
                assert!(
                    !pair[1].allows(a) || pair[0].allows(a),
                    "{} allows {a} but {} does not",
                    pair[1],
                    pair[0]
                );
            }
        }
    }

    #[test]
    fn transitions_follow_the_relax_column() {
        let expected = [
            // from NORMAL
            [Transition::Tighten; 4],
            // from CANCEL_ONLY
            [
                Transition::Relax,
                Transition::Tighten,
                Transition::Tighten,
                Transition::Tighten,
            ],
            // from SOFT_HALT
            [
                Transition::Relax,
                Transition::Relax,
                Transition::Tighten,
                Transition::Tighten,
            ],
            // from HARD_HALT: resume in CANCEL_ONLY first, then NORMAL
            [
                Transition::Forbidden,
                Transition::Relax,
                Transition::Forbidden,
                Transition::Tighten,
            ],
        ];
        for from in SymbolMode::ALL {
            for to in SymbolMode::ALL {
                assert_eq!(
                    from.transition_to(to),
                    expected[from as usize][to as usize],
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(
            SymbolMode::sources(Normal, Transition::Forbidden),
            [HardHalt]
        );
        assert_eq!(
            SymbolMode::sources(CancelOnly, Transition::Relax),
            [SoftHalt, HardHalt]
        );
    }

    #[test]
    fn effective_is_the_more_severe_for_every_pair() {
        for g in SymbolMode::ALL {
            for s in SymbolMode::ALL {
                let e = SymbolMode::effective(g, s);
                assert_eq!(e, g.max(s));
                assert_eq!(e.severity(), g.severity().max(s.severity()));
            }
        }
        assert_eq!(SymbolMode::from_severity(200), HardHalt);
    }
}
