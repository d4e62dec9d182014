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

#[cfg(test)]
mod tests {
    use super::*;
    use killswitch::scope::{
        MemoryScopeStore, ScopeMode, ScopeModes, ScopeModesConfig, ScopePath, ScopeStore,
    };
    use killswitch::{Audit, KillSwitch, KillSwitchConfig, MemoryKillSwitchStore};
    use std::sync::Arc;
    use std::time::Duration;
    use symbol_mode::{
        MemorySymbolModeStore, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig,
    };

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn an_order_needs_both_its_scopes_and_its_symbol_to_allow_it() {
        let root = Arc::new(MemoryKillSwitchStore::new());
        let scopes = Arc::new(MemoryScopeStore::new(root.clone()));
        for p in ["acme", "acme/eq", "acme/eq/mm-1"] {
            let path = ScopePath::parse(p).unwrap();
            scopes
                .create_scope(&path, &Audit::new("ops", "register"))
                .await
                .unwrap();
        }
        let symbols = Arc::new(MemorySymbolModeStore::new());
        symbols
            .register_symbols(&["AAPL", "ETH-USD"], &Audit::new("ops", "engine start"))
            .await
            .unwrap();
        let switch = KillSwitch::spawn(root.clone(), KillSwitchConfig::default());
        let modes = ScopeModes::spawn(scopes.clone(), switch, ScopeModesConfig::default());
        let symbol_modes = SymbolModes::spawn(symbols.clone(), SymbolModesConfig::default());
        assert!(modes.ready(WAIT).await && symbol_modes.ready(WAIT).await);
        let gate = modes.gate(&["acme/eq/mm-1"]).unwrap();
        let mut reader = symbol_modes.reader();

        assert_eq!(admit(&gate, &mut reader, "AAPL", OrderIntent::Open), Ok(()));

        // The symbol refuses: new orders on ETH-USD, whatever they do; cancels pass.
        let event = symbols
            .set_symbol_mode(
                "ETH-USD",
                SymbolMode::CancelOnly,
                &Audit::new("ops", "feed"),
            )
            .await
            .unwrap();
        assert!(symbol_modes.wait_for_version(event.version, WAIT).await);
        match admit(&gate, &mut reader, "ETH-USD", OrderIntent::Reduce) {
            Err(Rejection::Symbol { symbol, refusal }) => {
                assert_eq!(symbol, "ETH-USD");
                assert_eq!(refusal.mode, SymbolMode::CancelOnly);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            admit(&gate, &mut reader, "ETH-USD", OrderIntent::Cancel),
            Ok(())
        );
        assert_eq!(admit(&gate, &mut reader, "AAPL", OrderIntent::Open), Ok(()));

        // The desk goes reduce-only: opening refused by the scope, reducing passes.
        scopes
            .set_scope_mode(
                "acme/eq",
                ScopeMode::ReduceOnly,
                &Audit::new("ops", "limit"),
            )
            .await
            .unwrap();
        tokio::time::timeout(
            WAIT,
            gate.subscribe().wait_for(|m| *m == ScopeMode::ReduceOnly),
        )
        .await
        .unwrap()
        .unwrap();
        let refused = admit(&gate, &mut reader, "AAPL", OrderIntent::Open).unwrap_err();
        assert!(matches!(&refused, Rejection::Scope(r) if r.mode == ScopeMode::ReduceOnly));
        assert!(refused.to_string().contains("acme/eq"), "{refused}");
        assert_eq!(
            admit(&gate, &mut reader, "AAPL", OrderIntent::Reduce),
            Ok(())
        );
        // Both refuse: the scope is named (asked first).
        assert!(matches!(
            admit(&gate, &mut reader, "ETH-USD", OrderIntent::Open),
            Err(Rejection::Scope(_))
        ));
    }
}
