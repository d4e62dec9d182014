//! The oracle of the property tests: random sequences of requested commands, each
//! outcome checked against the rules.

use super::{known, observe};
use crate::{Audit, Command, Error, SymbolMode, SymbolModeStore, Transition};
use SymbolMode::{HardHalt, Normal};

/// One requested command of a random sequence (see [`check_ops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SetSymbolMode(SYMBOLS[symbol % 3], to)`.
    SetSymbol {
        /// Index into three symbols.
        symbol: u8,
        /// Requested mode.
        to: SymbolMode,
        /// Whether a ticket is given.
        ticket: bool,
        /// False: the audit reason is blank (must be refused).
        valid: bool,
    },
    /// `SetGlobalMode(to)`.
    SetGlobal {
        /// Requested mode.
        to: SymbolMode,
        /// Whether a ticket is given.
        ticket: bool,
        /// False: the audit reason is blank (must be refused).
        valid: bool,
    },
    /// `tighten_symbol_mode(SYMBOLS[symbol % 3], to)`.
    Tighten {
        /// Index into three symbols.
        symbol: u8,
        /// Requested minimum mode.
        to: SymbolMode,
    },
    /// `CancelAll(SYMBOLS[symbol % 3])`.
    CancelAll {
        /// Index into three symbols.
        symbol: u8,
    },
    /// `WithdrawalsHalt(on)`.
    Withdrawals {
        /// Halt or lift.
        on: bool,
        /// Whether a ticket is given.
        ticket: bool,
    },
    /// Submit the last accepted request again (same `Audit`).
    Replay,
    /// `SetSymbolMode` with an invalid symbol (must be refused).
    BadSymbol,
}

const SYMBOLS: [&str; 3] = ["BTC-USD", "x--y_z.:", "ETH/USDT"];

type Observed = (crate::VenueState, Vec<(String, SymbolMode)>, usize);

fn mode_of(observed: &Observed, symbol: &str) -> SymbolMode {
    observed
        .1
        .iter()
        .find(|(s, _)| s == symbol)
        .map_or(Normal, |(_, m)| *m)
}

