//! The store's own contract: round trips, the transition table, the global mode,
//! withdrawals and new strategies, the symbol registry, throttles, `CancelAll`
//! delivery and serialisation. What every audited control keeps (replay, reused
//! request ids, authority, preconditions, invalid audits, verbatim text, history
//! order) is the control kit's suite, run on one symbol through `audited`.

use super::{force, global_mode, known, observe, ops, own_mode, ticketed, trail, WAIT};
use crate::{
    Audit, AuditError, Authority, CancelAllCommand, Command, CommandKind, Error, ModeSnapshot,
    ModeTarget, SettlementLagPolicy, StartAt, SymbolError, SymbolMode, SymbolModeStore,
    SymbolRefusal, Throttle, Transition, MAX_SYMBOL_CHARS, POLICY_ACTOR,
};
use failover_core::conformance::invalid_audits;
use failover_core::Refusal;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use SymbolMode::{CancelOnly, HardHalt, Normal, SoftHalt};

/// A fresh store: global `NORMAL`, withdrawals running, version 0, no symbols, no history.
pub async fn fresh_store_is_normal_at_version_zero(store: &dyn SymbolModeStore) {
    let venue = store.venue().await.expect("venue");
    assert_eq!(venue.global, Normal);
    assert!(!venue.withdrawals_halted);
    assert_eq!(venue.version, 0);
    assert_eq!(store.symbol_state("BTC-USD").await.expect("state"), None);
    let delta = store.changes_since(0).await.expect("changes");
    assert!(delta.symbols.is_empty());
    assert_eq!((delta.version, delta.head_event), (0, None));
    assert!(store.history(10).await.expect("history").is_empty());
}

/// `SetSymbolMode` round-trips every field through `symbol_state`, `changes_since`
/// and `history`.
pub async fn set_symbol_mode_round_trips(store: &dyn SymbolModeStore) {
    let base = known(store, &["BTC-USD"]).await;
    let audit = Audit::new("ops:alice", "ledger invariant violation").with_ticket("INC-42");
    let event = store
        .set_symbol_mode("BTC-USD", CancelOnly, &audit)
        .await
        .expect("set")
        .into_inner();
    assert_eq!(event.version, base + 1);
    assert_eq!(event.request_id, audit.request_id());
    assert_eq!(
        event.command,
        Command::SetSymbolMode {
            symbol: "BTC-USD".into(),
            from: Normal,
            to: CancelOnly
        }
    );
    assert_eq!(
        (
            event.actor.as_str(),
            event.reason.as_str(),
            event.ticket.as_deref()
        ),
        ("ops:alice", "ledger invariant violation", Some("INC-42"))
    );
    let state = store
        .symbol_state("BTC-USD")
        .await
        .expect("state")
        .expect("set");
    assert_eq!(state.mode, CancelOnly);
    assert_eq!(state.version, base + 1);
    assert_eq!(state.position, event.position);
    assert_eq!(state.updated_by, "ops:alice");
    assert_eq!(state.reason, "ledger invariant violation");
    assert_eq!(state.ticket.as_deref(), Some("INC-42"));
    assert_eq!(state.updated_at, event.at);
    assert_eq!(trail(store).await, vec![event.clone()]);
    let delta = store.changes_since(0).await.expect("changes");
    assert_eq!(delta.symbols, vec![("BTC-USD".to_string(), CancelOnly)]);
    assert_eq!(delta.version, base + 1);
    assert_eq!(delta.head_event, Some(audit.request_id()));
    assert_eq!(store.venue().await.expect("venue").global, Normal);
}

/// Every (from, to) pair, for a symbol and for the global mode: accepted exactly
/// when the rules allow it, with a ticket exactly when it relaxes.
pub async fn every_transition_follows_the_table(store: &dyn SymbolModeStore) {
    for from in SymbolMode::ALL {
        for to in SymbolMode::ALL {
            for symbol in [Some(format!("PAIR-{from}-{to}")), None] {
                let symbol = symbol.as_deref();
                force(store, symbol, from).await;
                let set = |audit: Audit| async move {
                    match symbol {
                        Some(s) => store.set_symbol_mode(s, to, &audit).await,
                        None => store.set_global_mode(to, &audit).await,
                    }
                };
                let before = observe(store).await;
                let rule = from.transition_to(to);
                match (rule, set(ops("no ticket")).await) {
                    (Transition::Tighten, Ok(event)) => {
                        assert!(!event.command.relaxes_safety());
                        continue;
                    }
                    (
                        Transition::Relax,
                        Err(Error::InvalidAudit(AuditError::TicketRequired { .. })),
                    ) => {}
                    (
                        Transition::Forbidden,
                        Err(Error::Control(SymbolRefusal::TransitionForbidden {
                            from: f,
                            to: t,
                            target,
                        })),
                    ) => {
                        assert_eq!((f, t), (from, to));
                        assert_eq!(
                            target,
                            symbol.map_or(ModeTarget::Global, |s| ModeTarget::Symbol(s.into()))
                        );
                    }
                    (rule, other) => {
                        panic!("{symbol:?} {from} -> {to} ({rule:?}) without ticket: {other:?}")
                    }
                }
                assert_eq!(observe(store).await, before, "a refusal changes nothing");
                match (rule, set(ticketed("with ticket")).await) {
                    (Transition::Relax, Ok(event)) => {
                        assert!(event.command.relaxes_safety());
                        assert_eq!(event.ticket.as_deref(), Some("INC-1"));
                    }
                    (
                        Transition::Forbidden,
                        Err(Error::Control(SymbolRefusal::TransitionForbidden { .. })),
                    ) => {
                        assert_eq!(observe(store).await, before);
                    }
                    (rule, other) => {
                        panic!("{symbol:?} {from} -> {to} ({rule:?}) with ticket: {other:?}")
                    }
                }
            }
        }
    }
}

