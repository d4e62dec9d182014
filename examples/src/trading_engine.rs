//! An order gateway and a tiny matching engine for a few symbols, every order gated by
//! the kill switch and the effective symbol mode, fills written by the leading engine
//! instance with its fencing token. It plays a short scripted incident:
//!
//! 1. normal trading on BTC-USD, ETH-USD and SOL-USD;
//! 2. ETH-USD put in CANCEL_ONLY: new orders refused, cancels still accepted;
//! 3. `CancelAll(SOL-USD)` from the admin: the engine cancels SOL-USD's resting orders;
//! 4. the kill switch engaged: every working order cancelled at once, new ones refused;
//! 5. the leading engine pauses past its lease; the standby takes over with a newer
//!    token; the paused one wakes and its fill is refused with `FENCING_TOKEN`;
//! 6. resume through CANCEL_ONLY to NORMAL, with tickets; trading flows again.

use fencing::{LeaseFencer, FENCING_TOKEN};
use killswitch::{Audit, KillSwitch, KillSwitchConfig, KillSwitchStore};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use symbol_mode::{
    StartAt, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig, TradingAction,
};
use tokio::time::Instant;

/// The symbols the engine trades.
pub const SYMBOLS: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];
/// The resource the matching engines' lease and fence protect.
pub const BOOK: &str = "matching:book";
/// Lease duration of an engine instance.
pub const LEASE_TTL: Duration = Duration::from_millis(300);

/// Where fills are written: the resource that checks fencing tokens.
#[async_trait::async_trait]
pub trait FillLedger: Send + Sync {
    /// Writes one fill under `token`; refused with `FENCING_TOKEN` when a newer token wrote.
    async fn write_fill(&self, token: u64, fill: &str) -> Result<(), fencing::Error>;
    /// Every fill written, in order, with its token.
    async fn fills(&self) -> Vec<(u64, String)>;
}

/// Fills in memory behind a [`fencing::MemoryFence`].
#[derive(Debug, Default)]
pub struct MemoryLedger {
    fence: fencing::MemoryFence,
    fills: Mutex<Vec<(u64, String)>>,
}

#[async_trait::async_trait]
impl FillLedger for MemoryLedger {
    async fn write_fill(&self, token: u64, fill: &str) -> Result<(), fencing::Error> {
        self.fence.write(BOOK, token, || {
            self.fills
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((token, fill.to_owned()));
            Ok::<_, fencing::Error>(())
        })
    }

