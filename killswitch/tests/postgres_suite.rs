//! failover-core's shared PostgreSQL store suite, run by the kill switch: settings,
//! migrations, the append-only trail, outages, push to another pool, health on the
//! default settings, lossy failovers and a planned switchover — all on real servers.

use failover_core::{ComponentHealth, Position, WatchConfig};
use std::sync::Arc;
use tradepulse_killswitch::{Audit, Error, KillSwitch, KillSwitchStore, PostgresKillSwitchStore};
use tradepulse_testkit::suite::{SuiteHandle, SuiteHandleStore, SuiteStore};

struct KillSwitchSuite;

#[async_trait::async_trait]
impl SuiteStore for KillSwitchSuite {
    type Store = PostgresKillSwitchStore;
    type Error = Error;
    const AUDIT_TABLE: &'static str = "kill_switch_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Error> {
        Ok(store
            .engage(&Audit::new("suite:ops", format!("halt {n}")))
            .await?
            .position)
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Error> {
        let audit = Audit::new("suite:ops", format!("resume {n}")).with_ticket("CHG-1");
        Ok(store.disengage(&audit).await?.position)
    }

    fn is_schema_missing(error: &Error) -> bool {
        matches!(error, Error::SchemaMissing { .. })
    }

    fn is_unavailable(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }
}

struct Handle(KillSwitch);

impl SuiteHandle for Handle {
    fn halted(&self) -> bool {
        self.0.is_halted()
    }
    fn health(&self) -> ComponentHealth {
        self.0.health()
    }
    fn position(&self) -> Option<Position> {
        self.0.status().state.map(|s| s.position)
    }
}

impl SuiteHandleStore for KillSwitchSuite {
    fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle> {
        Box::new(Handle(KillSwitch::spawn(store, config)))
    }
}

tradepulse_testkit::pg_store_suite!(KillSwitchSuite);
tradepulse_testkit::pg_handle_suite!(KillSwitchSuite);
tradepulse_testkit::pg_pooler_suite!(KillSwitchSuite);
