//! Order-rate throttles through asynchronous failovers, with failover-core's shared
//! store suite on a real primary + replica: "tighten" is `SetThrottle(BTC-USD,
//! 5/s burst 5)`, "relax" is clearing it with a ticket; the handle counts as
//! halted while the limit is in force in its bucket for the symbol. A lost clear returns the
//! running handle to the limit; a new limit on the new timeline reaches it by push.

use failover_core::{ComponentHealth, Position, WatchConfig};
use std::sync::Arc;
use tradepulse_symbol_mode::{
    Audit, Error, PostgresSymbolModeStore, SnapshotState, SymbolModeStore, SymbolModes, Throttle,
    ThrottleGate,
};
use tradepulse_testkit::suite::{self, SuiteHandle, SuiteHandleStore, SuiteStore};

const SYMBOL: &str = "BTC-USD";

struct ThrottleSuite;

async fn registered(store: &PostgresSymbolModeStore) -> Result<(), Error> {
    store
        .register_symbol(SYMBOL, &Audit::new("suite:ops", "listing"))
        .await
        .map(drop)
}

#[async_trait::async_trait]
impl SuiteStore for ThrottleSuite {
    type Store = PostgresSymbolModeStore;
    type Error = Error;
    const AUDIT_TABLE: &'static str = "symbol_mode_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Error> {
        registered(store).await?;
        let limit = Throttle::new(5, 5).expect("limit");
        let audit = Audit::new("suite:ops", format!("throttle {n}"));
        Ok(store
            .set_throttle(SYMBOL, Some(limit), &audit)
            .await?
            .position)
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Error> {
        registered(store).await?;
        let audit = Audit::new("suite:ops", format!("clear {n}")).with_ticket("CHG-1");
        Ok(store.set_throttle(SYMBOL, None, &audit).await?.position)
    }

    fn is_schema_missing(error: &Error) -> bool {
        matches!(error, Error::SchemaMissing { .. })
    }

    fn is_unavailable(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }
}

/// The handle and its gate for the symbol: "halted" is what `admit` reads, the
/// limit in force in the handle's bucket.
struct Handle(SymbolModes, ThrottleGate);

impl SuiteHandle for Handle {
    fn halted(&self) -> bool {
        self.1.is_limited()
    }
    fn health(&self) -> ComponentHealth {
        self.0.health()
    }
    fn position(&self) -> Option<Position> {
        (self.0.status().state != SnapshotState::NotLoaded).then(|| self.0.snapshot().position())
    }
}

impl SuiteHandleStore for ThrottleSuite {
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle> {
        let modes = SymbolModes::spawn(store, config);
        let gate = modes.gate(SYMBOL);
        Box::new(Handle(modes, gate))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_failover_that_lost_the_clear_returns_the_running_handle_to_the_limit() {
    suite::lossy_failover_lost_relaxation_halts_the_running_handle::<ThrottleSuite>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_failover_new_limit_reaches_the_running_handle() {
    suite::lossy_failover_new_tightening_reaches_the_running_handle::<ThrottleSuite>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_of_a_limit_reaches_a_handle_in_another_pool() {
    suite::push_reaches_another_pool::<ThrottleSuite>(suite::Route::Direct).await;
}
