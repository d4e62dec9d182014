//! The fault matrix: every fault the testkit can inflict on PostgreSQL, against every
//! safety control, on real servers.
//!
//! | test                 | fault                                       | recovery                  |
//! |----------------------|---------------------------------------------|---------------------------|
//! | `kill9_primary`      | kill -9 of the primary                      | promote the sync replica  |
//! | `immediate_stop`     | `pg_ctl stop -m immediate` of the primary   | start the primary again   |
//! | `sigstop_primary`    | SIGSTOP of the primary (a hung server)      | SIGCONT                   |
//! | `terminate_backends` | every client backend terminated             | none: the next call works |
//! | `read_only_primary`  | primary read-only (planned-failover runbook)| promote the sync replica  |
//! | `promote_replica`    | replica promoted while the primary runs     | none: a split brain       |
//!
//! Each test runs all three controls — kill switch, symbol mode, lease + fenced write —
//! on one cluster and one database, through stores over the cluster's multi-host DSN
//! with a 1.5 s retry budget, and hot-path handles with a 2 s staleness window. In each
//! cell:
//!
//! 1. before the fault every control writes and the handles are operational;
//! 2. while the database is unusable every write fails with the control's typed
//!    `Unavailable` within the retry budget (plus scheduling slack), never hangs;
//! 3. meanwhile the handles serve the last state, then fail closed once the window has
//!    passed (kill switch `Halt::Stale`, symbol modes at least `SOFT_HALT`, health
//!    `failed`);
//! 4. after recovery the same store and handle objects work again, with no restart: the
//!    write that failed, retried with the same `Audit`, takes effect exactly once, and
//!    the handles return to `operational` with the new state;
//! 5. the lease holder's old lease is still valid or reported lost, a new holder
//!    acquires a higher token, and a fenced write with the older token is refused with
//!    `FENCING_TOKEN`.
//!
//! Each cell prints one line, `matrix <fault> <control>: failed fast in …, recovered in …`,
//! with the measured times.

use failover_core::postgres::{db_error, PgPool};
use failover_core::{Audit, ComponentStatus};
use fencing::postgres::token_timeline;
use fencing::{Lease, LeaseFencer, LostReason, PostgresLeaseFencer, FENCING_TOKEN};
use killswitch::{Halt, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use symbol_mode::{
    Cause, PostgresSymbolModeStore, SymbolMode, SymbolModeStore, SymbolModes, SymbolModesConfig,
    TradingAction,
};
use tokio::time::{sleep, timeout, Instant};
use tradepulse_testkit::{fast_settings, wait_until, Cluster, Node};

/// Every store's retry budget: the bound on a call during an outage.
const BUDGET: Duration = Duration::from_millis(1500);
/// Scheduling slack on top of the budget (two clusters share two cores).
const SLACK: Duration = Duration::from_millis(500);
/// A call still running this long past its budget is a hang: the test fails.
const HANG: Duration = Duration::from_secs(5);
/// The handles' staleness window.
const WINDOW: Duration = Duration::from_secs(2);
/// The handles' poll interval.
const POLL: Duration = Duration::from_millis(150);
/// Bound on a handle converging to a state.
const CONVERGE: Duration = Duration::from_secs(10);
/// Lease time to live: short, so a new leader can take over after a split.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// The symbol the drill restricts.
const SYMBOL: &str = "BTC-USD";
/// A symbol never set: `NORMAL` while fresh, `SOFT_HALT` once stale.
const UNTOUCHED: &str = "ETH-USD";
/// The resource the lease and the fenced writes protect.
const RESOURCE: &str = "btc-usd-book";
/// The fenced-write table: fills, each INSERT fenced in its own transaction.
const FILLS: &str = "CREATE TABLE IF NOT EXISTS matrix_fills (
    id    BIGSERIAL PRIMARY KEY,
    token BIGINT    NOT NULL,
    entry TEXT      NOT NULL
)";

/// The three controls of one cell, over one database: the stores and the handles a
/// trading service would hold for its whole life.
struct Controls {
    cell: &'static str,
    kill_store: Arc<PostgresKillSwitchStore>,
    kill_switch: KillSwitch,
    mode_store: Arc<PostgresSymbolModeStore>,
    modes: SymbolModes,
    fencer: PostgresLeaseFencer,
}

/// What held before the fault.
struct Before {
    kill_version: u64,
    mode_version: u64,
    /// engine-a's lease, used for a fenced write before the fault.
    lease: Lease,
    /// Every token issued before the fault.
    issued: Vec<u64>,
}

