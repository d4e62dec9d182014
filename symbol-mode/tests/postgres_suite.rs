//! failover-core's shared PostgreSQL store suite, run by symbol modes: settings,
//! migrations, the append-only trail, outages, push to another pool, health on the
//! default settings, lossy failovers and a planned switchover — all on real servers.
//! "Tighten" is `SetSymbolMode(BTC-USD, SOFT_HALT)`, "relax" is back to `NORMAL` with
//! a ticket; the handle counts as halted when BTC-USD may not take new orders.

use failover_core::{ComponentHealth, Position, WatchConfig};
use std::sync::Arc;
use tradepulse_symbol_mode::{
    Audit, Error, PostgresSymbolModeStore, SnapshotState, SymbolMode, SymbolModeStore, SymbolModes,
    TradingAction,
};
use tradepulse_testkit::suite::{SuiteHandle, SuiteHandleStore, SuiteStore};

const SYMBOL: &str = "BTC-USD";

struct SymbolModeSuite;

#[async_trait::async_trait]
impl SuiteStore for SymbolModeSuite {
    type Store = PostgresSymbolModeStore;
    type Error = Error;
    const AUDIT_TABLE: &'static str = "symbol_mode_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Error> {
        // Registered on first use (a no-op once it is), as an engine does at start.
        store
            .register_symbol(SYMBOL, &Audit::new("suite:ops", "listing"))
            .await?;
        let audit = Audit::new("suite:ops", format!("halt {n}"));
        Ok(store
            .set_symbol_mode(SYMBOL, SymbolMode::SoftHalt, &audit)
            .await?
            .position)
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Error> {
        store
            .register_symbol(SYMBOL, &Audit::new("suite:ops", "listing"))
            .await?;
        let audit = Audit::new("suite:ops", format!("resume {n}")).with_ticket("CHG-1");
        Ok(store
            .set_symbol_mode(SYMBOL, SymbolMode::Normal, &audit)
            .await?
            .position)
    }

    fn is_schema_missing(error: &Error) -> bool {
        matches!(error, Error::SchemaMissing { .. })
    }

    fn is_unavailable(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }
}

struct Handle(SymbolModes);

impl SuiteHandle for Handle {
    fn halted(&self) -> bool {
        !self.0.allows(SYMBOL, TradingAction::Place)
    }
    fn health(&self) -> ComponentHealth {
        self.0.health()
    }
    fn position(&self) -> Option<Position> {
        (self.0.status().state != SnapshotState::NotLoaded).then(|| self.0.snapshot().position())
    }
}

impl SuiteHandleStore for SymbolModeSuite {
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle> {
        Box::new(Handle(SymbolModes::spawn(store, config)))
    }
}

tradepulse_testkit::pg_store_suite!(SymbolModeSuite);
tradepulse_testkit::pg_handle_suite!(SymbolModeSuite);
tradepulse_testkit::pg_pooler_suite!(SymbolModeSuite);
