//! A change costs one notification, not one read per handle: the change feed carries
//! the command's delta, and a handle whose snapshot is at the previous version applies
//! it without reading the store. Checked against the in-memory store and PostgreSQL
//! (another pool writes; the reader's store counts its reads).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tradepulse_symbol_mode::{
    Applied, Audit, AuditEvent, CancelAllCommand, CancelAllSubscription, Error, FeedSource,
    MemorySymbolModeStore, ModeChange, ModeDelta, NewStrategiesState, Position,
    PostgresSymbolModeStore, RegisteredSymbol, StartAt, Subscription, SymbolMode, SymbolModeStore,
    SymbolModes, SymbolModesConfig, SymbolState, Throttle, ThrottleState, VenueState,
};
use tradepulse_testkit::{fast_settings, shared_primary, wait_until};

/// Counts the reads a handle makes of the store it watches.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn SymbolModeStore>,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl FeedSource for Counting {
    type Item = ModeChange;
    type Error = Error;
    async fn subscribe(&self) -> Result<Subscription, Error> {
        self.inner.subscribe().await
    }
    async fn contains(&self, position: Position) -> Result<bool, Error> {
        self.inner.contains(position).await
    }
}

#[async_trait::async_trait]
impl SymbolModeStore for Counting {
    async fn venue(&self) -> Result<VenueState, Error> {
        self.inner.venue().await
    }
    async fn symbol_state(&self, symbol: &str) -> Result<Option<SymbolState>, Error> {
        self.inner.symbol_state(symbol).await
    }
    async fn changes_since(&self, version: u64) -> Result<ModeDelta, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.changes_since(version).await
    }
    async fn set_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.inner.set_symbol_mode(symbol, mode, audit).await
    }
    async fn tighten_symbol_mode(
        &self,
        symbol: &str,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        self.inner.tighten_symbol_mode(symbol, mode, audit).await
    }
    async fn set_global_mode(
        &self,
        mode: SymbolMode,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.inner.set_global_mode(mode, audit).await
    }
    async fn cancel_all(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Applied<CancelAllCommand>, Error> {
        self.inner.cancel_all(symbol, audit).await
    }
    async fn withdrawals_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.inner.withdrawals_halt(on, audit).await
    }
    async fn new_strategies_halt(
        &self,
        on: bool,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.inner.new_strategies_halt(on, audit).await
    }
    async fn new_strategies(&self) -> Result<NewStrategiesState, Error> {
        self.inner.new_strategies().await
    }
    async fn register_symbol(
        &self,
        symbol: &str,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        self.inner.register_symbol(symbol, audit).await
    }
    async fn symbols(&self) -> Result<Vec<RegisteredSymbol>, Error> {
        self.inner.symbols().await
    }
    async fn set_throttle(
        &self,
        symbol: &str,
        limit: Option<Throttle>,
        audit: &Audit,
    ) -> Result<Applied<AuditEvent>, Error> {
        self.inner.set_throttle(symbol, limit, audit).await
    }
    async fn tighten_throttle(
        &self,
        symbol: &str,
        limit: Throttle,
        audit: &Audit,
    ) -> Result<Option<AuditEvent>, Error> {
        self.inner.tighten_throttle(symbol, limit, audit).await
    }
    async fn throttles(&self) -> Result<Vec<ThrottleState>, Error> {
        self.inner.throttles().await
    }
    async fn history(&self, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        self.inner.history(limit).await
    }
    async fn subscribe_cancel_all(&self, start: StartAt) -> Result<CancelAllSubscription, Error> {
        self.inner.subscribe_cancel_all(start).await
    }
}

/// Five commands of every kind reach a handle (polling at 1 h) with no read after
/// its first load.
async fn changes_arrive_without_reads(
    writer: Arc<dyn SymbolModeStore>,
    reader: Arc<dyn SymbolModeStore>,
) {
    writer
        .register_symbols(&["BTC-USD", "ETH-USD"], &Audit::new("ops", "listing"))
        .await
        .unwrap();
    let counting = Arc::new(Counting {
        inner: reader,
        reads: AtomicUsize::new(0),
    });
    let modes = SymbolModes::spawn(
        counting.clone(),
        SymbolModesConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    );
    wait_until("operational", Duration::from_secs(10), || {
        modes.health().status == failover_core::ComponentStatus::Operational
    })
    .await;
    let loads = counting.reads.load(Ordering::SeqCst);
    let ops = || Audit::new("ops", "fan-out");
    // One command at a time, each awaited by the handle: a slow reader may skip to
    // the newest and then reads once, which is what it should do.
    let arrived = |position: Position| {
        let modes = modes.clone();
        async move {
            wait_until("the handle has the change", Duration::from_secs(5), || {
                modes.snapshot().position() == position
            })
            .await
        }
    };
    let e = writer
        .set_symbol_mode("BTC-USD", SymbolMode::SoftHalt, &ops())
        .await
        .unwrap();
    arrived(e.position).await;
    let e = writer
        .set_global_mode(SymbolMode::CancelOnly, &ops())
        .await
        .unwrap();
    arrived(e.position).await;
    let e = writer.withdrawals_halt(true, &ops()).await.unwrap();
    arrived(e.position).await;
    let c = writer.cancel_all("BTC-USD", &ops()).await.unwrap();
    arrived(Position(c.seq)).await;
    let e = writer
        .set_symbol_mode("ETH-USD", SymbolMode::HardHalt, &ops())
        .await
        .unwrap();
    arrived(e.position).await;
    let limit = Throttle::new(5, 5).unwrap();
    let e = writer
        .set_throttle("ETH-USD", Some(limit), &ops())
        .await
        .unwrap();
    arrived(e.position).await;
    assert_eq!(modes.snapshot().throttle("ETH-USD"), Some(limit));
    let e = writer
        .set_throttle("ETH-USD", None, &ops().with_ticket("OPS-1"))
        .await
        .unwrap();
    arrived(e.position).await;
    assert_eq!(
        modes.snapshot().throttle("ETH-USD"),
        None,
        "cleared by push"
    );
    assert_eq!(modes.mode("BTC-USD"), SymbolMode::SoftHalt);
    assert_eq!(modes.mode("ETH-USD"), SymbolMode::HardHalt);
    assert_eq!(modes.mode("XRP-USD"), SymbolMode::CancelOnly, "global mode");
    assert!(modes.withdrawals_halted());
    assert_eq!(
        counting.reads.load(Ordering::SeqCst),
        loads,
        "no read per change: the deltas came with the notifications"
    );
}

#[tokio::test]
async fn memory_changes_arrive_without_reads() {
    let store: Arc<dyn SymbolModeStore> = Arc::new(MemorySymbolModeStore::new());
    changes_arrive_without_reads(store.clone(), store).await;
}

#[tokio::test]
async fn postgres_changes_arrive_without_reads() {
    let (cluster, db) = shared_primary().await.expect("cluster");
    let dsn = cluster.primary().dsn(&db);
    let store = || async {
        let s = PostgresSymbolModeStore::new(fast_settings(&dsn).build().unwrap()).unwrap();
        s.migrate().await.unwrap();
        Arc::new(s) as Arc<dyn SymbolModeStore>
    };
    changes_arrive_without_reads(store().await, store().await).await;
}
