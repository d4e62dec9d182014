//! The contract of [`SymbolModeStore`], as one public async fn per behaviour.
//!
//! Every store runs the whole list through [`conformance_tests!`](crate::conformance_tests),
//! which expands into individually named `#[tokio::test]`s so that a failure names
//! the behaviour. The in-memory store is held to exactly what PostgreSQL does.
//!
//! Each function expects a fresh store (global `NORMAL`, version 0, no history).
//! [`check_ops`] is also the oracle of the property tests: it runs a sequence of
//! requested commands and checks each outcome against the rules.
//!
//! The suites live in their own files: the store's contract in `store`, the
//! hot-path handle's in `handle`, the four-eyes suite in `approvals` (run through
//! [`approval_conformance_tests!`](crate::approval_conformance_tests)) and the
//! property tests' oracle in `model`. This module re-exports every behaviour and
//! keeps the helpers they share.

mod approvals;
mod audited;
mod handle;
mod model;
mod store;

pub use approvals::{
    break_glass_applies_at_once_and_its_event_says_so,
    required_relaxations_wait_for_a_second_supervisor, tightening_supersedes_only_its_own_target,
};
pub use audited::{Audited, AUDITED_SYMBOL};
pub use failover_core::audited_contract_tests;
pub use handle::{
    effective_mode_is_the_more_severe_for_every_pair, handle_admits_the_burst_then_throttles,
    handle_answers_whether_a_strategy_may_be_activated, handle_follows_the_store,
    subscribers_see_new_versions,
};
pub use model::{check_ops, random_ops, random_sequences_follow_the_rules, Op};
pub use store::{
    cancel_all_and_withdrawals_are_applied_once, cancel_all_is_allowed_in_every_mode_and_audited,
    cancel_all_reaches_each_subscriber_exactly_once, changes_since_returns_only_what_changed,
    concurrent_commands_serialise, each_target_relaxes_against_its_own_position,
    every_command_refuses_an_invalid_audit, every_transition_follows_the_table,
    fresh_store_is_normal_at_version_zero, invalid_symbols_are_refused_with_clear_errors,
    new_strategies_halt_is_audited_and_enabling_needs_a_supervisor_and_ticket,
    operator_may_not_relax_any_target, request_reused_for_another_target_is_refused,
    resume_drill_goes_through_cancel_only, set_symbol_mode_round_trips,
    settlement_lag_policy_throttles_above_t2_and_soft_halts_above_t3,
    symbols_and_text_are_stored_verbatim, throttles_tighten_freely_and_relax_with_authority,
    tighten_symbol_mode_only_tightens, unknown_symbols_are_refused_naming_the_near_match,
    versions_are_gapless_across_every_command,
    withdrawals_halt_is_audited_and_lifting_needs_a_ticket,
};

use crate::{Audit, AuditEvent, CommandKind, SymbolMode, SymbolModeStore, Transition};
use std::time::Duration;
use SymbolMode::{CancelOnly, Normal};

const WAIT: Duration = Duration::from_secs(5);

fn ops(reason: &str) -> Audit {
    Audit::new("ops:conformance", reason)
}

fn ticketed(reason: &str) -> Audit {
    ops(reason).with_ticket("INC-1")
}

/// Registers `symbols` (mode changes and `CancelAll` address registered symbols
/// only) and returns the version after: the base a test's own changes count from.
pub async fn known(store: &dyn SymbolModeStore, symbols: &[&str]) -> u64 {
    for symbol in symbols {
        store
            .register_symbol(symbol, &ops("registry"))
            .await
            .expect("register");
    }
    store.venue().await.expect("venue").version
}

/// The audit trail without registrations, newest first.
async fn trail(store: &dyn SymbolModeStore) -> Vec<AuditEvent> {
    store
        .history(usize::MAX)
        .await
        .expect("history")
        .into_iter()
        .filter(|e| e.command.kind() != CommandKind::RegisterSymbol)
        .collect()
}

async fn own_mode(store: &dyn SymbolModeStore, symbol: &str) -> SymbolMode {
    store
        .symbol_state(symbol)
        .await
        .expect("symbol_state")
        .map_or(Normal, |s| s.mode)
}

async fn global_mode(store: &dyn SymbolModeStore) -> SymbolMode {
    store.venue().await.expect("venue").global
}