impl Before {
    fn newest_token(&self) -> u64 {
        self.issued.iter().copied().max().unwrap_or(0)
    }
}

/// The writes attempted during the outage, retried with the same `Audit` (same request
/// id) after recovery: their outcome was unknown, and the retry is safe.
struct Writes {
    engage: Audit,
    halt: Audit,
}

impl Writes {
    fn new() -> Self {
        Self {
            engage: Audit::new(
                "ops:drill",
                "matrix: engage while the database is in trouble",
            ),
            halt: Audit::new(
                "ops:drill",
                "matrix: hard halt while the database is in trouble",
            ),
        }
    }
}

/// Measured during the outage.
struct Outage {
    writes: Writes,
    engage: Duration,
    set_mode: Duration,
    renew: Duration,
    fill: Duration,
    kill_switch_stale: Duration,
    modes_stale: Duration,
}

/// Measured after recovery.
struct Recovery {
    engage: Duration,
    kill_switch_fresh: Duration,
    set_mode: Duration,
    modes_fresh: Duration,
    fencing: Duration,
    old_lease: String,
    new_token: u64,
    /// Anything else the cell observed, for the report line.
    note: String,
}

impl Controls {
    async fn start(cell: &'static str, dsn: &str) -> Self {
        let settings = fast_settings(dsn)
            .with_retry_budget(BUDGET)
            .build()
            .expect("settings");
        let kill_store =
            Arc::new(PostgresKillSwitchStore::new(settings.clone()).expect("kill switch store"));
        kill_store.migrate().await.expect("kill switch migrations");
        let mode_store =
            Arc::new(PostgresSymbolModeStore::new(settings.clone()).expect("symbol mode store"));
        mode_store.migrate().await.expect("symbol mode migrations");
        mode_store
            .register_symbol(SYMBOL, &Audit::new("matrix", "matrix symbol"))
            .await
            .expect("register the matrix symbol");
        let fencer = PostgresLeaseFencer::new(settings).expect("lease store");
        fencer.migrate().await.expect("fencing migrations");
        fencer
            .pool()
            .run("matrix.create_fills", |c| {
                Box::pin(async move { c.batch_execute(FILLS).await })
            })
            .await
            .expect("fills table");
        let kill_switch = KillSwitch::spawn(
            kill_store.clone(),
            KillSwitchConfig::default()
                .with_staleness_window(WINDOW)
                .with_poll_interval(POLL),
        );
        let modes = SymbolModes::spawn(
            mode_store.clone(),
            SymbolModesConfig::default()
                .with_staleness_window(WINDOW)
                .with_poll_interval(POLL),
        );
        assert!(kill_switch.ready(CONVERGE).await, "{cell}");
        assert!(!kill_switch.is_halted(), "{cell}");
        assert!(modes.ready(CONVERGE).await, "{cell}");
        Self {
            cell,
            kill_store,
            kill_switch,
            mode_store,
            modes,
            fencer,
        }
    }

    /// Step 1: every control writes; the handles are operational with that state.
    async fn before_fault(&self) -> Before {
        let cell = self.cell;
        let engaged = self
            .kill_store
            .engage(&Audit::new("ops:drill", "matrix: pre-fault engage"))
            .await
            .unwrap_or_else(|e| panic!("{cell}: engage before the fault: {e}"));
        assert!(engaged.engaged);
        let running = self
            .kill_store
            .disengage(
                &Audit::new("ops:drill", "matrix: pre-fault disengage").with_ticket("DRILL-1"),
            )
            .await
            .unwrap_or_else(|e| panic!("{cell}: disengage before the fault: {e}"));
        assert!(!running.engaged);
        let restricted = self
            .mode_store
            .set_symbol_mode(
                SYMBOL,
                SymbolMode::CancelOnly,
                &Audit::new("ops:drill", "matrix: pre-fault restriction"),
            )
            .await
            .unwrap_or_else(|e| panic!("{cell}: set_symbol_mode before the fault: {e}"));
        let lease = self
            .fencer
            .acquire(RESOURCE, "engine-a", LEASE_TTL)
            .await
            .unwrap_or_else(|e| panic!("{cell}: acquire before the fault: {e}"));
        fenced_write(self.fencer.pool(), lease.token(), "fill before the fault")
            .await
            .unwrap_or_else(|e| panic!("{cell}: fenced write before the fault: {e}"));

        wait_until(
            &format!("{cell}: handles operational with the pre-fault state"),
            CONVERGE,
            || {
                self.kill_switch.check() == Ok(())
                    && self
                        .kill_switch
                        .status()
                        .state
                        .is_some_and(|s| s.version == running.version)
                    && self.kill_switch.health().status == ComponentStatus::Operational
                    && self.modes.status().version == restricted.version
                    && self.modes.mode(SYMBOL) == SymbolMode::CancelOnly
                    && self.modes.mode(UNTOUCHED) == SymbolMode::Normal
                    && self.modes.health().status == ComponentStatus::Operational
            },
        )
        .await;
        Before {
            kill_version: running.version,
            mode_version: restricted.version,
            issued: vec![lease.token()],
            lease,
        }
    }

