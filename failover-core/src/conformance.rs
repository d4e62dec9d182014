//! The contract every audited control's store keeps (feature `conformance`), written
//! once: idempotent replay, superseded replays, reused request ids, authority and
//! preconditions of relaxations, invalid audits, verbatim text, history order and
//! concurrent writers. A control runs it by describing one of its targets as an
//! [`AuditedControl`] — what tightens it, what relaxes it, its position and its
//! events — and expanding [`audited_contract_tests!`](crate::audited_contract_tests)
//! with a setup function; each behaviour becomes its own named `#[tokio::test]`.
//!
//! Every function expects a fresh target: no history of its own yet (its position
//! may be that of its creation, for a control whose targets are created).

use crate::{Audit, AuditError, Authority, ControlError, Outcome, Position, Refusal};
use std::sync::Arc;
use uuid::Uuid;

/// The result of a change, as the suite sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The position of the change (for a replay: of the original change).
    pub position: Position,
    /// True when it is a replay's original answer.
    pub replayed: bool,
}

/// One event of the target's audit trail, as the suite sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its position.
    pub position: Position,
    /// The request id.
    pub request_id: Uuid,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The ticket.
    pub ticket: Option<String>,
}

/// One target of an audited control, described for the contract suite.
#[async_trait::async_trait]
pub trait AuditedControl: Send + Sync + 'static {
    /// The store's error.
    type Error: ControlError + std::fmt::Debug;
    /// Tightens the target: allowed to an operator, never waits; repeating it
    /// re-asserts (a new change).
    async fn tighten(&self, audit: &Audit) -> Result<Change, Self::Error>;
    /// Relaxes the target from where [`tighten`](Self::tighten) left it (one step a
    /// supervisor with a ticket may take).
    async fn relax(&self, audit: &Audit) -> Result<Change, Self::Error>;
    /// The position of the target's latest change ([`Position::ZERO`] before any, or
    /// its creation's).
    async fn position(&self) -> Result<Position, Self::Error>;
    /// The target's events, newest first, at most `limit`.
    async fn history(&self, limit: usize) -> Result<Vec<Recorded>, Self::Error>;
}

fn tighten_audit(reason: &str) -> Audit {
    Audit::new("ops:contract", reason).with_authority(Authority::Operator)
}

fn relax_audit(reason: &str) -> Audit {
    Audit::new("ops:contract", reason)
        .with_ticket("INC-1")
        .with_authority(Authority::Supervisor)
}

fn refusal<E: ControlError + std::fmt::Debug>(err: &E) -> &Refusal {
    match err.outcome() {
        Outcome::Refused(r) => r,
        _ => panic!("expected a refusal by the authority rules, got {err:?}"),
    }
}

async fn count<C: AuditedControl + ?Sized>(control: &C) -> usize {
    control.history(1000).await.expect("history").len()
}

/// The same audit again, while its change is the latest, answers the original
/// change marked replayed and writes nothing.
pub async fn replay_in_force_is_marked_replayed<C: AuditedControl + ?Sized>(control: &C) {
    let audit = tighten_audit("retry me");
    let first = control.tighten(&audit).await.expect("tighten");
    assert!(!first.replayed);
    let again = control.tighten(&audit).await.expect("replay");
    assert!(again.replayed, "a replay must say so");
    assert_eq!(again.position, first.position);
    assert_eq!(control.position().await.expect("position"), first.position);
    assert_eq!(count(control).await, 1);
}

/// The same audit again after a later change is refused as superseded, naming that
/// change: a replay never reports a change that is no longer in force.
pub async fn replay_after_a_later_change_is_superseded<C: AuditedControl + ?Sized>(control: &C) {
    let audit = tighten_audit("first");
    control.tighten(&audit).await.expect("tighten");
    let later = control
        .tighten(&Audit::new("ops:bob", "second").with_authority(Authority::Operator))
        .await
        .expect("tighten again");
    let err = control.tighten(&audit).await.expect_err("superseded");
    match refusal(&err) {
        Refusal::Superseded { by, request_id } => {
            assert_eq!(by.position, later.position);
            assert_eq!(by.actor, "ops:bob");
            assert_eq!(*request_id, audit.request_id());
        }
        other => panic!("expected superseded, got {other:?}"),
    }
    assert_eq!(control.position().await.expect("position"), later.position);
    assert_eq!(count(control).await, 2);
}