/// The resume drill: `HARD_HALT → NORMAL` is refused (saying to resume in
/// `CANCEL_ONLY` first); `HARD_HALT → CANCEL_ONLY → NORMAL` succeeds with tickets;
/// the audit trail reads back in order.
pub async fn resume_drill_goes_through_cancel_only(store: &dyn SymbolModeStore) {
    let symbol = "SOL-USD";
    let base = known(store, &[symbol]).await;
    store
        .set_symbol_mode(
            symbol,
            HardHalt,
            &Audit::new("ops:alice", "split brain suspected"),
        )
        .await
        .expect("halt");
    let err = store
        .set_symbol_mode(
            symbol,
            Normal,
            &Audit::new("ops:bob", "leader confirmed").with_ticket("INC-7"),
        )
        .await
        .expect_err("HARD_HALT -> NORMAL must be refused");
    assert!(
        matches!(
            err,
            Error::Control(SymbolRefusal::TransitionForbidden {
                from: HardHalt,
                to: Normal,
                ..
            })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("resume in CANCEL_ONLY first, then NORMAL"),
        "{text}"
    );
    assert!(text.contains("SOL-USD"), "{text}");
    store
        .set_symbol_mode(
            symbol,
            CancelOnly,
            &Audit::new("ops:bob", "leader confirmed").with_ticket("INC-7"),
        )
        .await
        .expect("HARD_HALT -> CANCEL_ONLY with ticket");
    store
        .set_symbol_mode(
            symbol,
            Normal,
            &Audit::new("ops:bob", "validated").with_ticket("INC-7"),
        )
        .await
        .expect("CANCEL_ONLY -> NORMAL with ticket");
    let mut trail = trail(store).await;
    trail.reverse();
    let steps: Vec<(SymbolMode, SymbolMode, &str, Option<&str>)> = trail
        .iter()
        .map(|e| match &e.command {
            Command::SetSymbolMode { from, to, .. } => {
                (*from, *to, e.reason.as_str(), e.ticket.as_deref())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Normal, HardHalt, "split brain suspected", None),
            (HardHalt, CancelOnly, "leader confirmed", Some("INC-7")),
            (CancelOnly, Normal, "validated", Some("INC-7")),
        ]
    );
    let versions: Vec<u64> = trail.iter().map(|e| e.version).collect();
    assert_eq!(versions, [base + 1, base + 2, base + 3]);
    assert_eq!(own_mode(store, symbol).await, Normal);
}

/// A retry of `CancelAll` or of the withdrawals halt (the same `Audit` again after an
/// unknown outcome) answers the command that request produced, marked replayed, and
/// writes nothing: every command is applied once, not only mode changes.
pub async fn cancel_all_and_withdrawals_are_applied_once(store: &dyn SymbolModeStore) {
    let base = known(store, &["BTC-USD"]).await;
    let cancel = ops("cancel once");
    let a = store.cancel_all("BTC-USD", &cancel).await.expect("cancel");
    let b = store
        .cancel_all("BTC-USD", &cancel)
        .await
        .expect("cancel replay");
    assert!(!a.replayed && b.replayed);
    assert_eq!(
        a.value, b.value,
        "a replay returns what the request produced"
    );
    let halt = ops("halt once");
    let on = store.withdrawals_halt(true, &halt).await.expect("halt");
    let replayed = store
        .withdrawals_halt(true, &halt)
        .await
        .expect("halt replay");
    assert!(!on.replayed && replayed.replayed);
    assert_eq!(replayed.value, on.value);
    assert_eq!(trail(store).await.len(), 2);
    assert_eq!(store.venue().await.expect("venue").version, base + 2);
}

/// A request id names one command in the whole store: reusing it for another
/// symbol, the global mode, `CancelAll` or the withdrawals halt is refused naming
/// the command that used it, and changes nothing.
pub async fn request_reused_for_another_target_is_refused(store: &dyn SymbolModeStore) {
    known(store, &["BTC-USD", "ETH-USD"]).await;
    let audit = ticketed("once");
    store
        .set_symbol_mode("BTC-USD", CancelOnly, &audit)
        .await
        .expect("set");
    let before = observe(store).await;
    for result in [
        store
            .set_symbol_mode("ETH-USD", CancelOnly, &audit)
            .await
            .map(drop),
        store.set_global_mode(CancelOnly, &audit).await.map(drop),
        store.cancel_all("BTC-USD", &audit).await.map(drop),
        store.withdrawals_halt(false, &audit).await.map(drop),
    ] {
        let err = result.expect_err("reuse must be refused");
        assert!(
            matches!(&err, Error::Refused(Refusal::RequestReused { previous, .. })
                if previous.starts_with("SetSymbolMode BTC-USD")),
            "{err:?}"
        );
    }
    assert_eq!(observe(store).await, before);
}

/// Invalid symbols — empty, white space, control or invisible characters, over the
/// length bound — are refused by every command with a typed error saying what to do.
pub async fn invalid_symbols_are_refused_with_clear_errors(store: &dyn SymbolModeStore) {
    let long = "X".repeat(MAX_SYMBOL_CHARS + 1);
    type Expect = fn(&SymbolError) -> bool;
    let cases: [(&str, Expect); 8] = [
        ("", |e| matches!(e, SymbolError::Empty)),
        (" ", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: ' ',
                    position: 0
                }
            )
        }),
        ("BTC USD", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: ' ',
                    position: 3
                }
            )
        }),
        ("BTC-USD\t", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: '\t',
                    position: 7
                }
            )
        }),
        ("BTC\u{0}", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: '\u{0}',
                    position: 3
                }
            )
        }),
        ("\u{1b}[2J", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: '\u{1b}',
                    position: 0
                }
            )
        }),
        ("BTC\u{200B}-USD", |e| {
            matches!(
                e,
                SymbolError::InvalidCharacter {
                    character: '\u{200B}',
                    position: 3
                }
            )
        }),
        (&long, |e| {
            matches!(e, SymbolError::TooLong { len: 65, max: 64 })
        }),
    ];
    for (symbol, expected) in cases {
        let results = [
            store
                .set_symbol_mode(symbol, HardHalt, &ops("bad"))
                .await
                .map(drop),
            store
                .tighten_symbol_mode(symbol, SoftHalt, &ops("bad"))
                .await
                .map(drop),
            store.cancel_all(symbol, &ops("bad")).await.map(drop),
            store.symbol_state(symbol).await.map(drop),
        ];
        for result in results {
            match result {
                Err(Error::Control(SymbolRefusal::InvalidSymbol(e))) => {
                    assert!(expected(&e), "{symbol:?}: {e:?}");
                    let text = Error::Control(SymbolRefusal::InvalidSymbol(e)).to_string();
                    assert!(text.contains("refused, nothing changed"), "{text}");
                }
                other => panic!("{symbol:?}: expected InvalidSymbol, got {other:?}"),
            }
        }
    }
    assert_eq!(observe(store).await.2, 0, "no audit rows");
    assert_eq!(store.venue().await.expect("venue").version, 0);
}

