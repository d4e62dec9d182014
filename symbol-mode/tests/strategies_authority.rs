//! Enabling new strategy activations again is decided inside the write, against the
//! halt it locks — never against the position the supervisor read earlier. Each test
//! holds another operator's `disable-new` open in its own transaction while the
//! supervisor's `enable-new` (made on the position read before) waits on the row:
//! committed, it refuses naming that change and the flag stays disabled; rolled back,
//! it applies. A replay of the first halt after the enable is superseded, never
//! reported as in force. Real PostgreSQL.

mod support;

use failover_core::Refusal;
use std::sync::Arc;
use std::time::Duration;
use tradepulse_symbol_mode::{
    Audit, AuditEvent, Authority, Command, Error, PostgresSymbolModeStore, SymbolModeStore,
};
use tradepulse_testkit::Held;

const WAIT: Duration = Duration::from_secs(10);

/// Another operator's `disable-new` (a tightening with a reason of its own), made by a
/// session of its own, as another admin process or a DBA's psql would make it.
const DISABLE_BY_DAVE: &str = "SELECT * FROM symbol_mode_apply(gen_random_uuid(), \
     'NewStrategiesHalt', NULL, NULL, TRUE, FALSE, 'second incident', 'ops:dave', NULL, \
     'operator')";

/// Alice's halt, as the operator's front end sends it.
fn alice_disables() -> Audit {
    Audit::new("ops:alice", "runaway strategies").with_authority(Authority::Operator)
}

/// A fresh database with new activations halted by Alice; the store, Alice's audit
/// and the halt's event.
async fn halted() -> (
    Arc<tradepulse_testkit::Cluster>,
    String,
    Arc<PostgresSymbolModeStore>,
    Audit,
    AuditEvent,
) {
    let (cluster, db) = support::shared_primary().await;
    let store = Arc::new(support::store(&cluster.primary().dsn(&db)).await);
    let audit = alice_disables();
    let halt = store
        .new_strategies_halt(true, &audit)
        .await
        .expect("an operator halts new activations")
        .into_inner();
    (cluster, db, store, audit, halt)
}

/// Bob, a supervisor, enables new activations again on the halt he read.
async fn bob_enables(
    store: &Arc<PostgresSymbolModeStore>,
) -> tokio::task::JoinHandle<Result<AuditEvent, Error>> {
    let seen = store.new_strategies().await.unwrap();
    assert!(seen.new_strategies_disabled, "Bob reads the halt: {seen:?}");
    let audit = Audit::new("ops:bob", "fixed")
        .with_ticket("INC-7")
        .expecting(seen.position);
    let store = store.clone();
    tokio::spawn(async move {
        store
            .new_strategies_halt(false, &audit)
            .await
            .map(|a| a.into_inner())
    })
}

/// Dave's halt held open, and Bob's enable (made on the halt he read before) seen
/// waiting on its row, still undecided.
async fn bob_enables_behind_dave(
    store: &Arc<PostgresSymbolModeStore>,
    dsn: &str,
) -> (Held, tokio::task::JoinHandle<Result<AuditEvent, Error>>) {
    let held = Held::begin(dsn, DISABLE_BY_DAVE).await;
    let enable = bob_enables(store).await;
    held.until_waited_on(WAIT).await;
    assert!(
        !enable.is_finished(),
        "the enable waits on the held halt's row"
    );
    (held, enable)
}