/// Another actor sending a request id already used is refused; nothing changes.
pub async fn request_reused_by_another_actor_is_refused<C: AuditedControl + ?Sized>(control: &C) {
    let audit = tighten_audit("mine");
    let first = control.tighten(&audit).await.expect("tighten");
    let theirs = Audit::new("ops:mallory", "mine too")
        .with_authority(Authority::Operator)
        .with_request_id(audit.request_id());
    let err = control.tighten(&theirs).await.expect_err("reused");
    assert!(
        matches!(refusal(&err), Refusal::RequestReused { previous, .. } if previous.contains("ops:contract")),
        "{err:?}"
    );
    assert_eq!(control.position().await.expect("position"), first.position);
    assert_eq!(count(control).await, 1);
}

/// A request id used to tighten cannot relax; nothing changes.
pub async fn request_reused_for_another_action_is_refused<C: AuditedControl + ?Sized>(control: &C) {
    let audit = relax_audit("once");
    let first = control.tighten(&audit).await.expect("tighten");
    let err = control.relax(&audit).await.expect_err("reused");
    assert!(
        matches!(refusal(&err), Refusal::RequestReused { .. }),
        "{err:?}"
    );
    assert_eq!(control.position().await.expect("position"), first.position);
    assert_eq!(count(control).await, 1);
}

