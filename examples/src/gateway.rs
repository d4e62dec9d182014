//! An order gateway's one admission call: the order's scopes (desk, strategy,
//! account, venue, under the kill switch) and its symbol's mode, checked together.
//!
//! The two controls live in two crates (symbol-mode does not depend on the kill
//! switch), so the combination is the gateway's: [`admit`] asks the [`ScopeGate`]
//! first (one atomic load), then the symbol's [`ModeReader`] (one atomic load and one
//! lookup). Neither allocates while the order is allowed; a refusal names the control
//! that refused it and why.
//!
//! Symbol modes know no "reduce-only": for them every new order is a `Place`,
//! whether it opens or reduces a position, so a symbol in `CANCEL_ONLY` or halted
//! refuses a reducing order too, while a scope in `REDUCE_ONLY` admits it.

use killswitch::scope::{OrderIntent, ScopeGate, ScopeRejection};
use symbol_mode::{ModeReader, TradingAction};

/// Why the gateway refused an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A scope of the order (or the kill switch) refuses it.
    Scope(ScopeRejection),
    /// The symbol's effective mode refuses it.
    Symbol {
        /// The symbol.
        symbol: String,
        /// The symbol mode's refusal.
        refusal: symbol_mode::Refusal,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Scope(rejection) => rejection.fmt(f),
            Self::Symbol { symbol, refusal } => write!(f, "symbol {symbol}: {refusal}"),
        }
    }
}

impl std::error::Error for Rejection {}

/// The symbol-mode action of an order of `intent`: every new order is a `Place`.
pub const fn symbol_action(intent: OrderIntent) -> TradingAction {
    match intent {
        OrderIntent::Open | OrderIntent::Reduce => TradingAction::Place,
        OrderIntent::Cancel => TradingAction::Cancel,
    }
}

/// Admits an order of `intent` on `symbol` for the scopes of `scope`: `Ok` when the
/// scopes' effective mode (root included) and the symbol's effective mode both allow
/// it. The scopes are asked first; the symbol is not consulted once they refuse.
#[inline]
pub fn admit(
    scope: &ScopeGate,
    symbols: &mut ModeReader,
    symbol: &str,
    intent: OrderIntent,
) -> Result<(), Rejection> {
    scope.check(intent).map_err(Rejection::Scope)?;
    symbols
        .check(symbol, symbol_action(intent))
        .map_err(|refusal| Rejection::Symbol {
            symbol: symbol.to_owned(),
            refusal,
        })
}
