//! What [`pg_pooler_suite!`](crate::pg_pooler_suite) runs: a store and its handle
//! behind pgbouncer — concurrent calls in transaction mode, push through a listen
//! DSN or a session pooler, and push reported unavailable when it cannot work.

use super::{push_only, SuiteHandle, SuiteHandleStore, SuiteStore, WAIT};
use crate::{fast_settings, own_primary, wait_until, Cluster};
use failover_core::control::{ControlError, Outcome};
use failover_core::health::ComponentStatus;
use failover_core::postgres::{PgSettings, PgStore};
use failover_core::watcher::WatchConfig;
use std::sync::Arc;
use std::time::Duration;

/// Through pgbouncer in transaction mode (what most fleets run): 1,000 concurrent
/// calls succeed — no named prepared statement outlives its transaction there, so the
/// pool sends unnamed statements once it notices — and migrations run through it.
pub async fn transaction_pooler_serves_concurrent_calls<S: SuiteStore>() {
    let (cluster, db) = own_primary().await.expect("cluster");
    let bouncer = cluster
        .pgbouncer(crate::PoolMode::Transaction)
        .await
        .expect("pgbouncer");
    let settings = PgSettings::builder()
        .with_dsn(bouncer.dsn(&db))
        .build()
        .unwrap();
    let store = Arc::new(S::Store::new(settings).expect("store"));
    store
        .migrate()
        .await
        .expect("migrations through the pooler");
    let events = || async {
        let rows = cluster
            .primary()
            .query(&db, &format!("SELECT count(*) FROM {}", S::AUDIT_TABLE))
            .await
            .expect("count events");
        rows[0][0]
            .as_deref()
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a count")
    };
    // A first call does what a store's adapter sets up once (a symbol, the scopes).
    S::tighten(&store, 1000).await.expect("a first call");
    let before = events().await;
    let calls = (0..1000u32).map(|n| {
        let store = store.clone();
        async move {
            if n % 2 == 0 {
                S::tighten(&store, n).await
            } else {
                S::relax(&store, n).await
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    // A call whose commit was in doubt (its answer lost to a timeout on a loaded
    // machine) is retried by the store with the same request id; when another call
    // changed the state in between, the retry answers that the request was applied
    // and superseded. That is a call served exactly once, not a failure.
    let (in_doubt, failed): (Vec<&S::Error>, Vec<&S::Error>) = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .partition(|e| {
            matches!(
                e.outcome(),
                Outcome::Refused(failover_core::Refusal::Superseded { .. })
            )
        });
    assert!(
        failed.is_empty(),
        "{} of 1000 calls failed through the pooler, e.g. {}",
        failed.len(),
        failed[0]
    );
    assert_eq!(
        events().await - before,
        1000,
        "every call applied exactly once ({} answered superseded after an in-doubt retry)",
        in_doubt.len()
    );
}

/// A primary with pgbouncer in `mode` in front, a writer store and a handle in
/// another store, both through pgbouncer (LISTEN going to the primary directly with
/// `listen_direct`), after one relaxing change.
struct Pooled {
    _cluster: Cluster,
    _bouncer: crate::PgBouncer,
    handle: Box<dyn SuiteHandle>,
}

async fn pooled<S: SuiteHandleStore>(
    mode: crate::PoolMode,
    listen_direct: bool,
    config: WatchConfig,
) -> (Pooled, S::Store) {
    let (cluster, db) = own_primary().await.expect("cluster");
    let bouncer = cluster.pgbouncer(mode).await.expect("pgbouncer");
    let store = || {
        let mut settings = fast_settings(&bouncer.dsn(&db));
        if listen_direct {
            settings = settings.with_listen_dsn(cluster.primary().dsn(&db));
        }
        S::Store::new(settings.build().unwrap()).expect("store")
    };
    let writer = store();
    writer.migrate().await.expect("migrate through the pooler");
    S::relax(&writer, 1).await.unwrap();
    let handle = S::handle(Arc::new(store()), config);
    (
        Pooled {
            _cluster: cluster,
            _bouncer: bouncer,
            handle,
        },
        writer,
    )
}

/// Push reaches the handle (polling at 1 h) within 1 s, once health is `operational`.
async fn pushed_through<S: SuiteHandleStore>(mode: crate::PoolMode, listen_direct: bool) {
    let (pooled, writer) = pooled::<S>(mode, listen_direct, push_only()).await;
    let handle = &pooled.handle;
    wait_until("operational (reads and push)", WAIT, || {
        handle.health().status == ComponentStatus::Operational
    })
    .await;
    let position = S::tighten(&writer, 2).await.unwrap();
    wait_until("pushed", Duration::from_secs(1), || handle.halted()).await;
    assert_eq!(handle.position(), Some(position));
}

/// Through pgbouncer in transaction mode with `LISTEN_DSN` pointing at the primary:
/// push works (polling at 1 h) and health is `operational`.
pub async fn push_through_the_listen_dsn_beside_a_transaction_pooler<S: SuiteHandleStore>() {
    pushed_through::<S>(crate::PoolMode::Transaction, true).await;
}

/// pgbouncer in session mode passes LISTEN: push works without a listen DSN.
pub async fn push_through_a_session_pooler<S: SuiteHandleStore>() {
    pushed_through::<S>(crate::PoolMode::Session, false).await;
}

/// Through pgbouncer in transaction mode without a listen DSN, notifications cannot
/// arrive: health says `degraded` with the reason ("push unavailable, polling every
/// 1s: … LISTEN_DSN …") instead of `operational`, and polling keeps the handle right.
pub async fn push_unavailable_through_a_transaction_pooler_is_reported<S: SuiteHandleStore>() {
    let (pooled, writer) =
        pooled::<S>(crate::PoolMode::Transaction, false, WatchConfig::default()).await;
    let handle = &pooled.handle;
    // The probe (a notification from another session) does not come back: degraded,
    // with what to do.
    wait_until("degraded: push unavailable, set LISTEN_DSN", WAIT, || {
        let h = handle.health();
        let details = h.details.unwrap_or_default();
        h.status == ComponentStatus::Degraded
            && details.contains("push unavailable")
            && details.contains("LISTEN_DSN")
    })
    .await;
    assert_eq!(
        handle.health().push,
        Some(false),
        "what failover_push_connected exports"
    );
    let position = S::tighten(&writer, 2).await.unwrap();
    wait_until(
        "polled within the poll interval",
        Duration::from_secs(3),
        || handle.halted(),
    )
    .await;
    assert_eq!(handle.position(), Some(position));
}

/// Expands to the named tests every PostgreSQL store with a handle runs behind
/// pgbouncer (see [`crate::suite`]).
#[macro_export]
macro_rules! pg_pooler_suite {
    ($suite:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pooler_transaction_mode_serves_concurrent_calls() {
            $crate::suite::transaction_pooler_serves_concurrent_calls::<$suite>().await;
        }
        #[tokio::test]
        async fn pooler_push_through_the_listen_dsn_beside_a_transaction_pooler() {
            $crate::suite::push_through_the_listen_dsn_beside_a_transaction_pooler::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn pooler_push_unavailable_through_a_transaction_pooler_is_reported() {
            $crate::suite::push_unavailable_through_a_transaction_pooler_is_reported::<$suite>()
                .await;
        }
        #[tokio::test]
        async fn pooler_push_through_a_session_pooler() {
            $crate::suite::push_through_a_session_pooler::<$suite>().await;
        }
    };
}
