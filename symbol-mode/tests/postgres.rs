//! Postgres-specific behaviour of symbol modes: the runbook's names in the database,
//! settings from env, migrations, the append-only audit trail, 10,000 symbols, NOTIFY
//! between processes, CancelAll across terminated connections, and fail-closed
//! health. Every test runs against a real throw-away server.

mod support;

use failover_core::{ComponentStatus, HealthRegistry};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::wait_until;
use tradepulse_symbol_mode::{
    Audit, Cause, PostgresSymbolModeStore, SnapshotState, StartAt, SymbolMode, SymbolModeStore,
    SymbolModes, SymbolModesConfig, TradingAction,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn runbook_names_are_stored_verbatim_in_the_database() {
    let (cluster, db) = support::primary().await;
    let store = support::store(&cluster.primary().dsn(&db)).await;
    store
        .register_symbols(&["BTC-USD"], &Audit::new("ops", "listing"))
        .await
        .unwrap();
    store
        .set_symbol_mode(
            "BTC-USD",
            SymbolMode::HardHalt,
            &Audit::new("ops:alice", "split brain suspected"),
        )
        .await
        .unwrap();
    store
        .set_symbol_mode(
            "BTC-USD",
            SymbolMode::CancelOnly,
            &Audit::new("ops:alice", "leader confirmed").with_ticket("INC-7"),
        )
        .await
        .unwrap();
    store
        .set_global_mode(
            SymbolMode::SoftHalt,
            &Audit::new("ops:bob", "unknown scope"),
        )
        .await
        .unwrap();
    store
        .cancel_all("BTC-USD", &Audit::new("ops:alice", "flatten"))
        .await
        .unwrap()
        .into_inner();
    store
        .withdrawals_halt(true, &Audit::new("ops:alice", "ledger invariant violation"))
        .await
        .unwrap();
    let rows = cluster
        .primary()
        .query(
            &db,
            "SELECT command, symbol, from_mode, to_mode, withdrawals_halted, ticket \
             FROM symbol_mode_events WHERE command <> 'RegisterSymbol' ORDER BY version",
        )
        .await
        .unwrap();
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "∅".into());
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(text).collect()).collect();
    assert_eq!(
        rows,
        [
            ["SetSymbolMode", "BTC-USD", "NORMAL", "HARD_HALT", "∅", "∅"],
            [
                "SetSymbolMode",
                "BTC-USD",
                "HARD_HALT",
                "CANCEL_ONLY",
                "∅",
                "INC-7"
            ],
            ["SetGlobalMode", "∅", "NORMAL", "SOFT_HALT", "∅", "∅"],
            ["CancelAll", "BTC-USD", "∅", "∅", "∅", "∅"],
            ["WithdrawalsHalt", "∅", "∅", "∅", "t", "∅"],
        ]
    );
    let state = cluster
        .primary()
        .query(
            &db,
            "SELECT global_mode, withdrawals_halted, version FROM symbol_mode_state WHERE id = 1",
        )
        .await
        .unwrap();
    assert_eq!(
        state[0],
        [Some("SOFT_HALT".into()), Some("t".into()), Some("6".into())],
        "five commands and the registration"
    );
    let modes = cluster
        .primary()
        .query(&db, "SELECT symbol, mode FROM symbol_modes")
        .await
        .unwrap();
    assert_eq!(
        modes,
        [vec![
            Some("BTC-USD".to_string()),
            Some("CANCEL_ONLY".into())
        ]]
    );
}