/// Every command beyond a symbol's own mode — `tighten_symbol_mode`, the global
/// mode, `CancelAll`, the withdrawals halt either way — refuses each invalid audit
/// of the contract and changes nothing.
pub async fn every_command_refuses_an_invalid_audit(store: &dyn SymbolModeStore) {
    for audit in &invalid_audits() {
        let results = [
            store
                .tighten_symbol_mode("BTC-USD", SoftHalt, audit)
                .await
                .map(drop),
            store.set_global_mode(SoftHalt, audit).await.map(drop),
            store.cancel_all("BTC-USD", audit).await.map(drop),
            store.withdrawals_halt(true, audit).await.map(drop),
            store.withdrawals_halt(false, audit).await.map(drop),
        ];
        for result in results {
            assert!(
                matches!(result, Err(Error::InvalidAudit(_))),
                "{audit:?}: {result:?}"
            );
        }
    }
    let (venue, symbols, history) = observe(store).await;
    assert_eq!(
        (venue.version, venue.global, symbols.len(), history),
        (0, Normal, 0, 0)
    );
}

/// Symbols using the whole charset, and reasons, actors and tickets with quotes,
/// semicolons, SQL keywords and non-ASCII text are stored and returned verbatim.
pub async fn symbols_and_text_are_stored_verbatim(store: &dyn SymbolModeStore) {
    let symbols = [
        "BTC-USD",
        "ETH/USDT",
        "x--DROP_TABLE_symbol_modes",
        "SELECT",
        "a/b/c",
        "ES:Z25.b",
        "eth_usd_perp",
    ];
    let reason = "'; DROP TABLE symbol_mode_events; -- \"quoted\" $$ 💥";
    let actor = "o'brien; SELECT 1";
    let ticket = "INC-'1'; --";
    known(store, &symbols).await;
    for symbol in symbols {
        let event = store
            .set_symbol_mode(
                symbol,
                CancelOnly,
                &Audit::new(actor, reason).with_ticket(ticket),
            )
            .await
            .expect("set");
        assert_eq!(
            event.command,
            Command::SetSymbolMode {
                symbol: symbol.into(),
                from: Normal,
                to: CancelOnly
            }
        );
        let state = store
            .symbol_state(symbol)
            .await
            .expect("state")
            .expect("set");
        assert_eq!(
            (
                state.symbol.as_str(),
                state.reason.as_str(),
                state.updated_by.as_str(),
                state.ticket.as_deref()
            ),
            (symbol, reason, actor, Some(ticket))
        );
        let cancel = store
            .cancel_all(symbol, &Audit::new(actor, reason))
            .await
            .expect("cancel");
        assert_eq!(cancel.symbol, symbol);
    }
    let snapshot = ModeSnapshot::from_delta(&store.changes_since(0).await.expect("changes"));
    for symbol in symbols {
        assert_eq!(snapshot.effective(symbol), CancelOnly, "{symbol}");
    }
    let history = trail(store).await;
    assert_eq!(history.len(), symbols.len() * 2);
    assert!(history
        .iter()
        .all(|e| e.reason == reason && e.actor == actor));
}

/// Versions are gapless across every kind of command, and the trail holds each
/// kind as applied.
pub async fn versions_are_gapless_across_every_command(store: &dyn SymbolModeStore) {
    let base = known(store, &["A"]).await;
    store
        .set_symbol_mode("A", SoftHalt, &ops("one"))
        .await
        .expect("1");
    store
        .set_global_mode(CancelOnly, &ops("two"))
        .await
        .expect("2");
    store.cancel_all("A", &ops("three")).await.expect("3");
    store.withdrawals_halt(true, &ops("four")).await.expect("4");
    store
        .withdrawals_halt(false, &ticketed("five"))
        .await
        .expect("5");
    let all = store.history(5).await.expect("history");
    let versions: Vec<u64> = all.iter().map(|e| e.version).collect();
    assert_eq!(versions, [5, 4, 3, 2, 1].map(|v| base + v));
    let kinds: Vec<CommandKind> = all.iter().map(|e| e.command.kind()).collect();
    assert_eq!(
        kinds,
        [
            CommandKind::WithdrawalsHalt,
            CommandKind::WithdrawalsHalt,
            CommandKind::CancelAll,
            CommandKind::SetGlobalMode,
            CommandKind::SetSymbolMode
        ]
    );
    assert_eq!(store.venue().await.expect("venue").version, base + 5);
}