    /// Steps 2 and 3, with the fault in force since `fault_at`: the writes fail fast
    /// with `Unavailable` while the handles serve the last state and then fail closed.
    async fn through_outage(&self, before: &Before, fault_at: Instant) -> Outage {
        let cell = self.cell;
        // Nothing refreshed yet: the last state.
        assert_eq!(self.kill_switch.check(), Ok(()), "{cell}: at the fault");
        assert_eq!(
            self.modes.mode(SYMBOL),
            SymbolMode::CancelOnly,
            "{cell}: at the fault"
        );

        let writes = Writes::new();
        let (engage, set_mode, renew, fill, (kill_switch_stale, modes_stale)) = tokio::join!(
            guarded(cell, "engage", self.kill_store.engage(&writes.engage)),
            guarded(
                cell,
                "set_symbol_mode",
                self.mode_store
                    .set_symbol_mode(SYMBOL, SymbolMode::HardHalt, &writes.halt),
            ),
            guarded(cell, "renew", self.fencer.renew(&before.lease)),
            guarded(
                cell,
                "fenced write",
                fenced_write(
                    self.fencer.pool(),
                    before.lease.token(),
                    "fill during the outage",
                ),
            ),
            self.fail_closed(fault_at),
        );
        let engage = expect_unavailable(cell, "kill switch engage", engage, |e| {
            matches!(e, killswitch::Error::Unavailable { .. })
        });
        let set_mode = expect_unavailable(cell, "set_symbol_mode", set_mode, |e| {
            matches!(e, symbol_mode::Error::Unavailable { .. })
        });
        let renew = expect_unavailable(cell, "lease renew", renew, |e| {
            matches!(e, fencing::Error::Unavailable { .. })
        });
        let fill = expect_unavailable(cell, "fenced write", fill, |e| {
            matches!(e, fencing::Error::Unavailable { .. })
        });
        Outage {
            writes,
            engage,
            set_mode,
            renew,
            fill,
            kill_switch_stale,
            modes_stale,
        }
    }

