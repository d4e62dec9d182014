//! Property test over random sequences of requested commands against the in-memory
//! store: the store never reaches a state the rules forbid, every refusal leaves state
//! and audit unchanged, and every accepted change has exactly one audit row with
//! actor, reason and ticket. The oracle is `conformance::check_ops`, which the
//! Postgres store also runs (on a fixed pseudo-random sequence) in its conformance
//! suite.

use proptest::prelude::*;
use tradepulse_symbol_mode::conformance::{check_ops, Op};
use tradepulse_symbol_mode::{MemorySymbolModeStore, SymbolMode};

fn mode() -> impl Strategy<Value = SymbolMode> {
    prop::sample::select(SymbolMode::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, mode(), any::<bool>(), prop::bool::weighted(0.9))
            .prop_map(|(symbol, to, ticket, valid)| Op::SetSymbol { symbol, to, ticket, valid }),
        3 => (mode(), any::<bool>(), prop::bool::weighted(0.9))
            .prop_map(|(to, ticket, valid)| Op::SetGlobal { to, ticket, valid }),
        1 => (0u8..3, mode()).prop_map(|(symbol, to)| Op::Tighten { symbol, to }),
        1 => (0u8..3).prop_map(|symbol| Op::CancelAll { symbol }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(on, ticket)| Op::Withdrawals { on, ticket }),
        2 => Just(Op::Replay),
        1 => Just(Op::BadSymbol),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_transition_sequences_follow_the_rules(ops in prop::collection::vec(op(), 1..80)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check_ops(&MemorySymbolModeStore::new(), &ops));
    }
}
