//! `safetyctl migrate`: applies every control's migrations (kill switch, symbol modes,
//! fencing), each after failover-core's own, and says per control what it applied.
//! `--print-roles` prints the SQL that creates the roles of the authority model, for
//! a DBA to run where the migrating login may not create roles; it touches no database.

use crate::cli::{Failure, EXIT_FAILED};
use failover_core::postgres::{MigrationReport, PgStore, ROLES_SQL};

/// What migrating one control did, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ControlMigration {
    /// `kill_switch`, `symbol_mode` or `fencing`.
    pub control: &'static str,
    /// Versions this run applied.
    pub applied: Vec<i64>,
    /// Versions found already applied.
    pub already_applied: Vec<i64>,
    /// Why it failed (the control's settings or the database), with what to do.
    pub error: Option<String>,
}

impl ControlMigration {
    fn new(control: &'static str, result: Result<MigrationReport, Failure>) -> Self {
        match result {
            Ok(report) => Self {
                control,
                applied: report.applied,
                already_applied: report.already_applied,
                error: None,
            },
            Err(failure) => Self {
                control,
                applied: Vec::new(),
                already_applied: Vec::new(),
                error: Some(failure.message),
            },
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        match &self.error {
            Some(e) => format!("{:<12} FAIL  {e}", self.control),
            None if self.applied.is_empty() => format!(
                "{:<12} up to date (versions {} already applied)",
                self.control,
                list(&self.already_applied)
            ),
            None => format!(
                "{:<12} applied version(s) {}{}",
                self.control,
                list(&self.applied),
                if self.already_applied.is_empty() {
                    String::new()
                } else {
                    format!(" (already there: {})", list(&self.already_applied))
                }
            ),
        }
    }
}

async fn migrate_store<S>() -> Result<MigrationReport, Failure>
where
    S: PgStore,
    Failure: From<S::Error>,
{
    let store = S::from_env()?;
    Ok(store.migrate().await?)
}

/// Migrates every control with its settings from the environment
/// (`TRADEPULSE_POSTGRES__*`, or a control's own prefix where set). A control that
/// fails does not stop the others.
pub async fn migrate_all() -> Vec<ControlMigration> {
    vec![
        ControlMigration::new(
            "kill_switch",
            migrate_store::<killswitch::PostgresKillSwitchStore>().await,
        ),
        ControlMigration::new(
            "symbol_mode",
            migrate_store::<symbol_mode::PostgresSymbolModeStore>().await,
        ),
        ControlMigration::new(
            "fencing",
            migrate_store::<fencing::PostgresLeaseFencer>().await,
        ),
    ]
}

/// `safetyctl migrate [--print-roles]`.
pub async fn run(print_roles: bool, json: bool) -> Result<(), Failure> {
    if print_roles {
        print!("{ROLES_SQL}");
        return Ok(());
    }
    let results = migrate_all().await;
    if json {
        println!(
            "{}",
            serde_json::to_value(&results).unwrap_or(serde_json::Value::Null)
        );
    } else {
        for r in &results {
            println!("{}", r.line());
        }
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.control)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: format!(
                "migrating {} failed (see above); fix what the line says and run `safetyctl migrate` again (it is idempotent)",
                failed.join(", ")
            ),
        })
    }
}