/// Runs `ops` and checks each outcome against the rules:
/// * an accepted mode change is allowed by the table from the mode before, carries a
///   ticket when it relaxes, changes exactly the addressed mode, and no effective
///   mode relaxes further than the table allows from it (`HARD_HALT` never reaches
///   `NORMAL` in one step, also through the global mode);
/// * every accepted command appends exactly one audit row carrying its actor,
///   reason and ticket, and bumps the version by one;
/// * every refusal is one the rules demand, and leaves state and audit unchanged;
/// * a replay returns the original event and changes nothing.
pub async fn check_ops(store: &dyn SymbolModeStore, ops: &[Op]) {
    known(store, &SYMBOLS).await;
    let mut last: Option<(Op, Audit, crate::AuditEvent)> = None;
    for (step, op) in ops.iter().enumerate() {
        let before = observe(store).await;
        let audit_for = |ticket: bool, valid: bool| {
            let audit = Audit::new(
                format!("ops:step-{step}"),
                if valid {
                    format!("step {step}")
                } else {
                    " ".into()
                },
            );
            if ticket {
                audit.with_ticket(format!("INC-{step}"))
            } else {
                audit
            }
        };
        let (op, audit) = match op {
            Op::Replay => match &last {
                Some((op, audit, _)) => (op.clone(), audit.clone()),
                None => continue,
            },
            Op::SetSymbol { ticket, valid, .. } | Op::SetGlobal { ticket, valid, .. } => {
                (op.clone(), audit_for(*ticket, *valid))
            }
            Op::Withdrawals { ticket, .. } => (op.clone(), audit_for(*ticket, true)),
            _ => (op.clone(), audit_for(false, true)),
        };
        let replay = matches!(ops[step], Op::Replay);
        let result: Result<Option<crate::AuditEvent>, Error> = match &op {
            Op::SetSymbol { symbol, to, .. } => store
                .set_symbol_mode(SYMBOLS[*symbol as usize % 3], *to, &audit)
                .await
                .map(|e| Some(e.into_inner())),
            Op::SetGlobal { to, .. } => store
                .set_global_mode(*to, &audit)
                .await
                .map(|e| Some(e.into_inner())),
            Op::Tighten { symbol, to } => {
                store
                    .tighten_symbol_mode(SYMBOLS[*symbol as usize % 3], *to, &audit)
                    .await
            }
            Op::CancelAll { symbol } => match store
                .cancel_all(SYMBOLS[*symbol as usize % 3], &audit)
                .await
            {
                Ok(command) => Ok(Some(event_at(store, command.seq).await)),
                Err(e) => Err(e),
            },
            Op::Withdrawals { on, .. } => store
                .withdrawals_halt(*on, &audit)
                .await
                .map(|e| Some(e.into_inner())),
            Op::BadSymbol => store
                .set_symbol_mode("BAD SYMBOL", HardHalt, &audit)
                .await
                .map(|e| Some(e.into_inner())),
            Op::Replay => unreachable!("resolved above"),
        };
        let after = observe(store).await;
        if replay {
            let (_, _, original) = last.as_ref().expect("replay has an original");
            match result {
                Ok(Some(event)) => {
                    assert_eq!(&event, original, "step {step}: replay returns the original")
                }
                other => panic!("step {step}: replay failed: {other:?}"),
            }
            assert_eq!(after, before, "step {step}: a replay changes nothing");
            continue;
        }
        // What the rules demand, from the state before.
        let expected_ok = match &op {
            Op::SetSymbol {
                symbol,
                to,
                ticket,
                valid,
            } => {
                *valid
                    && match mode_of(&before, SYMBOLS[*symbol as usize % 3]).transition_to(*to) {
                        Transition::Tighten => true,
                        Transition::Relax => *ticket,
                        Transition::Forbidden => false,
                    }
            }
            Op::SetGlobal { to, ticket, valid } => {
                *valid
                    && match before.0.global.transition_to(*to) {
                        Transition::Tighten => true,
                        Transition::Relax => *ticket,
                        Transition::Forbidden => false,
                    }
            }
            Op::Withdrawals { on, ticket } => *on || *ticket,
            Op::BadSymbol => false,
            Op::Tighten { .. } | Op::CancelAll { .. } => true,
            Op::Replay => unreachable!(),
        };
        match result {
            Err(error) => {
                assert!(
                    !expected_ok,
                    "step {step}: {op:?} refused although allowed: {error}"
                );
                assert_eq!(after, before, "step {step}: a refusal changes nothing");
            }
            Ok(None) => {
                let Op::Tighten { symbol, to } = &op else {
                    panic!("step {step}: only tighten may be a no-op")
                };
                assert!(
                    mode_of(&before, SYMBOLS[*symbol as usize % 3]) >= *to,
                    "step {step}"
                );
                assert_eq!(after, before, "step {step}: a no-op changes nothing");
            }
            Ok(Some(_)) => {
                assert!(
                    expected_ok,
                    "step {step}: {op:?} accepted although the rules refuse it"
                );
                assert_eq!(after.2, before.2 + 1, "step {step}: exactly one audit row");
                assert_eq!(
                    after.0.version,
                    before.0.version + 1,
                    "step {step}: version +1"
                );
                let event = store.history(1).await.expect("history").remove(0);
                assert_eq!(event.version, after.0.version);
                assert_eq!(event.request_id, audit.request_id());
                assert_eq!(
                    (
                        event.actor.as_str(),
                        event.reason.as_str(),
                        event.ticket.as_deref()
                    ),
                    (audit.actor(), audit.reason(), audit.ticket()),
                    "step {step}: the audit row carries actor, reason and ticket"
                );
                if event.command.relaxes_safety() {
                    assert!(
                        event.ticket.is_some(),
                        "step {step}: relaxing without a ticket"
                    );
                }
                match &event.command {
                    Command::SetSymbolMode { symbol, from, to } => {
                        assert_eq!(*from, mode_of(&before, symbol));
                        assert_ne!(from.transition_to(*to), Transition::Forbidden);
                        assert_eq!(mode_of(&after, symbol), *to);
                    }
                    Command::SetGlobalMode { from, to } => {
                        assert_eq!(*from, before.0.global);
                        assert_ne!(from.transition_to(*to), Transition::Forbidden);
                        assert_eq!(after.0.global, *to);
                    }
                    Command::WithdrawalsHalt { on } => assert_eq!(after.0.withdrawals_halted, *on),
                    Command::NewStrategiesHalt { on } => {
                        assert_eq!(after.0.new_strategies_disabled, *on)
                    }
                    Command::CancelAll { .. }
                    | Command::RegisterSymbol { .. }
                    | Command::SetThrottle { .. } => {}
                }
                // Only the addressed entry changed.
                let mut expected = before.clone();
                expected.0.version += 1;
                assert!(
                    after.0.position > before.0.position,
                    "step {step}: the position moved forward"
                );
                assert_eq!(
                    after.0.position, event.position,
                    "step {step}: the event is identified by the new position"
                );
                expected.0.position = event.position;
                expected.2 += 1;
                match &event.command {
                    Command::SetSymbolMode { symbol, to, .. } => {
                        match expected.1.iter_mut().find(|(s, _)| s == symbol) {
                            Some(entry) => entry.1 = *to,
                            None => expected.1.push((symbol.clone(), *to)),
                        }
                        expected.1.sort();
                    }
                    Command::SetGlobalMode { to, .. } => {
                        expected.0.global = *to;
                        expected.0.global_position = event.position;
                    }
                    Command::WithdrawalsHalt { on } => {
                        expected.0.withdrawals_halted = *on;
                        expected.0.withdrawals_position = event.position;
                    }
                    Command::NewStrategiesHalt { on } => {
                        expected.0.new_strategies_disabled = *on;
                        expected.0.new_strategies_position = event.position;
                    }
                    Command::CancelAll { .. }
                    | Command::RegisterSymbol { .. }
                    | Command::SetThrottle { .. } => {}
                }
                assert_eq!(
                    after, expected,
                    "step {step}: exactly the addressed state changed"
                );
                // Effective modes moved lawfully.
                for symbol in SYMBOLS {
                    let e_before = before.0.global.max(mode_of(&before, symbol));
                    let e_after = after.0.global.max(mode_of(&after, symbol));
                    // Never further down than the table lets the effective mode
                    // itself relax: HARD_HALT may land on SOFT_HALT (a global
                    // HARD_HALT lifted over a SOFT_HALT symbol), never on NORMAL.
                    let floor = e_before
                        .may_relax_to()
                        .iter()
                        .min()
                        .copied()
                        .unwrap_or(e_before);
                    assert!(
                        e_after >= floor,
                        "step {step}: effective mode of {symbol} jumped {e_before} -> {e_after}"
                    );
                }
                last = Some((op.clone(), audit.clone(), event));
            }
        }
    }
}