    /// Samples the handles from the fault until both have failed closed: until then
    /// they must serve exactly the last state, afterwards exactly the fail-closed one.
    /// Returns how long after the fault each failed closed.
    async fn fail_closed(&self, fault_at: Instant) -> (Duration, Duration) {
        let cell = self.cell;
        let limit = WINDOW + BUDGET + Duration::from_secs(3);
        let (mut kill_stale, mut modes_stale) = (None, None);
        while kill_stale.is_none() || modes_stale.is_none() {
            let elapsed = fault_at.elapsed();
            assert!(
                elapsed < limit,
                "{cell}: handles not failed closed {elapsed:?} after the fault (window {WINDOW:?})"
            );
            match self.kill_switch.check() {
                Ok(()) => assert!(
                    kill_stale.is_none(),
                    "{cell}: the kill switch allowed trading again during the outage"
                ),
                Err(Halt::Stale) => {
                    kill_stale.get_or_insert(elapsed);
                }
                Err(other) => panic!(
                    "{cell}: kill switch during the outage said {other:?}; expected the last \
                     state (trading allowed) or Stale"
                ),
            }
            // Read the restricted symbol first: the handle only turns stale during an
            // outage, so a fresh answer for UNTOUCHED implies SYMBOL was read fresh too.
            let symbol = self.modes.mode(SYMBOL);
            let untouched = self.modes.mode(UNTOUCHED);
            match (symbol, untouched) {
                (SymbolMode::CancelOnly, SymbolMode::Normal) => assert!(
                    modes_stale.is_none(),
                    "{cell}: symbol modes turned fresh again during the outage"
                ),
                (SymbolMode::CancelOnly, SymbolMode::SoftHalt) if modes_stale.is_none() => {}
                (SymbolMode::SoftHalt, SymbolMode::SoftHalt) => {
                    modes_stale.get_or_insert(elapsed);
                }
                other => panic!(
                    "{cell}: symbol modes during the outage were {other:?}; expected the last \
                     (CANCEL_ONLY, NORMAL), then (SOFT_HALT, SOFT_HALT)"
                ),
            }
            sleep(Duration::from_millis(20)).await;
        }

        for health in [self.kill_switch.health(), self.modes.health()] {
            assert_eq!(health.status, ComponentStatus::Failed, "{cell}: {health:?}");
            let details = health.details.unwrap_or_default();
            assert!(details.contains("stale"), "{cell}: {details}");
        }
        assert!(self.kill_switch.is_halted());
        // SOFT_HALT keeps cancels open and refuses new risk, blaming staleness.
        assert!(self.modes.check(SYMBOL, TradingAction::Cancel).is_ok());
        let refusal = self
            .modes
            .check(UNTOUCHED, TradingAction::Place)
            .expect_err("placing is refused once stale");
        assert_eq!(refusal.cause, Cause::Stale, "{cell}");
        let (kill_stale, modes_stale) = (kill_stale.unwrap(), modes_stale.unwrap());
        // Failing closed at once would not be serving the last state.
        assert!(
            kill_stale > WINDOW / 2 && modes_stale > WINDOW / 2,
            "{cell}: failed closed too early: {kill_stale:?}, {modes_stale:?} (window {WINDOW:?})"
        );
        (kill_stale, modes_stale)
    }

    /// Step 4 for the kill switch and symbol modes, once the database is usable again
    /// (since `recovered_at`): the writes of `writes` succeed, exactly once, on the same
    /// store objects, and the same handles converge to the new state.
    async fn after_recovery(
        &self,
        before: &Before,
        writes: &Writes,
        recovered_at: Instant,
    ) -> (Duration, Duration, Duration, Duration) {
        let cell = self.cell;
        let kill = async {
            let (result, took) =
                guarded(cell, "engage", self.kill_store.engage(&writes.engage)).await;
            let state = result.unwrap_or_else(|e| panic!("{cell}: engage after recovery: {e}"));
            assert!(state.engaged, "{cell}");
            assert_eq!(
                state.version,
                before.kill_version + 1,
                "{cell}: the engage, retried with the same Audit, took effect exactly once"
            );
            wait_until(
                &format!("{cell}: kill switch handle operational and engaged"),
                CONVERGE,
                || {
                    self.kill_switch.check() == Err(Halt::Engaged)
                        && self.kill_switch.health().status == ComponentStatus::Operational
                },
            )
            .await;
            (took, recovered_at.elapsed())
        };
        let mode = async {
            let (result, took) = guarded(
                cell,
                "set_symbol_mode",
                self.mode_store
                    .set_symbol_mode(SYMBOL, SymbolMode::HardHalt, &writes.halt),
            )
            .await;
            let event =
                result.unwrap_or_else(|e| panic!("{cell}: set_symbol_mode after recovery: {e}"));
            assert_eq!(
                event.version,
                before.mode_version + 1,
                "{cell}: SetSymbolMode, retried with the same Audit, took effect exactly once"
            );
            wait_until(
                &format!("{cell}: symbol mode handle operational with HARD_HALT"),
                CONVERGE,
                || {
                    self.modes.mode(SYMBOL) == SymbolMode::HardHalt
                        && self.modes.mode(UNTOUCHED) == SymbolMode::Normal
                        && self.modes.status().version >= event.version
                        && self.modes.health().status == ComponentStatus::Operational
                },
            )
            .await;
            (took, recovered_at.elapsed())
        };
        let ((engage, kill_fresh), (set_mode, modes_fresh)) = tokio::join!(kill, mode);
        (engage, kill_fresh, set_mode, modes_fresh)
    }

