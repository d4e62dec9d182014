//! failover-core's shared PostgreSQL store suite, run by the scope control: settings,
//! migrations, the append-only `scope_events` trail, outages, push to another pool,
//! health on the default settings, lossy failovers, a planned switchover and
//! pgbouncer — all on real servers.
//!
//! "Tighten" sets the desk `acme/eq` to `HALTED` as an operator; "relax" sets it to
//! `CANCEL_ONLY` as a supervisor with a ticket — one step down from `HALTED`, the only
//! relaxation the ladder allows from there (from any other mode the same call is a
//! tightening and applies as well, so any order of calls is valid). The desk and its
//! leaf `acme/eq/mm-1` are created on first use, as an operator registers them. The
//! handle is a [`ScopeModes`] over the store whose root is a [`KillSwitch`] on the
//! same database and settings; it counts as halted when a gate on the leaf answers
//! `HALTED`.

use failover_core::{ComponentHealth, Position, WatchConfig};
use std::sync::{Arc, Mutex};
use tradepulse_killswitch::scope::{
    Error, ScopeGate, ScopeModes, ScopeRefusal, ScopeSnapshotState,
};
use tradepulse_killswitch::{
    Audit, Authority, KillSwitch, PostgresKillSwitchStore, PostgresScopeStore, ScopeMode,
    ScopePath, ScopeStore,
};
use tradepulse_testkit::suite::{SuiteHandle, SuiteHandleStore, SuiteStore};

/// The scope the suite tightens and relaxes.
const DESK: &str = "acme/eq";
/// A leaf under it, where the handle's gate sits.
const LEAF: &str = "acme/eq/mm-1";

/// Creates `acme`, `acme/eq` and `acme/eq/mm-1` where missing. A creation raced by
/// another call of the suite is [`ScopeRefusal::AlreadyExists`]: the scope is there, which is
/// all this asks.
async fn ensure_desk(store: &PostgresScopeStore) -> Result<(), Error> {
    if store.scope(LEAF).await?.is_some() {
        return Ok(());
    }
    for path in ["acme", DESK, LEAF] {
        let audit =
            Audit::new("suite:ops", format!("register {path}")).with_authority(Authority::Operator);
        match store
            .create_scope(&ScopePath::parse(path).expect("canonical"), &audit)
            .await
        {
            Ok(_) | Err(Error::Control(ScopeRefusal::AlreadyExists { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct ScopeSuite;

#[async_trait::async_trait]
impl SuiteStore for ScopeSuite {
    type Store = PostgresScopeStore;
    type Error = Error;
    const AUDIT_TABLE: &'static str = "scope_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Error> {
        ensure_desk(store).await?;
        let audit =
            Audit::new("suite:ops", format!("halt {n}")).with_authority(Authority::Operator);
        Ok(store
            .set_scope_mode(DESK, ScopeMode::Halted, &audit)
            .await?
            .position)
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Error> {
        ensure_desk(store).await?;
        let audit = Audit::new("suite:supervisor", format!("resume {n}"))
            .with_authority(Authority::Supervisor)
            .with_ticket("CHG-1");
        Ok(store
            .set_scope_mode(DESK, ScopeMode::CancelOnly, &audit)
            .await?
            .position)
    }

    fn is_schema_missing(error: &Error) -> bool {
        matches!(error, Error::SchemaMissing { .. })
    }

    fn is_unavailable(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }
}

/// A [`ScopeModes`] and its root. The gate on the leaf is made once the handle holds
/// the leaf (the suite starts handles before the first change creates it).
struct Handle {
    modes: ScopeModes,
    root: KillSwitch,
    gate: Mutex<Option<ScopeGate>>,
}

impl Handle {
    fn gate(&self) -> Option<ScopeGate> {
        let mut gate = self.gate.lock().expect("gate lock");
        if gate.is_none() {
            *gate = self.modes.gate(&[LEAF]).ok();
        }
        gate.clone()
    }
}

impl SuiteHandle for Handle {
    fn halted(&self) -> bool {
        match self.gate() {
            Some(gate) => gate.mode() == ScopeMode::Halted,
            // No leaf yet: only the root (or a handle that loaded nothing) halts it.
            None => {
                let status = self.modes.status();
                status.state == ScopeSnapshotState::NotLoaded || status.root == ScopeMode::Halted
            }
        }
    }

    fn health(&self) -> ComponentHealth {
        self.modes.health()
    }

    /// The position of the scope feed the handle holds, once both the scopes and the
    /// root are loaded (before that every gate answers `HALTED`).
    fn position(&self) -> Option<Position> {
        let status = self.modes.status();
        let loaded =
            status.state != ScopeSnapshotState::NotLoaded && self.root.status().state.is_some();
        loaded.then_some(status.position)
    }
}

impl SuiteHandleStore for ScopeSuite {
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle> {
        // The root reads the same database through the same pool and settings, and
        // watches with the same config: a push-only handle stays push-only.
        let root_store = Arc::new(PostgresKillSwitchStore::from_pool(store.pool().clone()));
        let root = KillSwitch::spawn(root_store, config.clone());
        let modes = ScopeModes::spawn(store, root.clone(), config);
        Box::new(Handle {
            modes,
            root,
            gate: Mutex::new(None),
        })
    }
}

tradepulse_testkit::pg_store_suite!(ScopeSuite);
tradepulse_testkit::pg_handle_suite!(ScopeSuite);
tradepulse_testkit::pg_pooler_suite!(ScopeSuite);
