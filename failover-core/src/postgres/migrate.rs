//! Embedded, versioned, idempotent migrations, safe when several nodes start at once.
//!
//! Each crate embeds its `migrations/postgres/*.sql` files as a `&[Migration]` and
//! calls [`migrate`]. Applied versions are recorded per component in
//! `failover_core_migrations` together with a checksum of the SQL, so an edited
//! migration is detected instead of silently skipped. All of it runs in one
//! transaction under a transaction-scoped advisory lock, so nodes starting together
//! apply each migration exactly once and a failure leaves nothing half-applied.

use super::pool::PgPool;
use crate::errors::DbError;

/// One migration: a version, a name and its SQL (usually `include_str!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Strictly increasing per component.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    /// The SQL, may hold several statements.
    pub sql: &'static str,
}

impl Migration {
    /// A migration.
    pub const fn new(version: i64, name: &'static str, sql: &'static str) -> Self {
        Self { version, name, sql }
    }

    /// FNV-1a of the SQL text, to detect edits after application.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the schema was already current).
    pub applied: Vec<i64>,
    /// Versions found already applied.
    pub already_applied: Vec<i64>,
}

/// The key of the advisory lock that serialises migrations (8390876139571148140:
/// "tradepul").
const LOCK_KEY: i64 = 0x7472_6164_6570_756c;

const BOOTSTRAP: &str = "CREATE TABLE IF NOT EXISTS failover_core_migrations (
    component  TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    name       TEXT        NOT NULL,
    checksum   TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)";

/// failover-core's own migrations (component `failover_core`): the SQL functions
/// every store shares, such as `failover_next_position`. [`migrate`] applies them
/// before a store's own.
pub const CORE_MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "positions",
        include_str!("../../migrations/postgres/0001_positions.sql"),
    ),
    Migration::new(2, "roles", ROLES_SQL),
    Migration::new(
        3,
        "append_only",
        include_str!("../../migrations/postgres/0003_append_only.sql"),
    ),
    Migration::new(
        4,
        "audit_log",
        include_str!("../../migrations/postgres/0004_audit_log.sql"),
    ),
    Migration::new(
        5,
        "approvals",
        include_str!("../../migrations/postgres/0005_approvals.sql"),
    ),
    Migration::new(
        6,
        "scopes",
        include_str!("../../migrations/postgres/0006_scopes.sql"),
    ),
    Migration::new(
        7,
        "receipts",
        include_str!("../../migrations/postgres/0007_receipts.sql"),
    ),
    Migration::new(
        8,
        "approval_expiry",
        include_str!("../../migrations/postgres/0008_approval_expiry.sql"),
    ),
    Migration::new(
        9,
        "control_registry",
        include_str!("../../migrations/postgres/0009_control_registry.sql"),
    ),
];

/// The roles of the operators' authority model (`tradepulse_viewer`,
/// `tradepulse_operator`, `tradepulse_supervisor`, `tradepulse_service`) and the
/// function that decides a command's authority from them. Applied by every
/// migration; a DBA can run it by hand where the migrating login may not create
/// roles (`safetyctl migrate --print-roles` prints it).
pub const ROLES_SQL: &str = include_str!("../../migrations/postgres/0002_roles.sql");