    /// Step 5 on one database: the old lease is still valid or reported lost; the old
    /// holder steps down (a no-op when lost), a new holder acquires a higher token and
    /// writes, and a write with the old token is refused.
    async fn fencing_after_recovery(&self, before: &Before) -> (Duration, String, u64) {
        let cell = self.cell;
        let start = Instant::now();
        let (renewed, _) = guarded(cell, "renew", self.fencer.renew(&before.lease)).await;
        let old_lease = match renewed {
            Ok(lease) => {
                assert_eq!(lease.token(), before.lease.token());
                "still valid".to_owned()
            }
            Err(fencing::Error::LeaseLost { token, reason, .. }) => {
                assert_eq!(token, before.lease.token());
                format!("lost ({reason})")
            }
            Err(e) => {
                panic!("{cell}: renew after recovery: expected the lease or LeaseLost, got {e:?}")
            }
        };
        self.fencer
            .release(&before.lease)
            .await
            .unwrap_or_else(|e| panic!("{cell}: release after recovery: {e}"));
        let lease = self
            .fencer
            .acquire(RESOURCE, "engine-b", LEASE_TTL)
            .await
            .unwrap_or_else(|e| panic!("{cell}: a new acquire after recovery: {e}"));
        assert!(
            lease.token() > before.newest_token(),
            "{cell}: new token {} is not above {}",
            lease.token(),
            before.newest_token()
        );
        fenced_write(self.fencer.pool(), lease.token(), "fill by the new holder")
            .await
            .unwrap_or_else(|e| panic!("{cell}: fenced write by the new holder: {e}"));
        let took = start.elapsed();
        expect_fenced_out(
            cell,
            fenced_write(
                self.fencer.pool(),
                before.lease.token(),
                "fill by the old holder",
            )
            .await,
            before.lease.token(),
            lease.token(),
        );
        assert_eq!(
            fills_with(self.fencer.pool(), "fill by the old holder").await,
            0,
            "{cell}: the refused fill must not be written"
        );
        (took, old_lease, lease.token())
    }

    /// Steps 4 and 5 for all three controls at once.
    async fn recover(&self, before: &Before, writes: &Writes, recovered_at: Instant) -> Recovery {
        let (stores, leases) = tokio::join!(
            self.after_recovery(before, writes, recovered_at),
            self.fencing_after_recovery(before),
        );
        let (engage, kill_switch_fresh, set_mode, modes_fresh) = stores;
        let (fencing, old_lease, new_token) = leases;
        Recovery {
            engage,
            kill_switch_fresh,
            set_mode,
            modes_fresh,
            fencing,
            old_lease,
            new_token,
            note: String::new(),
        }
    }
}