/// Sets `symbol` (or the global mode) to `target` through allowed steps, with tickets.
async fn force(store: &dyn SymbolModeStore, symbol: Option<&str>, target: SymbolMode) {
    if let Some(s) = symbol {
        known(store, &[s]).await;
    }
    let current = match symbol {
        Some(s) => own_mode(store, s).await,
        None => global_mode(store).await,
    };
    let set = |to: SymbolMode| async move {
        let audit = ticketed("setup");
        match symbol {
            Some(s) => store.set_symbol_mode(s, to, &audit).await,
            None => store.set_global_mode(to, &audit).await,
        }
        .expect("setup step")
    };
    if current.transition_to(target) == Transition::Forbidden {
        set(CancelOnly).await;
    }
    set(target).await;
}

/// Everything observable: venue, every symbol's own mode, the audit trail length.
async fn observe(
    store: &dyn SymbolModeStore,
) -> (crate::VenueState, Vec<(String, SymbolMode)>, usize) {
    let venue = store.venue().await.expect("venue");
    let mut symbols = store.changes_since(0).await.expect("changes").symbols;
    symbols.sort();
    let history = store.history(usize::MAX).await.expect("history").len();
    (venue, symbols, history)
}

/// Expands into one named `#[tokio::test]` per behaviour of the contract.
///
/// `$setup` is an async fn returning `(Arc<dyn SymbolModeStore>, guard)`, where the
/// guard keeps whatever the store needs alive (a database, say) until the test ends.
///
/// ```
/// use std::sync::Arc;
/// use tradepulse_symbol_mode::{MemorySymbolModeStore, SymbolModeStore};
/// async fn setup() -> (Arc<dyn SymbolModeStore>, ()) {
///     (Arc::new(MemorySymbolModeStore::new()), ())
/// }
/// tradepulse_symbol_mode::conformance_tests!(setup);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@tests $setup;
            fresh_store_is_normal_at_version_zero,
            set_symbol_mode_round_trips,
            every_transition_follows_the_table,
            resume_drill_goes_through_cancel_only,
            cancel_all_and_withdrawals_are_applied_once,
            request_reused_for_another_target_is_refused,
            invalid_symbols_are_refused_with_clear_errors,
            every_command_refuses_an_invalid_audit,
            symbols_and_text_are_stored_verbatim,
            versions_are_gapless_across_every_command,
            changes_since_returns_only_what_changed,
            cancel_all_is_allowed_in_every_mode_and_audited,
            cancel_all_reaches_each_subscriber_exactly_once,
            withdrawals_halt_is_audited_and_lifting_needs_a_ticket,
            new_strategies_halt_is_audited_and_enabling_needs_a_supervisor_and_ticket,
            tighten_symbol_mode_only_tightens,
            settlement_lag_policy_throttles_above_t2_and_soft_halts_above_t3,
            throttles_tighten_freely_and_relax_with_authority,
            subscribers_see_new_versions,
            operator_may_not_relax_any_target,
            each_target_relaxes_against_its_own_position,
            unknown_symbols_are_refused_naming_the_near_match,
            random_sequences_follow_the_rules,
        );
        $crate::conformance_tests!(@arc_tests $setup;
            effective_mode_is_the_more_severe_for_every_pair,
            handle_follows_the_store,
            handle_admits_the_burst_then_throttles,
            handle_answers_whether_a_strategy_may_be_activated,
            concurrent_commands_serialise,
        );
        async fn __audited() -> (::std::sync::Arc<$crate::conformance::Audited>, impl Sized) {
            let (store, guard) = $setup().await;
            let audited = $crate::conformance::Audited::new(store).await;
            (::std::sync::Arc::new(audited), guard)
        }
        $crate::conformance::audited_contract_tests!(__audited);
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $setup().await;
                $crate::conformance::$name(&*store).await;
            }
        )*
    };
    (@arc_tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $setup().await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

/// Runs the four-eyes suite: `$setup` is an async fn returning
/// `(Arc<dyn SymbolModeStore>, Arc<dyn ApprovalStore>, guard)`, the store subject to
/// the approvals.
#[macro_export]
macro_rules! approval_conformance_tests {
    ($setup:path) => {
        $crate::approval_conformance_tests!(@tests $setup;
            required_relaxations_wait_for_a_second_supervisor,
            tightening_supersedes_only_its_own_target,
            break_glass_applies_at_once_and_its_event_says_so,
        );
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, approvals, _guard) = $setup().await;
                $crate::conformance::$name(&*store, &*approvals).await;
            }
        )*
    };
}