async fn events(store: &PostgresSymbolModeStore) -> Vec<AuditEvent> {
    store.history(1000).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_new_waits_for_a_held_disable_then_refuses_naming_it() {
    let (cluster, db, store, _, halt) = halted().await;
    let dsn = cluster.primary().dsn(&db);
    let before = events(&store).await.len();

    let (held, enable) = bob_enables_behind_dave(&store, &dsn).await;
    held.commit().await;
    let refused = enable
        .await
        .unwrap()
        .expect_err("Dave's halt landed while the enable waited");

    let dave = match &refused {
        Error::Refused(Refusal::PreconditionFailed {
            expected, current, ..
        }) => {
            assert_eq!(*expected, halt.position, "asked against Alice's halt");
            assert_eq!(current.actor, "ops:dave", "{refused}");
            assert_eq!(current.what, "NewStrategiesHalt on", "{refused}");
            assert!(current.position > halt.position, "{refused}");
            current.position
        }
        other => panic!("expected precondition_failed naming Dave's halt, got {other:?}"),
    };
    assert!(refused.to_string().contains("ops:dave"), "{refused}");

    let now = store.new_strategies().await.unwrap();
    assert!(now.new_strategies_disabled, "still disabled: {now:?}");
    assert_eq!(now.position, dave, "{now:?}");
    assert_eq!(now.updated_by.as_deref(), Some("ops:dave"), "{now:?}");
    assert_eq!(now.reason.as_deref(), Some("second incident"), "{now:?}");
    let after = events(&store).await;
    assert_eq!(after.len(), before + 1, "one event more: Dave's");
    assert_eq!(after[0].actor, "ops:dave");
    assert_eq!(after[0].command, Command::NewStrategiesHalt { on: true });
    assert!(
        after.iter().all(|e| !e.command.relaxes_safety()),
        "nothing was relaxed: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_new_waits_for_a_held_disable_and_applies_once_it_rolls_back() {
    let (cluster, db, store, _, halt) = halted().await;
    let dsn = cluster.primary().dsn(&db);
    let before = events(&store).await.len();

    let (held, enable) = bob_enables_behind_dave(&store, &dsn).await;
    held.rollback().await;
    let enabled = enable
        .await
        .unwrap()
        .expect("Alice's halt is still the one in force: the enable applies");

    assert_eq!(enabled.command, Command::NewStrategiesHalt { on: false });
    assert_eq!(enabled.actor, "ops:bob");
    assert!(enabled.position > halt.position);
    let now = store.new_strategies().await.unwrap();
    assert!(!now.new_strategies_disabled, "enabled again: {now:?}");
    assert_eq!(now.position, enabled.position, "{now:?}");
    assert_eq!(now.updated_by.as_deref(), Some("ops:bob"), "{now:?}");
    let after = events(&store).await;
    assert_eq!(after.len(), before + 1, "one event more: Bob's");
    assert!(
        after.iter().all(|e| e.actor != "ops:dave"),
        "the rolled-back halt left no event: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_disable_after_enable_new_is_superseded_not_in_force() {
    let (_cluster, _db, store, alice, halt) = halted().await;

    // While Alice's halt is the latest change of the flag, her replay answers it.
    let again = store.new_strategies_halt(true, &alice).await.unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.position, halt.position);

    let enabled = bob_enables(&store)
        .await
        .await
        .unwrap()
        .expect("the supervisor enables them again");
    let written = events(&store).await.len();

    let refused = store
        .new_strategies_halt(true, &alice)
        .await
        .expect_err("the enable superseded Alice's halt");
    match &refused {
        Error::Refused(Refusal::Superseded { request_id, by }) => {
            assert_eq!(*request_id, alice.request_id());
            assert_eq!(by.position, enabled.position, "{refused}");
            assert_eq!(by.actor, "ops:bob", "{refused}");
            assert_eq!(by.what, "NewStrategiesHalt off", "{refused}");
        }
        other => panic!("expected superseded naming Bob's enable, got {other:?}"),
    }
    assert!(
        refused.to_string().contains("no longer in force"),
        "{refused}"
    );
    let now = store.new_strategies().await.unwrap();
    assert!(!now.new_strategies_disabled, "not reported halted: {now:?}");
    assert_eq!(now.position, enabled.position, "{now:?}");
    assert_eq!(events(&store).await.len(), written, "nothing written");
}