    async fn fills(&self) -> Vec<(u64, String)> {
        self.fills.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Fills in a PostgreSQL table, each INSERT fenced in the same transaction.
#[derive(Debug, Clone)]
pub struct PostgresLedger {
    pool: failover_core::postgres::PgPool,
}

impl PostgresLedger {
    /// Creates the `engine_fills` table (and the fencing schema) if needed.
    pub async fn new(pool: failover_core::postgres::PgPool) -> Result<Self, fencing::Error> {
        fencing::postgres::migrate(&pool).await?;
        pool.run("engine.create_fills", |c| {
            Box::pin(async move {
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS engine_fills (
                        id BIGSERIAL PRIMARY KEY, token BIGINT NOT NULL, fill TEXT NOT NULL)",
                )
                .await
            })
        })
        .await?;
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl FillLedger for PostgresLedger {
    async fn write_fill(&self, token: u64, fill: &str) -> Result<(), fencing::Error> {
        let fill = fill.to_owned();
        // Check the token and write in one transaction, retried on a lost connection.
        self.pool
            .transaction("engine.fill", |tx| {
                let fill = fill.clone();
                Box::pin(async move {
                    fencing::postgres::fence(tx, BOOK, token).await?;
                    tx.execute(
                        "INSERT INTO engine_fills (token, fill) VALUES ($1, $2)",
                        &[&(token as i64), &fill],
                    )
                    .await
                    .map_err(|e| {
                        fencing::Error::from(failover_core::postgres::db_error("engine.fill", &e))
                    })?;
                    Ok(())
                })
            })
            .await
    }

    async fn fills(&self) -> Vec<(u64, String)> {
        self.pool
            .run("engine.fills", |c| {
                Box::pin(async move {
                    c.query("SELECT token, fill FROM engine_fills ORDER BY id", &[])
                        .await
                })
            })
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The stores a run uses.
pub struct Stores {
    /// Kill switch.
    pub kill: Arc<dyn KillSwitchStore>,
    /// Symbol modes and emergency controls.
    pub modes: Arc<dyn SymbolModeStore>,
    /// Leases of the engine instances.
    pub leases: Arc<dyn LeaseFencer>,
    /// Where fills go.
    pub ledger: Arc<dyn FillLedger>,
}

impl Stores {
    /// Everything in memory.
    pub fn memory() -> Self {
        Self {
            kill: Arc::new(killswitch::MemoryKillSwitchStore::new()),
            modes: Arc::new(symbol_mode::MemorySymbolModeStore::new()),
            leases: Arc::new(fencing::MemoryLeaseFencer::new()),
            ledger: Arc::new(MemoryLedger::default()),
        }
    }

    /// Each store from its own environment settings (`TRADEPULSE_KILL_SWITCH_POSTGRES__*`,
    /// `TRADEPULSE_SYMBOL_MODE_POSTGRES__*`, `TRADEPULSE_FENCING_POSTGRES__*`), migrated here.
    pub async fn postgres_from_env() -> Result<Self, BoxError> {
        let kill = killswitch::PostgresKillSwitchStore::from_env()?;
        kill.migrate().await?;
        let modes = symbol_mode::PostgresSymbolModeStore::from_env()?;
        modes.migrate().await?;
        let leases = fencing::PostgresLeaseFencer::from_env()?;
        leases.migrate().await?;
        let ledger = PostgresLedger::new(leases.pool().clone()).await?;
        Ok(Self {
            kill: Arc::new(kill),
            modes: Arc::new(modes),
            leases: Arc::new(leases),
            ledger: Arc::new(ledger),
        })
    }

    /// Everything in the PostgreSQL database of `settings` (migrated here).
    pub async fn postgres(settings: failover_core::postgres::PgSettings) -> Result<Self, BoxError> {
        let kill = killswitch::PostgresKillSwitchStore::new(settings.clone())?;
        kill.migrate().await?;
        let modes = symbol_mode::PostgresSymbolModeStore::new(settings.clone())?;
        modes.migrate().await?;
        let leases = fencing::PostgresLeaseFencer::new(settings.clone())?;
        leases.migrate().await?;
        let ledger = PostgresLedger::new(leases.pool().clone()).await?;
        Ok(Self {
            kill: Arc::new(kill),
            modes: Arc::new(modes),
            leases: Arc::new(leases),
            ledger: Arc::new(ledger),
        })
    }
}

/// What happened, for the summary and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Orders accepted by the gateway.
    pub accepted: usize,
    /// Orders refused by the kill switch.
    pub refused_by_kill_switch: usize,
    /// Orders refused by the effective symbol mode.
    pub refused_by_mode: usize,
    /// Trader cancels accepted.
    pub cancels: usize,
    /// Resting orders cancelled by `CancelAll(symbol)`.
    pub cancelled_by_cancel_all: usize,
    /// Working orders cancelled when the kill switch was pushed.
    pub cancelled_by_kill_switch: usize,
    /// Fills written, by engine instance.
    pub fills_by_engine: BTreeMap<String, usize>,
    /// Fills refused with `FENCING_TOKEN`.
    pub stale_fills_refused: usize,
    /// Audit events recorded (kill switch + symbol modes, the engine's symbol
    /// registrations included).
    pub audit_events: usize,
}

#[derive(Debug, Clone)]
struct Order {
    id: u64,
    symbol: &'static str,
    buy: bool,
    price: u64,
}

struct Engine<'a> {
    stores: &'a Stores,
    kill: KillSwitch,
    modes: SymbolModes,
    resting: Vec<Order>,
    next_id: u64,
    summary: Summary,
    start: Instant,
    out: Box<dyn FnMut(String) + Send + 'a>,
}

impl Engine<'_> {
    fn say(&mut self, line: impl AsRef<str>) {
        let ms = self.start.elapsed().as_millis();
        (self.out)(format!("[{ms:>5} ms] {}", line.as_ref()));
    }

    /// The order path: kill switch (one atomic load), then the effective mode.
    async fn place(
        &mut self,
        symbol: &'static str,
        buy: bool,
        price: u64,
        writer: Option<(&str, u64)>,
    ) {
        self.next_id += 1;
        let order = Order {
            id: self.next_id,
            symbol,
            buy,
            price,
        };
        if let Err(halt) = self.kill.check() {
            self.summary.refused_by_kill_switch += 1;
            self.say(format!("order {} {symbol}: REFUSED ({halt})", order.id));
            return;
        }
        if let Err(refusal) = self.modes.check(symbol, TradingAction::Place) {
            self.summary.refused_by_mode += 1;
            self.say(format!("order {} {symbol}: REFUSED ({refusal})", order.id));
            return;
        }
        self.summary.accepted += 1;
        let cross = self.resting.iter().position(|o| {
            o.symbol == symbol
                && o.buy != buy
                && if buy {
                    o.price <= price
                } else {
                    o.price >= price
                }
        });
        match (cross, writer) {
            (Some(i), Some((engine, token)))
                if self.modes.allows(symbol, TradingAction::Matching) =>
            {
                let maker = self.resting.remove(i);
                let fill = format!("{symbol} {} x {} @ {}", order.id, maker.id, maker.price);
                self.write_fill(engine, token, &fill).await;
            }
            _ => {
                self.say(format!(
                    "order {} {symbol} {} @ {price}: resting",
                    order.id,
                    if buy { "buy" } else { "sell" }
                ));
                self.resting.push(order);
            }
        }
    }

    async fn write_fill(&mut self, engine: &str, token: u64, fill: &str) {
        match self.stores.ledger.write_fill(token, fill).await {
            Ok(()) => {
                *self
                    .summary
                    .fills_by_engine
                    .entry(engine.to_owned())
                    .or_default() += 1;
                self.say(format!("fill {fill} written by {engine} (token {token})"));
            }
            Err(e) if e.code() == Some(FENCING_TOKEN) => {
                self.summary.stale_fills_refused += 1;
                self.say(format!("fill {fill} by {engine} REFUSED: {e}"));
            }
            Err(e) => self.say(format!("fill {fill} by {engine} failed: {e}")),
        }
    }

    fn cancel(&mut self, symbol: &'static str) {
        match self.modes.check(symbol, TradingAction::Cancel) {
            Ok(()) => {
                if let Some(i) = self.resting.iter().position(|o| o.symbol == symbol) {
                    let o = self.resting.remove(i);
                    self.summary.cancels += 1;
                    self.say(format!("cancel order {} {symbol}: accepted", o.id));
                }
            }
            Err(refusal) => self.say(format!("cancel on {symbol}: REFUSED ({refusal})")),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the scripted incident against `stores`, printing the timeline through `out`.
pub async fn run(stores: Stores, out: impl FnMut(String) + Send) -> Result<Summary, BoxError> {
    // An engine registers the symbols it trades at start: operators address them by
    // these names, and a mistyped one is refused instead of halting nothing.
    stores
        .modes
        .register_symbols(&SYMBOLS, &Audit::new("engine-a", "engine start"))
        .await?;
    let kill = KillSwitch::spawn(stores.kill.clone(), KillSwitchConfig::default());
    let modes = SymbolModes::spawn(stores.modes.clone(), SymbolModesConfig::default());
    if !kill.ready(Duration::from_secs(10)).await
        || kill.is_halted()
        || !modes.ready(Duration::from_secs(10)).await
    {
        return Err(format!(
            "controls not ready: {:?} / {:?}",
            kill.health(),
            modes.health()
        )
        .into());
    }
    let mut halted = kill.subscribe();
    let mut cancel_all = stores.modes.subscribe_cancel_all(StartAt::Now).await?;
    let mut e = Engine {
        stores: &stores,
        kill,
        modes,
        resting: Vec::new(),
        next_id: 0,
        summary: Summary::default(),
        start: Instant::now(),
        out: Box::new(out),
    };
    let ops = |reason: &str| Audit::new("ops:alice", reason);

    e.say("== 1. normal trading; engine-a leads the book");
    let a = stores.leases.acquire(BOOK, "engine-a", LEASE_TTL).await?;
    let a_token = a.token();
    e.say(format!("engine-a holds the book lease (token {a_token})"));
    for symbol in SYMBOLS {
        e.place(symbol, false, 100, Some(("engine-a", a_token)))
            .await;
        e.place(symbol, false, 101, Some(("engine-a", a_token)))
            .await;
        e.place(symbol, true, 100, Some(("engine-a", a_token)))
            .await;
    }

    e.say("== 2. operator puts ETH-USD in CANCEL_ONLY");
    let event = stores
        .modes
        .set_symbol_mode(
            "ETH-USD",
            SymbolMode::CancelOnly,
            &ops("ETH-USD feed unstable"),
        )
        .await?;
    e.modes
        .wait_for_version(event.version, Duration::from_secs(5))
        .await;
    e.place("ETH-USD", true, 105, Some(("engine-a", a_token)))
        .await;
    e.cancel("ETH-USD");
    e.place("BTC-USD", false, 102, Some(("engine-a", a_token)))
        .await;

    e.say("== 3. operator issues CancelAll(SOL-USD)");
    stores
        .modes
        .cancel_all("SOL-USD", &ops("SOL-USD settlement issue"))
        .await?;
    let command = tokio::time::timeout(Duration::from_secs(5), cancel_all.next())
        .await?
        .ok_or("cancel-all stream closed")?;
    let before = e.resting.len();
    e.resting.retain(|o| o.symbol != command.symbol);
    e.summary.cancelled_by_cancel_all = before - e.resting.len();
    e.say(format!(
        "CancelAll({}) received (seq {}): {} resting orders cancelled",
        command.symbol, command.seq, e.summary.cancelled_by_cancel_all
    ));

    e.say("== 4. operator engages the kill switch");
    stores
        .kill
        .engage(&ops("runaway strategy detected"))
        .await?;
    halted.wait_for(|t| t.is_halted()).await?;
    e.summary.cancelled_by_kill_switch = e.resting.len();
    e.say(format!(
        "halt pushed: cancelling all {} working orders",
        e.resting.len()
    ));
    e.resting.clear();
    e.place("BTC-USD", true, 100, Some(("engine-a", a_token)))
        .await;

    e.say("== 5. engine-a pauses past its lease; engine-b takes over");
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(100)).await;
    let b = loop {
        match stores.leases.acquire(BOOK, "engine-b", LEASE_TTL).await {
            Ok(lease) => break lease,
            Err(fencing::Error::Held { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => return Err(other.into()),
        }
    };
    e.say(format!(
        "engine-b holds the book lease (token {})",
        b.token()
    ));
    e.write_fill(
        "engine-b",
        b.token(),
        "BTC-USD settlement correction by engine-b",
    )
    .await;
    e.say("engine-a wakes up, still believing it leads, and writes a fill");
    e.write_fill("engine-a", a_token, "BTC-USD late fill by paused engine-a")
        .await;

    e.say("== 6. resume through CANCEL_ONLY to NORMAL");
    let event = stores
        .modes
        .set_global_mode(SymbolMode::CancelOnly, &ops("resume: cancel-only first"))
        .await?;
    e.modes
        .wait_for_version(event.version, Duration::from_secs(5))
        .await;
    stores
        .kill
        .disengage(&ops("strategy disabled").with_ticket("INC-2041"))
        .await?;
    halted.wait_for(|t| !t.is_halted()).await?;
    e.place("BTC-USD", true, 100, Some(("engine-b", b.token())))
        .await;
    let event = stores
        .modes
        .set_global_mode(
            SymbolMode::Normal,
            &ops("resume: normal").with_ticket("INC-2041"),
        )
        .await?;
    e.modes
        .wait_for_version(event.version, Duration::from_secs(5))
        .await;
    let event = stores
        .modes
        .set_symbol_mode(
            "ETH-USD",
            SymbolMode::Normal,
            &ops("feed stable").with_ticket("INC-2042"),
        )
        .await?;
    e.modes
        .wait_for_version(event.version, Duration::from_secs(5))
        .await;
    for symbol in SYMBOLS {
        e.place(symbol, false, 100, Some(("engine-b", b.token())))
            .await;
        e.place(symbol, true, 100, Some(("engine-b", b.token())))
            .await;
    }
    stores.leases.release(&b).await?;

    let mut summary = e.summary.clone();
    summary.audit_events =
        stores.kill.history(100).await?.len() + stores.modes.history(100).await?.len();
    Ok(summary)
}