/// An operator may tighten but not relax; the refusal changes nothing.
pub async fn operator_may_not_relax<C: AuditedControl + ?Sized>(control: &C) {
    let first = control
        .tighten(&tighten_audit("stop"))
        .await
        .expect("tighten");
    let err = control
        .relax(&relax_audit("resume").with_authority(Authority::Operator))
        .await
        .expect_err("an operator may not relax");
    assert!(
        matches!(refusal(&err), Refusal::Forbidden { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("supervisor"),
        "the refusal says who may relax: {err}"
    );
    assert_eq!(err.outcome().exit_code(), crate::control::exit::REFUSED);
    assert_eq!(control.position().await.expect("position"), first.position);
    assert_eq!(count(control).await, 1);
}

/// A relaxation without a ticket is refused with `TicketRequired`; nothing changes.
pub async fn relax_without_ticket_is_refused<C: AuditedControl + ?Sized>(control: &C) {
    let first = control
        .tighten(&tighten_audit("stop"))
        .await
        .expect("tighten");
    let err = control
        .relax(&Audit::new("ops:alice", "resume").with_authority(Authority::Supervisor))
        .await
        .expect_err("ticket required");
    assert!(
        matches!(
            err.outcome(),
            Outcome::InvalidAudit(AuditError::TicketRequired { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("ticket"),
        "the refusal says what is missing: {err}"
    );
    assert_eq!(control.position().await.expect("position"), first.position);
    assert_eq!(count(control).await, 1);
}

/// A relaxation names the state it relaxes: when another change landed after the
/// caller read it, it is refused naming that change; against the change in force it
/// applies. A tightening never waits for a precondition: it applies whatever
/// position it names.
pub async fn relax_of_a_moved_state_is_refused<C: AuditedControl + ?Sized>(control: &C) {
    let seen = control
        .tighten(&tighten_audit("first"))
        .await
        .expect("tighten");
    let moved = control
        .tighten(&Audit::new("ops:bob", "second").with_authority(Authority::Operator))
        .await
        .expect("tighten again");
    let err = control
        .relax(&relax_audit("resume").expecting(seen.position))
        .await
        .expect_err("the state moved");
    match refusal(&err) {
        Refusal::PreconditionFailed {
            expected, current, ..
        } => {
            assert_eq!(*expected, seen.position);
            assert_eq!(current.position, moved.position);
            assert_eq!(current.actor, "ops:bob");
        }
        other => panic!("expected precondition failed, got {other:?}"),
    }
    assert_eq!(control.position().await.expect("position"), moved.position);
    let stale = control
        .tighten(&tighten_audit("third").expecting(seen.position))
        .await
        .expect("a tightening applies whatever it names");
    assert!(stale.position > moved.position);
    let relaxed = control
        .relax(&relax_audit("resume").expecting(stale.position))
        .await
        .expect("relax against the change in force");
    assert!(relaxed.position > stale.position);
}

/// A relaxation that must name its state and does not is refused naming the
/// current position.
pub async fn relax_without_required_precondition_is_refused<C: AuditedControl + ?Sized>(
    control: &C,
) {
    let first = control
        .tighten(&tighten_audit("stop"))
        .await
        .expect("tighten");
    let err = control
        .relax(&relax_audit("resume").requiring_precondition())
        .await
        .expect_err("precondition required");
    assert!(
        matches!(refusal(&err), Refusal::PreconditionRequired { current, .. } if *current == first.position),
        "{err:?}"
    );
    assert_eq!(control.position().await.expect("position"), first.position);
}

/// Audits every command must refuse: a blank or missing reason and actor, control
/// characters, a line separator, a reason too long, an empty ticket, a ticket with a
/// control character. For a control's commands beyond one target's tighten and
/// relax.
pub fn invalid_audits() -> Vec<Audit> {
    vec![
        Audit::new("ops", ""),
        Audit::new("ops", "   "),
        Audit::new("", "reason"),
        Audit::new("ops", "two\nlines"),
        Audit::new("ops", "two\u{2028}lines"),
        Audit::new("ops\u{0}", "nul"),
        Audit::new("ops", "x".repeat(crate::audit::MAX_REASON_CHARS + 1)),
        Audit::new("ops", "ok").with_ticket(""),
        Audit::new("ops", "ok").with_ticket("INC\u{7}"),
    ]
}

/// Every one of [`invalid_audits`] is refused with a typed error, tightening and
/// relaxing alike, and changes nothing.
pub async fn invalid_audit_is_refused_and_changes_nothing<C: AuditedControl + ?Sized>(control: &C) {
    let before = control.position().await.expect("position");
    for audit in &invalid_audits() {
        let err = control
            .tighten(&audit.clone().with_authority(Authority::Operator))
            .await
            .expect_err("refused");
        assert!(
            matches!(err.outcome(), Outcome::InvalidAudit(_)),
            "{audit:?}: {err:?}"
        );
        let err = control
            .relax(
                &audit
                    .clone()
                    .with_ticket("\u{7}")
                    .with_authority(Authority::Supervisor),
            )
            .await
            .expect_err("refused");
        assert!(
            matches!(err.outcome(), Outcome::InvalidAudit(_)),
            "{audit:?}: {err:?}"
        );
    }
    assert_eq!(control.position().await.expect("position"), before);
    assert_eq!(count(control).await, 0);
}

/// Reason, actor and ticket with quotes, semicolons, SQL and non-ASCII text are
/// stored and returned verbatim.
pub async fn text_is_stored_verbatim<C: AuditedControl + ?Sized>(control: &C) {
    let reason = "'; DROP TABLE audit_log; -- \"quoted\" $$ 💥 Ünïcode";
    let actor = "o'brien; SELECT 1";
    let ticket = "INC-'1'; --";
    let audit = Audit::new(actor, reason)
        .with_ticket(ticket)
        .with_authority(Authority::Operator);
    control.tighten(&audit).await.expect("tighten");
    let events = control.history(1).await.expect("history");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.reason.as_str(), e.actor.as_str(), e.ticket.as_deref()),
        (reason, actor, Some(ticket))
    );
    assert_eq!(e.request_id, audit.request_id());
}

/// History is newest first, bounded by `limit`, one event per applied change and
/// none for refused ones.
pub async fn history_is_newest_first_and_limited<C: AuditedControl + ?Sized>(control: &C) {
    let one = control.tighten(&tighten_audit("one")).await.expect("one");
    let _ = control
        .relax(&Audit::new("ops", "no ticket").with_authority(Authority::Supervisor))
        .await
        .expect_err("refused: no ticket");
    let two = control.relax(&relax_audit("two")).await.expect("two");
    let three = control
        .tighten(&tighten_audit("three"))
        .await
        .expect("three");
    let all = control.history(100).await.expect("history");
    let reasons: Vec<&str> = all.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["three", "two", "one"]);
    let positions: Vec<Position> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, [three.position, two.position, one.position]);
    assert_eq!(all[1].ticket.as_deref(), Some("INC-1"));
    assert_eq!(
        control.history(2).await.expect("history"),
        all[..2].to_vec()
    );
    assert!(control.history(0).await.expect("history").is_empty());
}

/// Every applied change takes a position greater than every earlier one, and the
/// target's position is the latest change's.
pub async fn positions_strictly_increase<C: AuditedControl + ?Sized>(control: &C) {
    let mut last = control.position().await.expect("position");
    for i in 0..6 {
        let change = if i % 2 == 0 {
            control.tighten(&tighten_audit("up")).await
        } else {
            control.relax(&relax_audit("down")).await
        }
        .expect("change");
        assert!(
            change.position > last,
            "{:?} after {last:?}",
            change.position
        );
        assert_eq!(control.position().await.expect("position"), change.position);
        last = change.position;
    }
}

/// 32 concurrent tightenings all apply, each at its own position, each one event,
/// and the target's position is the greatest of them.
pub async fn concurrent_tightenings_each_take_one_position<C: AuditedControl>(control: Arc<C>) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let control = control.clone();
            tokio::spawn(async move { control.tighten(&tighten_audit(&format!("t{i}"))).await })
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.expect("join").expect("tighten").position);
    }
    let newest = *positions.iter().max().expect("32 changes");
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 32, "every change at its own position");
    assert_eq!(control.position().await.expect("position"), newest);
    assert_eq!(count(&*control).await, 32);
}