/// `changes_since(v)` returns exactly the symbols set after `v`, with the ids of
/// the events at `v` and at the head.
pub async fn changes_since_returns_only_what_changed(store: &dyn SymbolModeStore) {
    let base = known(store, &["A", "B"]).await;
    let first = store
        .set_symbol_mode("A", SoftHalt, &ops("a"))
        .await
        .expect("a");
    store
        .set_symbol_mode("B", HardHalt, &ops("b"))
        .await
        .expect("b");
    let last = store
        .set_symbol_mode("A", CancelOnly, &ticketed("a again"))
        .await
        .expect("a");
    let delta = store.changes_since(base + 1).await.expect("changes");
    assert_eq!(delta.since, base + 1);
    assert_eq!(delta.since_event, Some(first.request_id));
    assert_eq!(delta.version, base + 3);
    assert_eq!(delta.head_event, Some(last.request_id));
    let mut symbols = delta.symbols.clone();
    symbols.sort();
    assert_eq!(
        symbols,
        [("A".to_string(), CancelOnly), ("B".to_string(), HardHalt)]
    );
    let idle = store.changes_since(base + 3).await.expect("changes");
    assert!(idle.symbols.is_empty());
    assert_eq!(idle.version, base + 3);
    let snapshot = ModeSnapshot::from_delta(&store.changes_since(0).await.expect("full"));
    assert_eq!(snapshot.version(), base + 3);
    assert_eq!(snapshot.effective("A"), CancelOnly);
    assert_eq!(snapshot.effective("B"), HardHalt);
}

/// `CancelAll` is accepted in every mode (also under a global `HARD_HALT`), with or
/// without a ticket, and audited under the name operators use.
pub async fn cancel_all_is_allowed_in_every_mode_and_audited(store: &dyn SymbolModeStore) {
    known(store, &["CA-0", "CA-1", "CA-2", "CA-3"]).await;
    for (i, mode) in SymbolMode::ALL.into_iter().enumerate() {
        let symbol = format!("CA-{i}");
        store
            .set_symbol_mode(&symbol, mode, &ops("setup"))
            .await
            .expect("set");
        let command = store
            .cancel_all(&symbol, &Audit::new("ops:alice", "flatten book"))
            .await
            .expect("CancelAll in every mode");
        assert_eq!(command.symbol, symbol);
        assert_eq!(command.actor, "ops:alice");
        assert_eq!(command.ticket, None);
    }
    store
        .set_global_mode(HardHalt, &ops("global halt"))
        .await
        .expect("global");
    let command = store
        .cancel_all(
            "CA-0",
            &Audit::new("ops:alice", "flatten").with_ticket("INC-3"),
        )
        .await
        .expect("CancelAll under a global HARD_HALT");
    assert_eq!(command.ticket.as_deref(), Some("INC-3"));
    let newest = &store.history(1).await.expect("history")[0];
    assert_eq!(
        newest.command,
        Command::CancelAll {
            symbol: "CA-0".into()
        }
    );
    assert_eq!(
        CancelAllCommand::from_event(newest),
        Some(command.into_inner())
    );
}

async fn next_command(sub: &mut crate::CancelAllSubscription) -> CancelAllCommand {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("command delivered in time")
        .expect("subscription open")
}

async fn assert_quiet(sub: &mut crate::CancelAllSubscription) {
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "delivered more than once: {extra:?}");
}

/// Each `CancelAll` reaches each of two subscribers exactly once, in order;
/// `StartAt::Now` skips earlier commands, `StartAt::After(seq)` resumes after `seq`.
pub async fn cancel_all_reaches_each_subscriber_exactly_once(store: &dyn SymbolModeStore) {
    known(store, &["OLD", "X", "BTC-USD", "ETH-USD"]).await;
    let before = store
        .cancel_all("OLD", &ops("before subscribing"))
        .await
        .expect("old")
        .into_inner();
    let mut a = store
        .subscribe_cancel_all(StartAt::Now)
        .await
        .expect("subscribe a");
    let mut b = store
        .subscribe_cancel_all(StartAt::Now)
        .await
        .expect("subscribe b");
    store
        .set_symbol_mode("X", SoftHalt, &ops("not a command"))
        .await
        .expect("mode");
    let one = store
        .cancel_all("BTC-USD", &ops("one"))
        .await
        .expect("one")
        .into_inner();
    let two = store
        .cancel_all("ETH-USD", &ops("two"))
        .await
        .expect("two")
        .into_inner();
    for sub in [&mut a, &mut b] {
        assert_eq!(next_command(sub).await, one);
        assert_eq!(next_command(sub).await, two);
        assert_eq!(sub.cursor(), two.seq);
        assert_quiet(sub).await;
    }
    let mut replay = store
        .subscribe_cancel_all(StartAt::After(0))
        .await
        .expect("replay");
    assert_eq!(next_command(&mut replay).await, before);
    assert_eq!(next_command(&mut replay).await, one);
    let mut resume = store
        .subscribe_cancel_all(StartAt::After(one.seq))
        .await
        .expect("resume");
    assert_eq!(next_command(&mut resume).await, two);
    assert_quiet(&mut resume).await;
}