async fn event_at(store: &dyn SymbolModeStore, seq: u64) -> crate::AuditEvent {
    store
        .history(usize::MAX)
        .await
        .expect("history")
        .into_iter()
        .find(|e| e.position.0 == seq)
        .expect("the event of an accepted command")
}

/// A deterministic pseudo-random sequence of `len` operations (xorshift, no
/// dependency), for stores where a property-test runner is too slow.
pub fn random_ops(seed: u64, len: usize) -> Vec<Op> {
    let mut x = seed.max(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..len)
        .map(|_| {
            let r = next();
            let mode = SymbolMode::from_severity((r >> 8) as u8 % 4);
            let symbol = (r >> 16) as u8 % 3;
            let ticket = (r >> 24) % 3 != 0;
            match r % 16 {
                0..=6 => Op::SetSymbol {
                    symbol,
                    to: mode,
                    ticket,
                    valid: (r >> 32) % 10 != 0,
                },
                7..=9 => Op::SetGlobal {
                    to: mode,
                    ticket,
                    valid: (r >> 32) % 10 != 0,
                },
                10 => Op::Tighten { symbol, to: mode },
                11 => Op::CancelAll { symbol },
                12 => Op::Withdrawals {
                    on: (r >> 40) % 2 == 0,
                    ticket,
                },
                13 | 14 => Op::Replay,
                _ => Op::BadSymbol,
            }
        })
        .collect()
}

/// 150 pseudo-random requested commands, checked by [`check_ops`].
pub async fn random_sequences_follow_the_rules(store: &dyn SymbolModeStore) {
    check_ops(store, &random_ops(0x5eed_cafe, 150)).await;
}