/// Expands into one `#[tokio::test]` per behaviour of the audited-store contract,
/// in a module named `audited_contract`. `$setup` names an `async fn` in the
/// calling module returning `(Arc<impl AuditedControl>, guard)` for a fresh target;
/// the guard (a test database, say) lives as long as the test.
///
/// ```text
/// async fn audited() -> (Arc<MyControl>, ()) { (Arc::new(MyControl::fresh()), ()) }
/// failover_core::audited_contract_tests!(audited);
/// ```
#[macro_export]
macro_rules! audited_contract_tests {
    ($setup:ident) => {
        mod audited_contract {
            $crate::audited_contract_tests!(@tests $setup;
                replay_in_force_is_marked_replayed,
                replay_after_a_later_change_is_superseded,
                request_reused_by_another_actor_is_refused,
                request_reused_for_another_action_is_refused,
                operator_may_not_relax,
                relax_without_ticket_is_refused,
                relax_of_a_moved_state_is_refused,
                relax_without_required_precondition_is_refused,
                invalid_audit_is_refused_and_changes_nothing,
                text_is_stored_verbatim,
                history_is_newest_first_and_limited,
                positions_strictly_increase,
            );
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_tightenings_each_take_one_position() {
                let (control, _guard) = super::$setup().await;
                $crate::conformance::concurrent_tightenings_each_take_one_position(control).await;
            }
        }
    };
    (@tests $setup:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (control, _guard) = super::$setup().await;
                $crate::conformance::$name(&*control).await;
            }
        )*
    };
}
