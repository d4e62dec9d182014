//! failover-core's shared PostgreSQL store suite, run by the lease store: settings,
//! migrations, the append-only lease trail and an outage on real servers. "Tighten"
//! grants a lease (its token is the change's position); "relax" grants and releases
//! one. Fencing has no hot-path handle, so the handle suite does not apply.

use failover_core::Position;
use std::time::Duration;
use tradepulse_fencing::{Error, LeaseFencer, PostgresLeaseFencer};
use tradepulse_testkit::suite::SuiteStore;

struct FencingSuite;

#[async_trait::async_trait]
impl SuiteStore for FencingSuite {
    type Store = PostgresLeaseFencer;
    type Error = Error;
    const AUDIT_TABLE: &'static str = "fencing_lease_events";

    async fn tighten(store: &Self::Store, n: u32) -> Result<Position, Error> {
        let lease = store
            .acquire(&format!("suite-{n}"), "node-a", Duration::from_secs(30))
            .await?;
        Ok(Position(lease.token()))
    }

    async fn relax(store: &Self::Store, n: u32) -> Result<Position, Error> {
        let lease = store
            .acquire(&format!("suite-{n}"), "node-a", Duration::from_secs(30))
            .await?;
        store.release(&lease).await?;
        Ok(Position(lease.token()))
    }

    fn is_schema_missing(error: &Error) -> bool {
        matches!(error, Error::SchemaMissing { .. })
    }

    fn is_unavailable(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }
}

tradepulse_testkit::pg_store_suite!(FencingSuite);
