//! A symbol's own mode as the audited-store contract sees it
//! ([`failover_core::conformance`]): setting `CANCEL_ONLY` tightens, `NORMAL`
//! relaxes. The contract's behaviours run for every store through
//! [`conformance_tests!`](crate::conformance_tests).

use crate::{Audit, Command, Error, SymbolMode, SymbolModeStore};
use failover_core::conformance::{AuditedControl, Change, Recorded};
use failover_core::Position;
use std::sync::Arc;

/// The symbol the contract addresses.
pub const AUDITED_SYMBOL: &str = "AUDIT-1";

/// One registered symbol of a store.
#[derive(Debug, Clone)]
pub struct Audited(Arc<dyn SymbolModeStore>);

impl Audited {
    /// Registers [`AUDITED_SYMBOL`] (mode changes address registered symbols) and
    /// describes its mode.
    pub async fn new(store: Arc<dyn SymbolModeStore>) -> Self {
        store
            .register_symbol(AUDITED_SYMBOL, &Audit::new("ops:contract", "registry"))
            .await
            .expect("register the contract's symbol");
        Self(store)
    }

    async fn set(&self, mode: SymbolMode, audit: &Audit) -> Result<Change, Error> {
        let applied = self.0.set_symbol_mode(AUDITED_SYMBOL, mode, audit).await?;
        Ok(Change {
            position: applied.position,
            replayed: applied.replayed,
        })
    }
}

#[async_trait::async_trait]
impl AuditedControl for Audited {
    type Error = Error;

    async fn tighten(&self, audit: &Audit) -> Result<Change, Error> {
        self.set(SymbolMode::CancelOnly, audit).await
    }

    async fn relax(&self, audit: &Audit) -> Result<Change, Error> {
        self.set(SymbolMode::Normal, audit).await
    }

    async fn position(&self) -> Result<Position, Error> {
        Ok(self
            .0
            .symbol_state(AUDITED_SYMBOL)
            .await?
            .map_or(Position::ZERO, |s| s.position))
    }

    async fn history(&self, limit: usize) -> Result<Vec<Recorded>, Error> {
        Ok(self
            .0
            .history(usize::MAX)
            .await?
            .into_iter()
            .filter(|e| matches!(&e.command, Command::SetSymbolMode { symbol, .. } if symbol == AUDITED_SYMBOL))
            .take(limit)
            .map(|e| Recorded {
                position: e.position,
                request_id: e.request_id,
                actor: e.actor,
                reason: e.reason,
                ticket: e.ticket,
            })
            .collect())
    }
}