fn mode_of(i: usize) -> SymbolMode {
    SymbolMode::ALL[i % 4]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_symbols_reload_from_postgres_and_then_follow_single_changes() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    let writer = Arc::new(support::store(&dsn).await);
    // Through the real write path: 10,000 audited SetSymbolMode calls, 8 at a time.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..10_000).step_by(8) {
                writer
                    .register_symbol(&format!("SYM-{i:05}"), &Audit::new("ops", "listing"))
                    .await
                    .expect("register");
                writer
                    .set_symbol_mode(
                        &format!("SYM-{i:05}"),
                        mode_of(i),
                        &Audit::new("ops", "seed"),
                    )
                    .await
                    .expect("seed");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("seeded 10,000 symbols in {:?}", started.elapsed());

    // Another "process": its own pool, polling effectively off.
    let reader: Arc<dyn SymbolModeStore> = Arc::new(support::store(&dsn).await);
    let modes = SymbolModes::spawn(
        reader,
        SymbolModesConfig::default().with_poll_interval(Duration::from_secs(3600)),
    );
    assert!(modes.ready(WAIT).await, "the snapshot loads");
    let snapshot = modes.snapshot();
    assert_eq!(
        snapshot.version(),
        20_000,
        "10,000 registrations and 10,000 modes"
    );
    assert_eq!(
        snapshot.restricted_symbols(),
        7_500,
        "NORMAL symbols are not held"
    );
    for i in 0..10_000 {
        let symbol = format!("SYM-{i:05}");
        assert_eq!(modes.mode(&symbol), mode_of(i), "{symbol}");
        assert_eq!(
            modes.allows(&symbol, TradingAction::Place),
            mode_of(i) == SymbolMode::Normal
        );
    }
    assert_eq!(
        modes.mode("SYM-99999"),
        SymbolMode::Normal,
        "unknown symbol"
    );

    // Single changes arrive through NOTIFY as deltas.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = writer
        .set_symbol_mode(
            "SYM-00003",
            SymbolMode::CancelOnly,
            &Audit::new("ops", "resume").with_ticket("INC-1"),
        )
        .await
        .unwrap();
    writer
        .set_symbol_mode(
            "SYM-00000",
            SymbolMode::HardHalt,
            &Audit::new("ops", "halt"),
        )
        .await
        .unwrap();
    assert!(modes.wait_for_version(event.version + 1, WAIT).await);
    assert_eq!(modes.mode("SYM-00003"), SymbolMode::CancelOnly);
    assert_eq!(modes.mode("SYM-00000"), SymbolMode::HardHalt);
    assert_eq!(modes.mode("SYM-00004"), SymbolMode::Normal);
    assert_eq!(modes.snapshot().restricted_symbols(), 7_501);
}

async fn next(
    sub: &mut tradepulse_symbol_mode::CancelAllSubscription,
) -> tradepulse_symbol_mode::CancelAllCommand {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("CancelAll delivered in time")
        .expect("open")
}