/// Runs `call`, failing the test if it outlives its budget by [`HANG`]; returns its
/// result and how long it took.
async fn guarded<T, E>(
    cell: &str,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> (Result<T, E>, Duration) {
    let start = Instant::now();
    let result = timeout(BUDGET + HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{cell}: {what} hung for more than {:?}", BUDGET + HANG));
    (result, start.elapsed())
}

/// Asserts a typed "unavailable" error within the budget plus slack; returns the time.
fn expect_unavailable<T: Debug, E: Debug>(
    cell: &str,
    what: &str,
    (result, took): (Result<T, E>, Duration),
    is_unavailable: impl Fn(&E) -> bool,
) -> Duration {
    match &result {
        Err(e) if is_unavailable(e) => {}
        other => panic!("{cell}: {what} during the outage: expected Unavailable, got {other:?}"),
    }
    assert!(
        took <= BUDGET + SLACK,
        "{cell}: {what} failed after {took:?}, budget {BUDGET:?}"
    );
    took
}

/// Asserts a fenced write refused with `FENCING_TOKEN` for `token` below `highest`.
fn expect_fenced_out(cell: &str, result: Result<(), fencing::Error>, token: u64, highest: u64) {
    let err = result.expect_err("a write with an older token is refused");
    assert_eq!(err.code(), Some(FENCING_TOKEN), "{cell}: {err:?}");
    match err {
        fencing::Error::FencingToken {
            token: t,
            highest: h,
            ..
        } => assert_eq!((t, h), (token, highest), "{cell}"),
        other => panic!("{cell}: {other:?}"),
    }
}

/// A fill written as a matching engine writes it: `fence` and the INSERT in one
/// transaction of the caller's. The transaction is the caller's, so the caller bounds
/// it (here by the retry budget): nothing below bounds a query on a hung server.
async fn fenced_write(pool: &PgPool, token: u64, entry: &str) -> Result<(), fencing::Error> {
    let entry = entry.to_owned();
    pool.transaction("matrix.fill", |tx| {
        let entry = entry.clone();
        Box::pin(async move {
            fencing::postgres::fence(tx, RESOURCE, token).await?;
            tx.execute(
                "INSERT INTO matrix_fills (token, entry) VALUES ($1, $2)",
                &[&(token as i64), &entry],
            )
            .await
            .map_err(|e| fencing::Error::from(db_error("matrix.fill", &e)))?;
            Ok(())
        })
    })
    .await
}

/// How many fills carry `entry`.
async fn fills_with(pool: &PgPool, entry: &str) -> i64 {
    let entry = entry.to_owned();
    pool.run("matrix.count_fills", |c| {
        let entry = entry.clone();
        Box::pin(async move {
            let row = c
                .query_one(
                    "SELECT count(*) FROM matrix_fills WHERE entry = $1",
                    &[&entry],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        })
    })
    .await
    .expect("count fills")
}

/// `(engaged, version)` of the kill switch as `node` has it.
async fn kill_switch_on(node: &Node, db: &str) -> (bool, u64) {
    let rows = node
        .query(
            db,
            "SELECT engaged, version FROM kill_switch_state WHERE id = 1",
        )
        .await
        .expect("kill_switch_state");
    (
        rows[0][0].as_deref() == Some("t"),
        rows[0][1]
            .as_deref()
            .expect("version")
            .parse()
            .expect("number"),
    )
}

/// The mode of [`SYMBOL`] as `node` has it.
async fn symbol_mode_on(node: &Node, db: &str) -> String {
    let rows = node
        .query(
            db,
            &format!("SELECT mode FROM symbol_modes WHERE symbol = '{SYMBOL}'"),
        )
        .await
        .expect("symbol_modes");
    rows[0][0].clone().expect("mode")
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Prints the cell's three lines; `outage` is `None` for a fault that leaves the
/// database usable.
fn report(cell: &str, outage: Option<&Outage>, recovery: &Recovery) {
    let line = |control: &str, failed: Option<String>, recovered: Duration, detail: String| {
        let (failed, then) = match failed {
            Some(failed) => (failed, "recovered in"),
            None => ("no outage".to_owned(), "next write ok in"),
        };
        eprintln!(
            "matrix {cell} {control}: {failed}, {then} {} ({detail})",
            secs(recovered)
        );
    };
    let handle = |took: Duration, stale: Duration| {
        format!(
            "failed fast in {}, handle failed closed after {}",
            secs(took),
            secs(stale)
        )
    };
    line(
        "kill_switch",
        outage.map(|o| handle(o.engage, o.kill_switch_stale)),
        recovery.engage,
        format!(
            "handle operational after {}",
            secs(recovery.kill_switch_fresh)
        ),
    );
    line(
        "symbol_mode",
        outage.map(|o| handle(o.set_mode, o.modes_stale)),
        recovery.set_mode,
        format!("handle operational after {}", secs(recovery.modes_fresh)),
    );
    line(
        "lease_fence",
        outage.map(|o| {
            format!(
                "failed fast in {} (renew) / {} (fenced write)",
                secs(o.renew),
                secs(o.fill)
            )
        }),
        recovery.fencing,
        format!(
            "old lease {}, new token {}{}",
            recovery.old_lease, recovery.new_token, recovery.note
        ),
    );
}

async fn primary_only() -> (Cluster, String) {
    let cluster = Cluster::start().await.expect("primary");
    let db = cluster.create_database().await.expect("database");
    (cluster, db)
}

async fn with_synchronous_replica() -> (Cluster, String) {
    let cluster = Cluster::builder()
        .replica(true)
        .synchronous(true)
        .start()
        .await
        .expect("primary + synchronous replica");
    let db = cluster.create_database().await.expect("database");
    (cluster, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_primary() {
    const CELL: &str = "kill9_primary";
    // Synchronous: no acknowledged write may be lost across the failover.
    let (cluster, db) = with_synchronous_replica().await;
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let before = controls.before_fault().await;

    cluster.primary().kill9().await.expect("kill -9");
    let outage = controls.through_outage(&before, Instant::now()).await;

    let replica = cluster.replica().expect("replica");
    replica.promote().await.expect("promote");
    let recovery = controls
        .recover(&before, &outage.writes, Instant::now())
        .await;
    // The only writable server left is the promoted replica, with every write.
    assert_eq!(
        kill_switch_on(replica, &db).await,
        (true, before.kill_version + 1)
    );
    assert_eq!(symbol_mode_on(replica, &db).await, "HARD_HALT");
    assert!(token_timeline(recovery.new_token) > token_timeline(before.lease.token()));
    report(CELL, Some(&outage), &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_stop() {
    const CELL: &str = "immediate_stop";
    let (cluster, db) = primary_only().await;
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let before = controls.before_fault().await;

    cluster
        .primary()
        .stop_immediate()
        .await
        .expect("stop -m immediate");
    let outage = controls.through_outage(&before, Instant::now()).await;

    cluster.primary().start().await.expect("start again");
    let recovery = controls
        .recover(&before, &outage.writes, Instant::now())
        .await;
    report(CELL, Some(&outage), &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_primary() {
    const CELL: &str = "sigstop_primary";
    let (cluster, db) = primary_only().await;
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let before = controls.before_fault().await;

    // Dropping the cluster thaws it, so a failed assertion leaves nothing frozen.
    cluster.primary().freeze().expect("SIGSTOP");
    let outage = controls.through_outage(&before, Instant::now()).await;

    cluster.primary().thaw().expect("SIGCONT");
    // A write sent while frozen may land once thawed: the retry with the same Audit
    // is still applied exactly once (checked in `after_recovery`).
    let recovery = controls
        .recover(&before, &outage.writes, Instant::now())
        .await;
    report(CELL, Some(&outage), &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_backends() {
    const CELL: &str = "terminate_backends";
    let (cluster, db) = primary_only().await;
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let before = controls.before_fault().await;

    // Pooled connections of the three stores, and the handles' LISTEN connections.
    let terminated = cluster
        .primary()
        .terminate_backends()
        .await
        .expect("terminate");
    assert!(terminated >= 3, "terminated only {terminated}");
    let recovered_at = Instant::now();

    // The leader's next fenced write comes first, before any other call on its pool:
    // it runs in its own transaction through `PgPool::transaction`, which retries a
    // connection whose backend was terminated, so the very next write succeeds.
    let started = Instant::now();
    let (result, _) = guarded(
        CELL,
        "fenced write",
        fenced_write(
            controls.fencer.pool(),
            before.lease.token(),
            "fill after terminate",
        ),
    )
    .await;
    result.unwrap_or_else(|e| panic!("{CELL}: the next fenced write: {e:?}"));
    let first_fill = format!("; next fenced write ok in {}", secs(started.elapsed()));
    // No outage for the stores' own calls: the very next one of each control succeeds
    // (a call that failed would fail the test).
    let mut recovery = controls
        .recover(&before, &Writes::new(), recovered_at)
        .await;
    recovery.note = first_fill;
    report(CELL, None, &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_primary() {
    const CELL: &str = "read_only_primary";
    let (cluster, db) = with_synchronous_replica().await;
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let before = controls.before_fault().await;

    // The planned-failover runbook: ALTER SYSTEM SET default_transaction_read_only = on
    // and reload. Writes fail with 25006, which is retryable: Unavailable.
    let primary = cluster.primary();
    primary.set_read_only(true).await.expect("read-only");
    let outage = controls.through_outage(&before, Instant::now()).await;

    let replica = cluster.replica().expect("replica");
    replica.promote().await.expect("promote");
    let recovery = controls
        .recover(&before, &outage.writes, Instant::now())
        .await;
    // The multi-host DSN found the writable host: the promoted replica has every
    // write, the read-only old primary none made after the fault.
    assert_eq!(
        kill_switch_on(replica, &db).await,
        (true, before.kill_version + 1)
    );
    assert_eq!(symbol_mode_on(replica, &db).await, "HARD_HALT");
    assert_eq!(
        kill_switch_on(primary, &db).await,
        (false, before.kill_version)
    );
    assert_eq!(symbol_mode_on(primary, &db).await, "CANCEL_ONLY");
    assert!(token_timeline(recovery.new_token) > token_timeline(before.lease.token()));
    report(CELL, Some(&outage), &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_replica() {
    const CELL: &str = "promote_replica";
    let cluster = Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let db = cluster.create_database().await.expect("database");
    let controls = Controls::start(CELL, &cluster.multi_host_dsn(&db)).await;
    let mut before = controls.before_fault().await;
    // More grants before the split, all of them replicated.
    for holder in ["engine-x", "engine-y"] {
        let lease = controls
            .fencer
            .acquire(&format!("{RESOURCE}-other"), holder, LEASE_TTL)
            .await
            .expect("acquire");
        before.issued.push(lease.token());
        controls.fencer.release(&lease).await.expect("release");
    }
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .expect("replica caught up");

    // Split brain: the replica is promoted while the old primary still runs and
    // still accepts writes.
    let (primary, replica) = (cluster.primary(), cluster.replica().expect("replica"));
    replica.promote().await.expect("promote");
    let promoted_at = Instant::now();

    // The kill switch and symbol-mode stores keep working: the multi-host DSN reaches
    // the first writable host, which is still the old primary.
    let writes = Writes::new();
    let (engage, kill_switch_fresh, set_mode, modes_fresh) =
        controls.after_recovery(&before, &writes, promoted_at).await;
    assert_eq!(
        kill_switch_on(primary, &db).await,
        (true, before.kill_version + 1)
    );
    // The hazard of a split: the promoted replica never hears of them.
    assert_eq!(
        kill_switch_on(replica, &db).await,
        (false, before.kill_version)
    );
    assert_eq!(symbol_mode_on(replica, &db).await, "CANCEL_ONLY");

    // A new leader campaigns on the promoted replica. engine-a's lease is unexpired
    // there for up to its ttl (judged by that server's clock); then it is granted a
    // token on the new timeline, above every token issued before.
    let fencing_started = Instant::now();
    let new_side = PostgresLeaseFencer::new(
        fast_settings(&replica.dsn(&db))
            .with_retry_budget(BUDGET)
            .build()
            .expect("settings"),
    )
    .expect("lease store on the promoted replica");
    let lease = loop {
        match new_side.acquire(RESOURCE, "engine-b", LEASE_TTL).await {
            Ok(lease) => break lease,
            Err(fencing::Error::Held {
                holder, expires_in, ..
            }) => {
                assert_eq!(holder, "engine-a", "{CELL}");
                assert!(fencing_started.elapsed() < LEASE_TTL + CONVERGE, "{CELL}");
                sleep(expires_in.min(Duration::from_millis(200))).await;
            }
            Err(e) => panic!("{CELL}: acquire on the promoted replica: {e}"),
        }
    };
    assert!(
        lease.token() > before.newest_token(),
        "{CELL}: new token {} is not above {}",
        lease.token(),
        before.newest_token()
    );
    assert!(token_timeline(lease.token()) > token_timeline(before.newest_token()));
    fenced_write(new_side.pool(), lease.token(), "fill by the new leader")
        .await
        .unwrap_or_else(|e| panic!("{CELL}: fenced write by the new leader: {e}"));
    let fencing = fencing_started.elapsed();
    // The old leader's token against the new primary's database: refused.
    expect_fenced_out(
        CELL,
        fenced_write(
            new_side.pool(),
            before.lease.token(),
            "fill by the old leader",
        )
        .await,
        before.lease.token(),
        lease.token(),
    );
    assert_eq!(
        fills_with(new_side.pool(), "fill by the old leader").await,
        0
    );
    // There the old lease is superseded.
    match new_side.renew(&before.lease).await {
        Err(fencing::Error::LeaseLost {
            reason: LostReason::Superseded { token },
            ..
        }) => assert_eq!(token, lease.token(), "{CELL}"),
        other => panic!("{CELL}: renew of the old lease on the new primary: {other:?}"),
    }
    // Through the multi-host DSN the old leader still reaches the old primary, where
    // its lease is still valid or reported lost — and where nobody wrote the new
    // token, so its fenced write is accepted there. Fencing keeps writers apart at a
    // resource; it cannot merge two diverged databases: the old primary must be
    // fenced off (stopped or made read-only) by the failover procedure.
    let old_lease = match controls.fencer.renew(&before.lease).await {
        Ok(_) => "still valid on the old primary".to_owned(),
        Err(fencing::Error::LeaseLost { reason, .. }) => {
            format!("lost on the old primary ({reason})")
        }
        Err(e) => panic!("{CELL}: renew on the old primary: {e:?}"),
    };
    fenced_write(
        controls.fencer.pool(),
        before.lease.token(),
        "fill by the old leader on the old primary",
    )
    .await
    .unwrap_or_else(|e| panic!("{CELL}: the old primary knows no newer token: {e}"));

    report(
        CELL,
        None,
        &Recovery {
            engage,
            kill_switch_fresh,
            set_mode,
            modes_fresh,
            fencing,
            old_lease,
            new_token: lease.token(),
            note: "; engine-b waited for engine-a's lease to expire on the promoted replica; \
                   the old leader's fill was refused there, accepted on the old primary"
                .to_owned(),
        },
    );
}