/// `WithdrawalsHalt(on)` needs no ticket; lifting it (`off`) needs one; both are audited.
pub async fn withdrawals_halt_is_audited_and_lifting_needs_a_ticket(store: &dyn SymbolModeStore) {
    let on = store
        .withdrawals_halt(true, &Audit::new("ops:alice", "ledger invariant violation"))
        .await
        .expect("halt");
    assert_eq!(on.command, Command::WithdrawalsHalt { on: true });
    assert!(store.venue().await.expect("venue").withdrawals_halted);
    let err = store
        .withdrawals_halt(false, &Audit::new("ops:alice", "reconciled"))
        .await
        .expect_err("lifting needs a ticket");
    assert!(
        matches!(err, Error::InvalidAudit(AuditError::TicketRequired { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("withdrawals"), "{err}");
    assert!(store.venue().await.expect("venue").withdrawals_halted);
    let off = store
        .withdrawals_halt(
            false,
            &Audit::new("ops:alice", "reconciled").with_ticket("INC-9"),
        )
        .await
        .expect("lift");
    assert!(off.command.relaxes_safety());
    assert!(!store.venue().await.expect("venue").withdrawals_halted);
    assert_eq!(
        store.history(10).await.expect("history"),
        vec![off.into_inner(), on.into_inner()]
    );
}

/// `tighten_symbol_mode` raises a symbol and is a no-op — no audit row — when the
/// symbol is already as severe; it never lowers a stricter mode.
pub async fn tighten_symbol_mode_only_tightens(store: &dyn SymbolModeStore) {
    known(store, &["A", "B"]).await;
    let raised = store
        .tighten_symbol_mode("A", SoftHalt, &ops("raise"))
        .await
        .expect("tighten")
        .expect("raised");
    assert_eq!(
        raised.command,
        Command::SetSymbolMode {
            symbol: "A".into(),
            from: Normal,
            to: SoftHalt
        }
    );
    assert_eq!(
        store
            .tighten_symbol_mode("A", SoftHalt, &ops("again"))
            .await
            .expect("no-op"),
        None
    );
    assert_eq!(
        store
            .tighten_symbol_mode("A", CancelOnly, &ops("lower"))
            .await
            .expect("no-op"),
        None
    );
    store
        .set_symbol_mode("B", HardHalt, &ops("hard"))
        .await
        .expect("hard");
    assert_eq!(
        store
            .tighten_symbol_mode("B", SoftHalt, &ops("soft"))
            .await
            .expect("no-op"),
        None
    );
    assert_eq!(own_mode(store, "A").await, SoftHalt);
    assert_eq!(own_mode(store, "B").await, HardHalt);
    assert_eq!(trail(store).await.len(), 2);
}

/// The settlement-lag policy: above T2 the symbol's throttle is lowered to the
/// policy's limit, above T3 it is also put in `SOFT_HALT`, each audited with the
/// policy as actor, once; it never lowers `HARD_HALT` and never raises a throttle.
pub async fn settlement_lag_policy_throttles_above_t2_and_soft_halts_above_t3(
    store: &dyn SymbolModeStore,
) {
    known(store, &["BTC-USD", "ETH-USD"]).await;
    let limit = Throttle::new(20, 40).expect("limit");
    let policy = SettlementLagPolicy::new(Duration::from_secs(2), Duration::from_secs(10))
        .expect("policy")
        .with_throttle(limit);
    let within = policy
        .apply(store, "BTC-USD", Duration::from_secs(1))
        .await
        .expect("apply");
    assert_eq!(
        (within.verdict, within.halted, within.throttled),
        (crate::LagVerdict::WithinPolicy, None, None)
    );
    assert!(
        trail(store).await.is_empty(),
        "nothing written within policy"
    );
    let throttle = policy
        .apply(store, "BTC-USD", Duration::from_secs(5))
        .await
        .expect("apply");
    assert_eq!(
        (throttle.verdict, &throttle.halted),
        (crate::LagVerdict::Throttle, &None)
    );
    let event = throttle.throttled.expect("throttled now");
    assert_eq!(event.actor, POLICY_ACTOR);
    assert!(event.reason.contains("T2"), "{}", event.reason);
    assert_eq!(
        event.command,
        Command::SetThrottle {
            symbol: "BTC-USD".into(),
            from: None,
            to: Some(limit)
        }
    );
    assert_eq!(throttle_of(store, "BTC-USD").await, Some(limit));
    let again = policy
        .apply(store, "BTC-USD", Duration::from_secs(6))
        .await
        .expect("apply");
    assert_eq!(again.throttled, None, "no second audit row");
    let halt = policy
        .apply(store, "BTC-USD", Duration::from_secs(30))
        .await
        .expect("apply");
    assert_eq!(halt.verdict, crate::LagVerdict::Halt);
    assert_eq!(halt.throttled, None, "already throttled at the limit");
    let event = halt.halted.expect("halted now");
    assert_eq!(event.actor, POLICY_ACTOR);
    assert!(event.reason.contains("T3"), "{}", event.reason);
    assert_eq!(
        event.command,
        Command::SetSymbolMode {
            symbol: "BTC-USD".into(),
            from: Normal,
            to: SoftHalt
        }
    );
    assert_eq!(own_mode(store, "BTC-USD").await, SoftHalt);
    let again = policy
        .apply(store, "BTC-USD", Duration::from_secs(40))
        .await
        .expect("apply");
    assert_eq!(
        (again.verdict, again.halted, again.throttled),
        (crate::LagVerdict::Halt, None, None),
        "no second audit row"
    );
    // A stricter limit set by an operator stays: the policy only lowers.
    let strict = Throttle::new(5, 100).expect("limit");
    store
        .set_throttle("ETH-USD", Some(strict), &ops("manual"))
        .await
        .expect("throttle");
    store
        .set_symbol_mode("ETH-USD", HardHalt, &ops("hard"))
        .await
        .expect("hard");
    let hard = policy
        .apply(store, "ETH-USD", Duration::from_secs(40))
        .await
        .expect("apply");
    assert_eq!(hard.halted, None);
    assert_eq!(
        own_mode(store, "ETH-USD").await,
        HardHalt,
        "the policy never lowers a mode"
    );
    assert_eq!(
        hard.throttled.expect("burst lowered").command,
        Command::SetThrottle {
            symbol: "ETH-USD".into(),
            from: Some(strict),
            to: Some(Throttle::new(5, 40).expect("limit"))
        },
        "each dimension at most the policy's, never raised"
    );
    assert_eq!(trail(store).await.len(), 5);
}

async fn throttle_of(store: &dyn SymbolModeStore, symbol: &str) -> Option<Throttle> {
    store
        .throttles()
        .await
        .expect("throttles")
        .into_iter()
        .find(|t| t.symbol == symbol)
        .and_then(|t| t.limit)
}

/// A throttle is set, lowered, raised and cleared through the audited store:
/// setting and lowering tighten (no ticket, an operator may); raising and clearing
/// relax (supervisor, ticket, the throttle's own position); an unknown symbol is
/// refused; every change is one audit event and travels in `changes_since`.
pub async fn throttles_tighten_freely_and_relax_with_authority(store: &dyn SymbolModeStore) {
    let base = known(store, &["BTC-USD", "ETH-USD"]).await;
    let five = Throttle::new(5, 5).expect("limit");
    let operator = || ops("throttle").with_authority(Authority::Operator);
    let set = store
        .set_throttle("BTC-USD", Some(five), &operator())
        .await
        .expect("an operator may throttle");
    assert_eq!(
        set.command,
        Command::SetThrottle {
            symbol: "BTC-USD".into(),
            from: None,
            to: Some(five)
        }
    );
    assert!(!set.command.relaxes_safety());
    assert_eq!(
        set.command.describe(),
        "SetThrottle BTC-USD none -> 5/s burst 5"
    );
    let delta = store.changes_since(base).await.expect("changes");
    assert_eq!(delta.throttles, vec![("BTC-USD".to_owned(), Some(five))]);
    assert!(delta.symbols.is_empty(), "a throttle is not a mode change");

    // Raising and clearing relax: an operator is refused, nothing changes.
    let err = store
        .set_throttle("BTC-USD", None, &operator().with_ticket("INC-1"))
        .await
        .expect_err("an operator may not clear");
    assert!(
        matches!(&err, Error::Refused(Refusal::Forbidden { message }) if message.contains("BTC-USD") && message.contains("supervisor")),
        "{err:?}"
    );
    let err = store
        .set_throttle(
            "BTC-USD",
            Some(Throttle::new(50, 5).expect("limit")),
            &operator().with_ticket("INC-1"),
        )
        .await
        .expect_err("an operator may not raise");
    assert!(
        matches!(&err, Error::Refused(Refusal::Forbidden { .. })),
        "{err:?}"
    );
    let err = store
        .set_throttle("BTC-USD", None, &ops("clear"))
        .await
        .expect_err("clearing needs a ticket");
    assert!(
        matches!(&err, Error::InvalidAudit(AuditError::TicketRequired { action }) if action.contains("BTC-USD")),
        "{err:?}"
    );
    assert_eq!(throttle_of(store, "BTC-USD").await, Some(five));

    // Lowering tightens; a relaxation names the throttle's own position.
    let lower = store
        .set_throttle(
            "BTC-USD",
            Some(Throttle::new(2, 5).expect("limit")),
            &operator(),
        )
        .await
        .expect("lower");
    let err = store
        .set_throttle("BTC-USD", None, &ticketed("clear").expecting(set.position))
        .await
        .expect_err("the throttle moved since it was read");
    match &err {
        Error::Refused(Refusal::PreconditionFailed { current, .. }) => {
            assert_eq!(current.position, lower.position);
            assert_eq!(
                current.what,
                "SetThrottle BTC-USD 5/s burst 5 -> 2/s burst 5"
            );
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }
    let cleared = store
        .set_throttle(
            "BTC-USD",
            None,
            &ticketed("clear").expecting(lower.position),
        )
        .await
        .expect("a supervisor clears with a ticket");
    assert!(cleared.command.relaxes_safety());
    assert_eq!(throttle_of(store, "BTC-USD").await, None);
    let rows = store.throttles().await.expect("throttles");
    assert_eq!(rows.len(), 1, "a cleared throttle keeps its row: {rows:?}");
    assert_eq!(rows[0].position, cleared.position);
    assert_eq!(rows[0].ticket.as_deref(), Some("INC-1"));

    let replay = store
        .set_throttle(
            "BTC-USD",
            None,
            &ticketed("clear")
                .expecting(lower.position)
                .with_request_id(cleared.request_id),
        )
        .await
        .expect("the same request again");
    assert!(replay.replayed);
    assert_eq!(replay.position, cleared.position);

    let err = store
        .set_throttle("btc-usd", Some(five), &ops("typo"))
        .await
        .expect_err("not registered");
    assert!(
        matches!(&err, Error::Control(SymbolRefusal::UnknownSymbol { did_you_mean: Some(s), .. }) if s == "BTC-USD"),
        "{err:?}"
    );
    let delta = store.changes_since(base).await.expect("changes");
    assert_eq!(delta.throttles, vec![("BTC-USD".to_owned(), None)]);
    assert_eq!(trail(store).await.len(), 3);
}

/// 40 concurrent commands on three symbols and the global mode: versions are
/// gapless, every event's `from` is the previous event's `to` for its scope (the
/// check and the write did not race), and the final modes equal the newest events.
pub async fn concurrent_commands_serialise(store: Arc<dyn SymbolModeStore>) {
    let base = known(&*store, &["A", "B", "C"]).await;
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let to = SymbolMode::ALL[(i * 7 + i / 3) % 4];
            let audit = ticketed(&format!("change {i}"));
            match i % 4 {
                3 => store.set_global_mode(to, &audit).await,
                n => store.set_symbol_mode(["A", "B", "C"][n], to, &audit).await,
            }
        }));
    }
    let mut accepted = 0u64;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(Error::Control(SymbolRefusal::TransitionForbidden { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let mut history = trail(&*store).await;
    history.reverse();
    assert_eq!(history.len() as u64, accepted);
    let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
    assert_eq!(versions, (base + 1..=base + accepted).collect::<Vec<u64>>());
    let mut modes: BTreeMap<Option<String>, SymbolMode> = BTreeMap::new();
    for event in &history {
        let (scope, from, to) = match &event.command {
            Command::SetSymbolMode { symbol, from, to } => (Some(symbol.clone()), *from, *to),
            Command::SetGlobalMode { from, to } => (None, *from, *to),
            other => panic!("unexpected {other:?}"),
        };
        let previous = modes.get(&scope).copied().unwrap_or_default();
        assert_eq!(from, previous, "event {} of {scope:?}", event.version);
        assert_ne!(from.transition_to(to), Transition::Forbidden);
        modes.insert(scope, to);
    }
    for symbol in ["A", "B", "C"] {
        let expected = modes
            .get(&Some(symbol.to_string()))
            .copied()
            .unwrap_or_default();
        assert_eq!(own_mode(&*store, symbol).await, expected);
    }
    assert_eq!(
        global_mode(&*store).await,
        modes.get(&None).copied().unwrap_or_default()
    );
}

/// An operator may tighten but not relax — a symbol, the global mode, the
/// withdrawals halt — decided against the state found in the write: a request that
/// was a tightening when the caller looked becomes a refusal once another change
/// made it a relaxation. Refusals change nothing.
pub async fn operator_may_not_relax_any_target(store: &dyn SymbolModeStore) {
    known(store, &["BTC-USD"]).await;
    let operator = |reason: &str| ops(reason).with_authority(Authority::Operator);
    store
        .set_symbol_mode("BTC-USD", CancelOnly, &operator("tighten"))
        .await
        .expect("an operator tightens");
    // Another actor halts harder in between: the operator's CANCEL_ONLY now relaxes.
    store
        .set_global_mode(HardHalt, &ops("incident"))
        .await
        .expect("global halt");
    store
        .set_symbol_mode("BTC-USD", HardHalt, &ops("incident"))
        .await
        .expect("symbol halt");
    store
        .withdrawals_halt(true, &ops("custody"))
        .await
        .expect("withdrawals halt");
    let before = observe(store).await;
    let refused = [
        store
            .set_symbol_mode(
                "BTC-USD",
                CancelOnly,
                &operator("resume").with_ticket("INC-1"),
            )
            .await
            .map(drop),
        store
            .set_global_mode(CancelOnly, &operator("resume").with_ticket("INC-1"))
            .await
            .map(drop),
        store
            .withdrawals_halt(false, &operator("resume").with_ticket("INC-1"))
            .await
            .map(drop),
    ];
    for result in refused {
        let err = result.expect_err("an operator may not relax");
        assert!(
            matches!(&err, Error::Refused(Refusal::Forbidden { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("supervisor"), "{err}");
    }
    assert_eq!(observe(store).await, before, "a refusal changes nothing");
    // Tightening and CancelAll stay the operator's, whatever the state.
    store
        .cancel_all("BTC-USD", &operator("flatten"))
        .await
        .expect("an operator cancels");
}

/// Each target has its own position: a relaxation names the position of the target
/// it relaxes (the global mode's, a symbol's), a change of another target does not
/// move it, and the change a refusal names is described as operators read it.
pub async fn each_target_relaxes_against_its_own_position(store: &dyn SymbolModeStore) {
    known(store, &["BTC-USD"]).await;
    let seen = store
        .set_global_mode(SoftHalt, &ops("lag"))
        .await
        .expect("soft halt");
    let hard = store
        .set_global_mode(HardHalt, &Audit::new("ops:bob", "split brain"))
        .await
        .expect("hard halt");
    let err = store
        .set_global_mode(CancelOnly, &ticketed("resume").expecting(seen.position))
        .await
        .expect_err("the global mode moved");
    match &err {
        Error::Refused(Refusal::PreconditionFailed { current, .. }) => {
            assert_eq!(current.position, hard.position);
            assert_eq!(current.what, "SetGlobalMode SOFT_HALT -> HARD_HALT");
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }
    let symbol = store
        .set_symbol_mode("BTC-USD", SoftHalt, &ops("tighten"))
        .await
        .expect("symbol tighten");
    // A symbol change does not move the global mode's position ...
    let resumed = store
        .set_global_mode(CancelOnly, &ticketed("resume").expecting(hard.position))
        .await
        .expect("relax against the global mode's own position");
    assert_eq!(
        resumed.command,
        Command::SetGlobalMode {
            from: HardHalt,
            to: CancelOnly
        }
    );
    // ... and the global mode's position is not the symbol's.
    let err = store
        .set_symbol_mode(
            "BTC-USD",
            Normal,
            &ticketed("resume").expecting(resumed.position),
        )
        .await
        .expect_err("the symbol's own position is not the global one");
    assert!(
        matches!(&err, Error::Refused(Refusal::PreconditionFailed { current, .. })
            if current.position == symbol.position),
        "{err:?}"
    );
    store
        .set_symbol_mode(
            "BTC-USD",
            Normal,
            &ticketed("resume").expecting(symbol.position),
        )
        .await
        .expect("relax the symbol against its own position");
}

/// Mode changes and `CancelAll` address registered symbols only, spelled exactly; a
/// near miss is refused naming the registered symbol, and nothing changes.
/// Registration is unique on the folded key (case and `-_./:` ignored), audited,
/// idempotent, and an operator's to do.
pub async fn unknown_symbols_are_refused_naming_the_near_match(store: &dyn SymbolModeStore) {
    let registered = store
        .register_symbol(
            "BTC-USD",
            &ops("listing").with_authority(Authority::Operator),
        )
        .await
        .expect("register")
        .expect("new");
    assert_eq!(
        registered.command,
        Command::RegisterSymbol {
            symbol: "BTC-USD".into()
        }
    );
    assert_eq!(
        store
            .register_symbol("BTC-USD", &ops("again"))
            .await
            .expect("idempotent"),
        None
    );
    let before = observe(store).await;
    for spelling in ["btc-usd", "BTCUSD", "btc_usd", "BTC/USD"] {
        let err = store
            .register_symbol(spelling, &ops("typo"))
            .await
            .expect_err("another spelling");
        assert!(
            matches!(&err, Error::Control(SymbolRefusal::SymbolConflict { registered, .. }) if registered == "BTC-USD"),
            "{spelling}: {err:?}"
        );
        let err = store
            .set_symbol_mode(spelling, HardHalt, &ops("typo"))
            .await
            .expect_err("unregistered spelling");
        assert!(
            matches!(&err, Error::Control(SymbolRefusal::UnknownSymbol { did_you_mean: Some(s), .. }) if s == "BTC-USD"),
            "{spelling}: {err:?}"
        );
        assert!(err.to_string().contains("did you mean BTC-USD?"), "{err}");
    }
    for unknown in ["NOPE-USD", "../../etc/passwd"] {
        let err = store
            .set_symbol_mode(unknown, HardHalt, &ops("typo"))
            .await
            .expect_err("unknown");
        assert!(
            matches!(
                &err,
                Error::Control(SymbolRefusal::UnknownSymbol {
                    did_you_mean: None,
                    ..
                })
            ),
            "{unknown}: {err:?}"
        );
        let err = store
            .cancel_all(unknown, &ops("typo"))
            .await
            .expect_err("unknown");
        assert!(
            matches!(&err, Error::Control(SymbolRefusal::UnknownSymbol { .. })),
            "{err:?}"
        );
    }
    assert_eq!(observe(store).await, before, "refusals change nothing");
    let engine = store
        .register_symbols(&["BTC-USD", "ETH-USD", "SOL-USD"], &ops("engine start"))
        .await
        .expect("engine registers");
    assert_eq!(engine, ["ETH-USD", "SOL-USD"]);
    let names: Vec<String> = store
        .symbols()
        .await
        .expect("symbols")
        .into_iter()
        .map(|r| r.symbol)
        .collect();
    assert_eq!(names, ["BTC-USD", "ETH-USD", "SOL-USD"]);
    store
        .set_symbol_mode("ETH-USD", CancelOnly, &ops("now known"))
        .await
        .expect("registered by the engine");
}

/// `NewStrategiesHalt`: halting new strategy activations is a tightening any operator
/// applies at once without a ticket; enabling them again is a relaxation: an
/// operator is refused (forbidden), a supervisor without a ticket is refused
/// (ticket required), a supervisor with a ticket enables them while the halt is
/// still at the position the audit expects. The same request again answers the
/// original event; its id with the other command is refused as reused. Every
/// accepted one is audited and moves only this flag.
pub async fn new_strategies_halt_is_audited_and_enabling_needs_a_supervisor_and_ticket(
    store: &dyn SymbolModeStore,
) {
    let fresh = store.new_strategies().await.expect("new_strategies");
    assert!(!fresh.new_strategies_disabled, "a fresh store allows them");
    assert_eq!(
        (fresh.position, fresh.updated_by.as_deref()),
        (crate::Position::ZERO, None)
    );
    let operator = |reason: &str| ops(reason).with_authority(Authority::Operator);

    let disable = operator("runaway strategies");
    let halted = store
        .new_strategies_halt(true, &disable)
        .await
        .expect("an operator halts new activations without a ticket");
    assert!(!halted.replayed);
    assert_eq!(halted.command, Command::NewStrategiesHalt { on: true });
    assert_eq!(halted.command.describe(), "NewStrategiesHalt on");
    assert!(!halted.command.relaxes_safety());
    assert_eq!(halted.authority, Some(Authority::Operator));
    assert_eq!((halted.approval_id, halted.break_glass), (None, false));
    let venue = store.venue().await.expect("venue");
    assert!(venue.new_strategies_disabled);
    assert!(!venue.withdrawals_halted, "only this flag moved");
    assert_eq!(venue.new_strategies_position, halted.position);
    assert_eq!(venue.position, halted.position);
    assert!(
        store
            .changes_since(0)
            .await
            .expect("changes")
            .new_strategies_disabled
    );
    let shown = store.new_strategies().await.expect("new_strategies");
    assert!(shown.new_strategies_disabled);
    assert_eq!(shown.position, halted.position);
    assert_eq!(shown.updated_by.as_deref(), Some("ops:conformance"));
    assert_eq!(shown.reason.as_deref(), Some("runaway strategies"));
    assert_eq!(shown.updated_at, Some(halted.at));
    assert_eq!(
        store.history(1).await.expect("history")[0],
        halted.clone().into_inner(),
        "the audit trail holds the event as answered"
    );
    let before = observe(store).await;

    let err = store
        .new_strategies_halt(false, &operator("resume").with_ticket("INC-1"))
        .await
        .expect_err("an operator may not enable them again");
    assert!(
        matches!(&err, Error::Refused(Refusal::Forbidden { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("supervisor"), "{err}");
    let err = store
        .new_strategies_halt(false, &ops("resume"))
        .await
        .expect_err("enabling again needs a ticket");
    assert!(
        matches!(
            &err,
            Error::InvalidAudit(AuditError::TicketRequired { action })
                if action.contains("new strategy activations")
        ),
        "{err:?}"
    );
    assert_eq!(observe(store).await, before, "refusals change nothing");

    // The same request again answers the original event and writes nothing.
    let again = store
        .new_strategies_halt(true, &disable)
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(again.position, halted.position);
    assert_eq!(observe(store).await, before);
    // Its id with the other command is someone else's request.
    let err = store
        .new_strategies_halt(
            false,
            &ticketed("resume").with_request_id(disable.request_id()),
        )
        .await
        .expect_err("reused");
    assert!(
        matches!(&err, Error::Refused(Refusal::RequestReused { .. })),
        "{err:?}"
    );

    // A supervisor who saw an older halt is refused, naming the change in between.
    let seen = halted.position;
    let twice = store
        .new_strategies_halt(true, &ops("still running away"))
        .await
        .expect("re-asserting tightens");
    let err = store
        .new_strategies_halt(false, &ticketed("resume").expecting(seen))
        .await
        .expect_err("the halt moved");
    assert!(
        matches!(&err, Error::Refused(Refusal::PreconditionFailed { .. })),
        "{err:?}"
    );
    let enabled = store
        .new_strategies_halt(false, &ticketed("resume").expecting(twice.position))
        .await
        .expect("a supervisor with a ticket enables them again");
    assert_eq!(enabled.command, Command::NewStrategiesHalt { on: false });
    assert!(enabled.command.relaxes_safety());
    assert_eq!(enabled.ticket.as_deref(), Some("INC-1"));
    let venue = store.venue().await.expect("venue");
    assert!(!venue.new_strategies_disabled);
    assert_eq!(venue.new_strategies_position, enabled.position);
}