/// How long a node waits for another node's migration to finish before giving up.
pub(crate) const MIGRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Applies failover-core's [`CORE_MIGRATIONS`], then every migration of `component`
/// not yet applied, under the pool's retry policy (the whole transaction is retried,
/// which is safe because it either committed or left nothing behind).
///
/// Nodes starting together serialize on one advisory lock. A node never waits on
/// that lock inside a statement (the pool's `lock_timeout`, 500 ms by default, would
/// cancel it while another node's migration runs longer): it tries the lock, and
/// while another node holds it, ends its transaction and tries again with jittered
/// backoff, for up to 60 s; then it finds the migrations applied.
pub async fn migrate(
    pool: &PgPool,
    component: &'static str,
    migrations: &'static [Migration],
) -> Result<MigrationReport, DbError> {
    for pair in migrations.windows(2) {
        assert!(
            pair[0].version < pair[1].version,
            "migrations of {component} must have strictly increasing versions"
        );
    }
    let deadline = tokio::time::Instant::now() + MIGRATION_WAIT;
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        if let Some(report) = migrate_once(pool, component, migrations).await? {
            return Ok(report);
        }
        if tokio::time::Instant::now() + wait > deadline {
            return Err(DbError::new(
                crate::errors::DbErrorKind::Locked,
                "migrate",
                None,
                format!(
                    "another node has held the migration lock for {}: is a migration stuck? \
                     look for a session running one (pg_locks, advisory lock {LOCK_KEY}) and end it",
                    humantime::format_duration(MIGRATION_WAIT)
                ),
            ));
        }
        tokio::time::sleep(crate::retry::jittered(wait)).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
    }
}

/// One attempt: `None` when another node holds the migration lock.
async fn migrate_once(
    pool: &PgPool,
    component: &'static str,
    migrations: &'static [Migration],
) -> Result<Option<MigrationReport>, DbError> {
    pool.run("migrate", |client| {
        Box::pin(async move {
            let tx = begin(client).await?;
            // The migrations' `DROP … IF EXISTS` and `CREATE … IF NOT EXISTS` make the
            // server send a NOTICE each time ("trigger … does not exist, skipping"),
            // which the connection would log on every start: only warnings and errors
            // are wanted from a migration. SET LOCAL ends with the transaction.
            tx.batch_execute("SET LOCAL client_min_messages = warning")
                .await?;
            let locked: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
                .await?
                .get(0);
            if !locked {
                // Another node is migrating: end this transaction and try again.
                tx.rollback().await?;
                return Ok(None);
            }
            tx.batch_execute(BOOTSTRAP).await?;
            let mut report = MigrationReport {
                applied: Vec::new(),
                already_applied: Vec::new(),
            };
            apply_set(&tx, "failover_core", CORE_MIGRATIONS, None).await?;
            apply_set(&tx, component, migrations, Some(&mut report)).await?;
            tx.commit().await?;
            if !report.applied.is_empty() {
                tracing::info!(component, applied = ?report.applied, "migrations applied");
            }
            Ok(Some(report))
        })
    })
    .await
}

/// Applies the migrations of one component not yet applied, inside `tx`.
async fn apply_set(
    tx: &RawTx<'_>,
    component: &'static str,
    migrations: &'static [Migration],
    mut report: Option<&mut MigrationReport>,
) -> Result<(), tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT version, checksum FROM failover_core_migrations WHERE component = $1",
            &[&component],
        )
        .await?;
    let done: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for m in migrations {
        match done.iter().find(|(v, _)| *v == m.version) {
            Some((_, sum)) => {
                if *sum != m.checksum() {
                    tracing::error!(
                        component,
                        version = m.version,
                        "applied migration was edited afterwards"
                    );
                }
                if let Some(report) = report.as_deref_mut() {
                    report.already_applied.push(m.version);
                }
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                            "INSERT INTO failover_core_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                            &[&component, &m.version, &m.name, &m.checksum()],
                        )
                        .await?;
                if let Some(report) = report.as_deref_mut() {
                    report.applied.push(m.version);
                }
            }
        }
    }
    Ok(())
}

/// Begins a transaction on a shared pooled client (`&Object`):
/// `tokio_postgres::Transaction` wants `&mut Client`.
pub(crate) async fn begin(
    client: &tokio_postgres::Client,
) -> Result<RawTx<'_>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    Ok(RawTx { client })
}

/// A transaction on a shared client; rolled back when the connection is discarded
/// (the pool discards a connection whose operation failed or was cut).
pub(crate) struct RawTx<'a> {
    client: &'a tokio_postgres::Client,
}

impl std::ops::Deref for RawTx<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client
    }
}

impl RawTx<'_> {
    pub(crate) async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("COMMIT").await
    }

    /// Ends the transaction without a trace, leaving the connection fit for reuse.
    pub(crate) async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("ROLLBACK").await
    }
}
