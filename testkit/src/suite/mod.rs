//! One PostgreSQL store suite, run by every PostgreSQL store of the family against
//! real servers: the guarantees that failover-core gives every store, tested once and
//! the same way for each — so that no store's copy can drift.
//!
//! A store's tests implement [`SuiteStore`] (and [`SuiteHandleStore`] when the store
//! has a hot-path handle) and expand the macros:
//!
//! ```text
//! tradepulse_testkit::pg_store_suite!(KillSwitchSuite);
//! tradepulse_testkit::pg_handle_suite!(KillSwitchSuite);
//! ```
//!
//! Each macro expands to named `#[tokio::test]`s:
//!
//! * [`pg_store_suite!`](crate::pg_store_suite): env settings with a hidden password,
//!   concurrent migrations, an unmigrated database, the append-only audit trail, an
//!   outage that fails fast and recovers on the same store object.
//! * [`pg_handle_suite!`](crate::pg_handle_suite): push to a handle in another pool
//!   (polling at 1 h), health on the **default** settings (`failed` with "connection
//!   refused" within 1 s of killing the primary while the hot path serves the last
//!   state, then `operational` again), a lossy asynchronous failover in both
//!   directions (a lost relaxation returns the running handle to the stricter state;
//!   a tightening on the new timeline reaches it by push although its position's
//!   counter is below the lost ones), and a planned switchover as an operator runs it
//!   (make the primary read-only, then promote the replica; push follows the new
//!   primary; health is not `operational` in between).

mod handle;
mod pooler;
mod store;

pub use handle::{
    default_settings_report_a_dead_primary_within_a_second,
    lossy_failover_lost_relaxation_halts_the_running_handle,
    lossy_failover_new_tightening_reaches_the_running_handle,
    planned_switchover_push_follows_the_new_primary, push_reaches_another_pool,
};
pub use pooler::{
    push_through_a_session_pooler, push_through_the_listen_dsn_beside_a_transaction_pooler,
    push_unavailable_through_a_transaction_pooler_is_reported,
    transaction_pooler_serves_concurrent_calls,
};
pub use store::{
    audit_trail_is_append_only, concurrent_migrations_apply_once, env_settings_hide_the_password,
    outage_fails_fast_and_recovers, unmigrated_database_says_run_migrations,
};

use super::{fast_settings, own_primary, Cluster};
use failover_core::health::ComponentHealth;
use failover_core::position::Position;
use failover_core::postgres::PgStore;
use failover_core::watcher::WatchConfig;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// A PostgreSQL store as the suite drives it.
#[async_trait::async_trait]
pub trait SuiteStore: Send + Sync + 'static {
    /// The store.
    type Store: PgStore<Error = Self::Error> + Debug + Send + Sync + 'static;
    /// Its error type.
    type Error: failover_core::control::ControlError + Debug + Send;
    /// Its append-only audit table.
    const AUDIT_TABLE: &'static str;

    /// A change that tightens safety (engage, a stricter mode, a lease grant); `n`
    /// makes each call's text unique. Returns the change's position.
    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Self::Error>;
    /// A change that relaxes safety (with a ticket). Returns the change's position.
    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Self::Error>;
    /// True when the error says the schema is missing and names the migrations.
    fn is_schema_missing(error: &Self::Error) -> bool;
    /// True when the error is the typed "unavailable" one.
    fn is_unavailable(error: &Self::Error) -> bool;
}

/// A running hot-path handle, as the suite observes it.
pub trait SuiteHandle: Send + Sync {
    /// True when the hot path says "halted" (or stricter than normal).
    fn halted(&self) -> bool;
    /// The handle's health component.
    fn health(&self) -> ComponentHealth;
    /// The position the handle holds.
    fn position(&self) -> Option<Position>;
}

/// A store with a hot-path handle.
pub trait SuiteHandleStore: SuiteStore {
    /// Starts a handle over `store` (its own pool) with `config`.
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle>;
}

const WAIT: Duration = Duration::from_secs(15);

/// How the stores under test reach the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through pgbouncer in transaction mode, with push's LISTEN going to the server
    /// directly (`LISTEN_DSN`), as a fleet behind a transaction pooler is configured.
    TransactionPooler,
}

/// A fresh database and how the stores reach it.
struct Db {
    cluster: Arc<Cluster>,
    name: String,
    bouncer: Option<super::PgBouncer>,
}

impl Db {
    /// On the binary's shared cluster (`shared`) or one of its own (faults).
    async fn new(route: Route, shared: bool) -> Self {
        let (cluster, name) = if shared {
            super::shared_primary().await.expect("cluster")
        } else {
            let (cluster, name) = own_primary().await.expect("cluster");
            (Arc::new(cluster), name)
        };
        let bouncer = match route {
            Route::Direct => None,
            Route::TransactionPooler => Some(
                cluster
                    .pgbouncer(super::PoolMode::Transaction)
                    .await
                    .expect("pgbouncer"),
            ),
        };
        Self {
            cluster,
            name,
            bouncer,
        }
    }

    /// The server's own DSN (for checks beside the store).
    fn direct(&self) -> String {
        self.cluster.primary().dsn(&self.name)
    }

    /// Fast settings along the route.
    fn settings(&self) -> failover_core::postgres::PgSettingsBuilder {
        match &self.bouncer {
            None => fast_settings(&self.direct()),
            Some(bouncer) => fast_settings(&bouncer.dsn(&self.name)).with_listen_dsn(self.direct()),
        }
    }

    /// A store along the route, not migrated.
    fn bare<S: SuiteStore>(&self) -> S::Store {
        S::Store::new(self.settings().build().expect("settings")).expect("store")
    }

    /// A migrated store along the route.
    async fn store<S: SuiteStore>(&self) -> S::Store {
        let store = self.bare::<S>();
        store.migrate().await.expect("migrate");
        store
    }
}

fn push_only() -> WatchConfig {
    WatchConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}