async fn quiet(sub: &mut tradepulse_symbol_mode::CancelAllSubscription) {
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "delivered twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_reaches_two_subscribers_exactly_once_across_terminated_connections() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    let writer = support::store(&dsn).await;
    writer
        .register_symbols(
            &["BTC-USD", "ETH-USD", "SOL-USD"],
            &Audit::new("ops", "listing"),
        )
        .await
        .unwrap();
    // Two subscribers on separate pools; the poll fallback is off, so a command
    // issued while a connection is down can only arrive through the catch-up on
    // reconnect.
    let subscriber = |name: &'static str| {
        let settings = support::settings(&format!("{dsn} application_name={name}"))
            .build()
            .unwrap();
        PostgresSymbolModeStore::new(settings)
            .unwrap()
            .with_cancel_all_poll(Duration::from_secs(3600))
    };
    let (store_a, store_b) = (subscriber("engine_a"), subscriber("engine_b"));
    let mut a = store_a.subscribe_cancel_all(StartAt::Now).await.unwrap();
    let mut b = store_b.subscribe_cancel_all(StartAt::Now).await.unwrap();
    // Let both LISTEN sessions establish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let first = writer
        .cancel_all("BTC-USD", &Audit::new("ops", "first"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut a).await, first);
    assert_eq!(next(&mut b).await, first);

    // Terminate only subscriber A's connections, then issue two commands at once.
    let killed = cluster
        .primary()
        .query(
            &db,
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'engine_a'",
        )
        .await
        .unwrap();
    assert_ne!(killed[0][0].as_deref(), Some("0"), "A had connections");
    let second = writer
        .cancel_all("ETH-USD", &Audit::new("ops", "second"))
        .await
        .unwrap()
        .into_inner();
    let third = writer
        .cancel_all("SOL-USD", &Audit::new("ops", "third"))
        .await
        .unwrap()
        .into_inner();
    for sub in [&mut a, &mut b] {
        assert_eq!(next(sub).await, second);
        assert_eq!(next(sub).await, third);
    }

    // Every client backend, both subscribers' included.
    let killed = cluster.primary().terminate_backends().await.unwrap();
    assert!(killed >= 2, "terminated {killed}");
    let fourth = writer
        .cancel_all("BTC-USD", &Audit::new("ops", "fourth"))
        .await
        .expect("the writer reconnects")
        .into_inner();
    for sub in [&mut a, &mut b] {
        assert_eq!(next(sub).await, fourth);
        quiet(sub).await;
        assert_eq!(sub.cursor(), fourth.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_health_at_once_then_fails_closed_as_soft_halt_and_recovers_without_restart() {
    let (cluster, db) = support::primary().await;
    // Migrated with the usual budget (on a loaded machine the whole migration set
    // may take longer than the short one the handle's store gets below).
    support::store(&cluster.primary().dsn(&db)).await;
    let store = PostgresSymbolModeStore::new(
        support::settings(&cluster.primary().dsn(&db))
            .with_retry_budget(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .unwrap();
    store
        .register_symbols(&["HALTED"], &Audit::new("ops", "listing"))
        .await
        .unwrap();
    store
        .set_symbol_mode("HALTED", SymbolMode::HardHalt, &Audit::new("ops", "halt"))
        .await
        .unwrap();
    let modes = SymbolModes::spawn(
        Arc::new(store),
        SymbolModesConfig::default()
            .with_staleness_window(Duration::from_secs(3))
            .with_poll_interval(Duration::from_millis(200)),
    );
    let registry = HealthRegistry::new();
    registry.register("symbol_mode", modes.health_source());
    assert!(modes.ready(WAIT).await);
    wait_until(
        "operational: reads and push work",
        Duration::from_secs(5),
        || modes.health().status == ComponentStatus::Operational,
    )
    .await;
    assert_eq!(modes.mode("OPEN"), SymbolMode::Normal);
    assert!(!modes.withdrawals_halted());

    cluster.primary().stop_immediate().await.unwrap();
    // Health says `failed` at once (the store cannot be reached now)…
    wait_until("failed", Duration::from_secs(1), || {
        modes.health().status == ComponentStatus::Failed
    })
    .await;
    let details = modes.health().details.unwrap_or_default().to_lowercase();
    assert!(details.contains("connection refused"), "details: {details}");
    assert_eq!(
        modes.mode("OPEN"),
        SymbolMode::Normal,
        "…while within the window the last snapshot still serves"
    );

    wait_until("failed closed", Duration::from_secs(8), || {
        modes.mode("OPEN") != SymbolMode::Normal
    })
    .await;
    assert_eq!(modes.mode("OPEN"), SymbolMode::SoftHalt);
    assert_eq!(
        modes.mode("HALTED"),
        SymbolMode::HardHalt,
        "stricter modes stay"
    );
    let refusal = modes.check("OPEN", TradingAction::Place).unwrap_err();
    assert_eq!(refusal.cause, Cause::Stale);
    assert!(refusal.to_string().contains("stale"), "{refusal}");
    assert!(
        modes.allows("OPEN", TradingAction::Cancel),
        "cancels stay open"
    );
    assert!(modes.withdrawals_halted(), "withdrawals fail closed");
    assert!(
        !modes.may_activate_strategy(),
        "new strategy activations fail closed"
    );
    assert_eq!(modes.status().state, SnapshotState::Stale);
    let json: serde_json::Value = serde_json::from_str(&registry.readiness().to_json()).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["components"][0]["name"], "symbol_mode");
    assert_eq!(json["components"][0]["status"], "failed");

    cluster.primary().start().await.unwrap();
    wait_until("operational again", Duration::from_secs(10), || {
        modes.health().status == ComponentStatus::Operational
    })
    .await;
    assert_eq!(modes.mode("OPEN"), SymbolMode::Normal);
    assert!(!modes.withdrawals_halted());
    assert!(modes.may_activate_strategy());
}

#[tokio::test]
async fn a_handle_is_hard_halted_before_its_first_load() {
    let (cluster, db) = support::primary().await;
    let dsn = cluster.primary().dsn(&db);
    cluster.primary().stop_immediate().await.unwrap();
    let store = PostgresSymbolModeStore::new(
        support::settings(&dsn)
            .with_retry_budget(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    let modes = SymbolModes::spawn(
        Arc::new(store),
        SymbolModesConfig::default().with_poll_interval(Duration::from_millis(100)),
    );
    assert!(!modes.ready(Duration::from_millis(800)).await);
    assert_eq!(modes.mode("BTC-USD"), SymbolMode::HardHalt);
    let refusal = modes.check("BTC-USD", TradingAction::Cancel).unwrap_err();
    assert_eq!(refusal.cause, Cause::NotLoaded);
    assert!(
        !modes.may_activate_strategy(),
        "no strategy starts before the first load"
    );
    assert!(modes.allows("BTC-USD", TradingAction::AdminCancelAll));
    let health = modes.health();
    assert_eq!(health.status, ComponentStatus::Failed);
    assert!(health.details.unwrap().to_lowercase().contains("refused"));
    // Up again but never migrated: still halted, now saying why.
    cluster.primary().start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(modes.mode("BTC-USD"), SymbolMode::HardHalt);
    assert!(modes
        .health()
        .details
        .unwrap()
        .contains("run symbol-mode migrations"));
}

/// The database decides whether a command relaxes from its own copy of the mode
/// ladder (so that no caller can pass its own idea of it); it is the library's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_ladder_is_the_library_ladder() {
    let (cluster, db) = support::shared_primary().await;
    support::store(&cluster.primary().dsn(&db)).await;
    for from in SymbolMode::ALL {
        for to in SymbolMode::ALL {
            let rows = cluster
                .primary()
                .query(
                    &db,
                    &format!("SELECT symbol_mode_transition('{from}', '{to}')"),
                )
                .await
                .unwrap();
            let expected = match from.transition_to(to) {
                tradepulse_symbol_mode::Transition::Tighten => "tighten",
                tradepulse_symbol_mode::Transition::Relax => "relax",
                tradepulse_symbol_mode::Transition::Forbidden => "forbidden",
            };
            assert_eq!(rows[0][0].as_deref(), Some(expected), "{from} -> {to}");
        }
    }
}

/// Through the store API, with another actor's change held open in its own
/// transaction while the call waits on the row: an operator's change that became a
/// relaxation is refused (the global mode and a symbol), and a supervisor's lift of
/// the withdrawals halt decided on the earlier state is refused naming the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_decided_inside_the_write_against_the_change_that_beat_it() {
    use failover_core::Refusal;
    use tradepulse_symbol_mode::{Authority, Error};
    use tradepulse_testkit::Held;
    let (cluster, db) = support::shared_primary().await;
    let dsn = cluster.primary().dsn(&db);
    let store = Arc::new(support::store(&dsn).await);
    store
        .register_symbols(&["BTC-USD"], &Audit::new("ops", "listing"))
        .await
        .unwrap();
    let operator = |reason: &str| {
        Audit::new("ops:alice", reason)
            .with_ticket("ANY-1")
            .with_authority(Authority::Operator)
    };
    let apply = |command: &str, symbol: &str, mode: &str, on: &str| {
        format!(
            "SELECT * FROM symbol_mode_apply(gen_random_uuid(), '{command}', {symbol}, {mode}, {on}, \
             FALSE, 'incident', 'ops:dave', NULL)"
        )
    };

    let s = store.clone();
    let audit = operator("widen");
    let refused = Held::begin(&dsn, &apply("SetGlobalMode", "NULL", "'HARD_HALT'", "NULL"))
        .await
        .race(async move { s.set_global_mode(SymbolMode::CancelOnly, &audit).await })
        .await
        .expect_err("CANCEL_ONLY relaxes the HARD_HALT that landed first");
    assert!(
        matches!(&refused, Error::Refused(Refusal::Forbidden { .. })),
        "{refused:?}"
    );
    assert_eq!(store.venue().await.unwrap().global, SymbolMode::HardHalt);

    let s = store.clone();
    let audit = operator("wind down");
    let refused = Held::begin(
        &dsn,
        &apply("SetSymbolMode", "'BTC-USD'", "'HARD_HALT'", "NULL"),
    )
    .await
    .race(async move {
        s.set_symbol_mode("BTC-USD", SymbolMode::CancelOnly, &audit)
            .await
    })
    .await
    .expect_err("CANCEL_ONLY relaxes the symbol's HARD_HALT");
    assert!(
        matches!(&refused, Error::Refused(Refusal::Forbidden { .. })),
        "{refused:?}"
    );
    let own = store.symbol_state("BTC-USD").await.unwrap().unwrap();
    assert_eq!(own.mode, SymbolMode::HardHalt);

    let halted = store
        .withdrawals_halt(true, &Audit::new("ops:alice", "custody"))
        .await
        .unwrap();
    let s = store.clone();
    let audit = Audit::new("ops:bob", "reconciled")
        .with_ticket("INC-3")
        .expecting(halted.position);
    let refused = Held::begin(&dsn, &apply("WithdrawalsHalt", "NULL", "NULL", "TRUE"))
        .await
        .race(async move { s.withdrawals_halt(false, &audit).await })
        .await
        .expect_err("the halt was re-asserted while the lift waited");
    match &refused {
        Error::Refused(Refusal::PreconditionFailed { current, .. }) => {
            assert_eq!(current.what, "WithdrawalsHalt on");
            assert_eq!(current.actor, "ops:dave");
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }
    assert!(store.venue().await.unwrap().withdrawals_halted);
    let relaxing = store
        .history(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.command.relaxes_safety())
        .count();
    assert_eq!(relaxing, 0, "nothing was relaxed");
}

/// A database whose symbols had modes before the registry existed: the migration
/// registers each of them (the first of any that fold alike), so operators keep
/// addressing them, and a look-alike row stays unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_registers_the_symbols_that_already_had_a_mode() {
    let (cluster, db) = support::shared_primary().await;
    let dsn = cluster.primary().dsn(&db);
    let store =
        PostgresSymbolModeStore::new(tradepulse_testkit::fast_settings(&dsn).build().unwrap())
            .unwrap();
    let before_registry: &'static [failover_core::postgres::Migration] =
        &tradepulse_symbol_mode::postgres::MIGRATIONS[..2];
    failover_core::postgres::migrate(store.pool(), "symbol_mode", before_registry)
        .await
        .unwrap();
    cluster
        .primary()
        .execute(
            &db,
            "INSERT INTO symbol_modes (symbol, mode, version, updated_at, updated_by, reason) VALUES \
             ('ETH-USD', 'HARD_HALT', 1, now(), 'ops', 'old'), \
             ('eth-usd', 'SOFT_HALT', 2, now(), 'ops', 'old typo')",
        )
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let names: Vec<String> = store
        .symbols()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.symbol)
        .collect();
    assert_eq!(names, ["ETH-USD"], "the first spelling is registered");
    store
        .set_symbol_mode(
            "ETH-USD",
            SymbolMode::CancelOnly,
            &Audit::new("ops", "resume").with_ticket("INC-1"),
        )
        .await
        .expect("the registered symbol is addressable after the migration");
    let err = store
        .set_symbol_mode("eth-usd", SymbolMode::HardHalt, &Audit::new("ops", "typo"))
        .await
        .expect_err("the look-alike is not registered");
    assert!(err.to_string().contains("did you mean ETH-USD?"), "{err}");
}

/// Halting new strategy activations reaches a running handle in another "process"
/// by push alone (its poll is an hour away): within a bound its order path answers
/// no; enabling them again (a supervisor, a ticket) answers yes again, also by push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_strategies_halt_reaches_a_running_handle_by_push() {
    let (cluster, db) = support::shared_primary().await;
    let dsn = cluster.primary().dsn(&db);
    let writer = support::store(&dsn).await;
    let reader: Arc<dyn SymbolModeStore> = Arc::new(support::store(&dsn).await);
    let modes = SymbolModes::spawn(
        reader,
        SymbolModesConfig::default().with_poll_interval(Duration::from_secs(3600)),
    );
    assert!(modes.ready(WAIT).await, "the snapshot loads");
    wait_until("operational: push works", Duration::from_secs(5), || {
        modes.health().status == ComponentStatus::Operational
    })
    .await;
    assert!(modes.may_activate_strategy());
    let mut engine = modes.reader();
    assert!(engine.may_activate_strategy());

    let started = Instant::now();
    let halted = writer
        .new_strategies_halt(
            true,
            &Audit::new("ops:dave", "runaway strategies")
                .with_authority(failover_core::Authority::Operator),
        )
        .await
        .expect("an operator halts new activations");
    wait_until("halted by push", Duration::from_secs(2), || {
        !modes.may_activate_strategy()
    })
    .await;
    eprintln!(
        "NewStrategiesHalt on reached the handle in {:?}",
        started.elapsed()
    );
    assert!(!engine.may_activate_strategy());
    assert_eq!(modes.snapshot().position(), halted.position);
    assert!(
        modes.allows("BTC-USD", TradingAction::Place),
        "running strategies still trade"
    );

    writer
        .new_strategies_halt(
            false,
            &Audit::new("ops:sue", "fixed")
                .with_ticket("INC-7")
                .expecting(halted.position),
        )
        .await
        .expect("a supervisor enables them again");
    wait_until("enabled by push", Duration::from_secs(2), || {
        modes.may_activate_strategy()
    })
    .await;
    assert!(engine.may_activate_strategy());
}
