//! The commands. Exit codes: 0 done; 2 refused (bad input, ticket missing,
//! transition forbidden, not the login's authority, the state moved since it was
//! read, a replay superseded or reused, an unknown symbol — nothing changed); 3
//! not done now, nothing written, safe to retry: unavailable within the retry budget,
//! or the row locked by another session (named, with the statement that ends it); 1
//! anything else (schema missing, a database error); 4 pending approval: the
//! relaxation waits for a second supervisor (`safetyctl approvals approve ID`),
//! nothing changed yet; 6 written, but not confirmed by every live process within
//! `--wait`'s timeout ([`crate::receipt`]). Every error says what to do.
//!
//! Authority is the database login's: the CLI claims supervisor authority and the
//! database grants what the login holds (roles `tradepulse_operator`,
//! `tradepulse_supervisor`). The actor is the login unless the login holds
//! `tradepulse_service` and `--actor` names someone else. A relaxation reads the state
//! first, prints what it is about to relax, and applies only while the state is still
//! the one it printed.

use crate::controls;
use crate::export::{self, Format};
use clap::{Args, Parser, Subcommand};
use failover_core::postgres::PgStore;
use failover_core::{Audit, Position};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use symbol_mode::SymbolMode;

/// The operators' CLI: talks to PostgreSQL directly with the services' settings
/// (`TRADEPULSE_POSTGRES__DSN` for every control, or a control's own
/// `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN`, `TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN`,
/// `TRADEPULSE_FENCING_POSTGRES__DSN`, and their `__TLS__*`, `__RETRY_BUDGET` …), so
/// it works when every service is down.
#[derive(Debug, Parser)]
#[command(name = "safetyctl", version, about, long_about = None)]
pub struct Cli {
    /// Common flags.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags of every command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Who acts, for the audit trail (default: the database login). Only a login
    /// holding `tradepulse_service` may name someone else.
    #[arg(long, global = true)]
    pub actor: Option<String>,
    /// The request's idempotency key, to retry a command whose answer was lost: the
    /// same key answers the original result while it is in force (default: new).
    #[arg(long, global = true)]
    pub request_id: Option<uuid::Uuid>,
    /// Why (required for every change).
    #[arg(long, global = true)]
    pub reason: Option<String>,
    /// Incident or change ticket (required to relax safety).
    #[arg(long, global = true)]
    pub ticket: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Reading commands (`show`, `history`, `symbols list`, `audit export`) may answer
    /// from a standby — during a promotion, or through a DSN naming a replica — and say
    /// on stderr which server answered and its replay lag.
    #[arg(long, global = true)]
    pub allow_standby: bool,
    /// Relax at once although the action requires a second supervisor's approval:
    /// marked in the audit event, counted, logged, and listed by `approvals review`
    /// until another supervisor acknowledges it.
    #[arg(long, global = true)]
    pub break_glass: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The global kill switch.
    KillSwitch {
        /// show | engage | disengage | history
        #[command(subcommand)]
        action: KillSwitchCmd,
    },
    /// A symbol's mode.
    Mode {
        /// show SYMBOL | set SYMBOL MODE
        #[command(subcommand)]
        action: ModeCmd,
    },
    /// The global mode (applies to every symbol).
    GlobalMode {
        /// show | set MODE
        #[command(subcommand)]
        action: GlobalModeCmd,
    },
    /// `CancelAll(symbol)`: every engine cancels the symbol's working orders.
    CancelAll {
        /// The symbol, e.g. BTC-USD.
        symbol: String,
    },
    /// The symbol registry: mode changes and `CancelAll` address registered symbols.
    Symbols {
        /// add SYMBOL… | list | import FILE
        #[command(subcommand)]
        action: SymbolsCmd,
    },
    /// A symbol's order-rate throttle: new orders a second per process, and a burst.
    Throttle {
        /// set SYMBOL RATE (with --burst N), clear SYMBOL, or show
        #[command(subcommand)]
        action: crate::throttle::ThrottleCmd,
    },
    /// Scoped controls: halt a desk, a strategy, an account or a venue (a node of the
    /// firm's trees, under the kill switch).
    Scope {
        /// create PATH | set PATH MODE | show PATH | tree, optionally under PATH | history PATH
        #[command(subcommand)]
        action: crate::scope::ScopeCmd,
    },
    /// `WithdrawalsHalt(on/off)`.
    Withdrawals {
        /// halt | lift
        #[command(subcommand)]
        action: WithdrawalsCmd,
    },
    /// New strategy activations, halted or enabled firm-wide (`NewStrategiesHalt`).
    Strategies {
        /// disable-new | enable-new | show
        #[command(subcommand)]
        action: crate::strategies::StrategiesCmd,
    },
    /// Four eyes before a safety control is relaxed.
    Approvals {
        /// require | waive | list | policy | review | events | approve | reject | acknowledge
        #[command(subcommand)]
        action: crate::approvals::ApprovalsCmd,
    },
    /// Leases (fencing).
    Lease {
        /// show RESOURCE
        #[command(subcommand)]
        action: LeaseCmd,
    },
    /// The audit trail.
    Audit {
        /// export
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Applies every control's migrations (kill switch, symbol modes, fencing).
    Migrate {
        /// Print the SQL that creates the roles (for a DBA); touches no database.
        #[arg(long)]
        print_roles: bool,
    },
    /// Checks whether the database is ready for the controls; exit 0 only when all pass.
    Doctor,
    /// The failover drill on throw-away local clusters; writes evidence files.
    #[cfg(feature = "drill")]
    Drill {
        /// Synchronous replication (no acknowledged write may be lost).
        #[arg(long)]
        sync: bool,
        /// Where the evidence goes.
        #[arg(long, default_value = crate::evidence::DEFAULT_DIR)]
        report_dir: PathBuf,
    },
}

/// Kill switch commands.
#[derive(Debug, Subcommand)]
pub enum KillSwitchCmd {
    /// The persisted state (the `kill_switch_state` row).
    Show,
    /// Stop trading (`--reason` required, `--ticket` optional).
    Engage {
        /// `--wait [--timeout 5s]`: until every live engine applied it.
        #[command(flatten)]
        wait: crate::receipt::WaitArgs,
    },
    /// Resume trading (`--reason` and `--ticket` required).
    Disengage,
    /// Audit events, newest first.
    History {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// Symbol mode commands.
#[derive(Debug, Subcommand)]
pub enum ModeCmd {
    /// The symbol's own, global and effective mode.
    Show {
        /// The symbol.
        symbol: String,
    },
    /// `SetSymbolMode` (relaxing needs `--ticket`).
    Set {
        /// The symbol.
        symbol: String,
        /// NORMAL | CANCEL_ONLY | SOFT_HALT | HARD_HALT
        mode: SymbolMode,
        /// `--wait [--timeout 5s]`: until every live engine applied it.
        #[command(flatten)]
        wait: crate::receipt::WaitArgs,
    },
}

/// Global mode commands.
#[derive(Debug, Subcommand)]
pub enum GlobalModeCmd {
    /// The global mode and the withdrawals halt.
    Show,
    /// Sets the global mode (relaxing needs `--ticket`).
    Set {
        /// NORMAL | CANCEL_ONLY | SOFT_HALT | HARD_HALT
        mode: SymbolMode,
    },
}

/// Symbol registry commands.
#[derive(Debug, Subcommand)]
pub enum SymbolsCmd {
    /// Registers symbols (audited; an operator may). One canonical spelling each:
    /// case and `-_./:` are ignored when comparing.
    Add {
        /// The symbols, e.g. BTC-USD ETH-USD.
        #[arg(required = true)]
        symbols: Vec<String>,
    },
    /// The registered symbols.
    List,
    /// Registers every symbol of a file, one per line (blank lines and `#` comments
    /// skipped).
    Import {
        /// The file.
        file: PathBuf,
    },
}

/// Withdrawals commands.
#[derive(Debug, Subcommand)]
pub enum WithdrawalsCmd {
    /// Halt withdrawals.
    Halt,
    /// Lift the halt (`--ticket` required).
    Lift,
}

/// Lease commands.
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// The current lease of a resource.
    Show {
        /// The resource.
        resource: String,
    },
}

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Every control's audit events once each (those whose DSN is set), with the
    /// SHA-256 of the export printed. JSONL (the default) is the tamper-evident log:
    /// one line per log entry in index order with the event's fields, its canonical
    /// entry and the leaf hash recorded when it was appended, then the tree head; only
    /// JSONL verifies (`audit verify`). CSV is the events for a spreadsheet, approvals
    /// (four eyes) included, one row per log entry. CSV and `--since` read every
    /// database the controls use once (equal DSNs are one database), in the order kill
    /// switch, symbol modes, fencing, and within a database in log index order (the
    /// order the events were committed), not sorted by time.
    Export {
        /// Only events at or after this time (RFC 3339, e.g. 2025-01-31T00:00:00Z). A
        /// JSONL export with `--since` holds the events alone (no leaf hashes, no tree
        /// head) and does not verify: only a whole-log export does.
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        /// jsonl | csv
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Verifies a JSONL export offline (no database): every entry hashes to the leaf
    /// recorded at append time, indices run 0, 1, 2 … and the leaves hash to the tree
    /// head. Prints `ok: N entries, root …`, or names the first bad index and what is
    /// wrong (`edited`, `missing`, `reordered`, `wrong root`) and exits 5. With
    /// `--checkpoint` and `--public-key`, the export must also extend that signed
    /// checkpoint (exit 5 when the signature is by another key or the history differs).
    Verify {
        /// The export (`audit export --format jsonl`).
        file: PathBuf,
        /// A checkpoint note (`audit checkpoint`) the export must extend.
        #[arg(long, requires = "public_key")]
        checkpoint: Option<PathBuf>,
        /// The public key the checkpoint is signed with (PEM, as `openssl pkey -in
        /// key.pem -pubout` writes it).
        #[arg(long, requires = "checkpoint")]
        public_key: Option<PathBuf>,
        /// An export taken with or before the checkpoint: when the new export does
        /// not extend the checkpoint, names the first differing index and the
        /// checkpointed entries it lacks.
        #[arg(long, requires = "checkpoint")]
        previous: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Signs the audit log's current tree head as a checkpoint (a C2SP signed note)
    /// with an Ed25519 key that never enters the database. Keep the notes elsewhere:
    /// `audit verify --checkpoint` proves a later export extends them.
    Checkpoint {
        /// The private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519 -out
        /// key.pem` writes it).
        #[arg(long)]
        key: PathBuf,
        /// Write the note here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The log's name in the note (default `tradepulse/<host>/<database>`).
        #[arg(long)]
        origin: Option<String>,
        /// The key's name in the signature line (default: the origin).
        #[arg(long)]
        key_name: Option<String>,
    },
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}; give an RFC 3339 time like 2025-01-31T00:00:00Z"))
}

/// Exit code: done.
pub const EXIT_OK: i32 = failover_core::control::exit::OK;
/// Exit code: anything else (schema missing, database error).
pub const EXIT_FAILED: i32 = failover_core::control::exit::FAILED;
/// Exit code: refused, nothing changed.
pub const EXIT_REFUSED: i32 = failover_core::control::exit::REFUSED;
/// Exit code: unavailable within the retry budget.
pub const EXIT_UNAVAILABLE: i32 = failover_core::control::exit::UNAVAILABLE;
/// Exit code: pending approval — the relaxation waits for a second supervisor;
/// nothing changed yet.
pub const EXIT_PENDING: i32 = failover_core::control::exit::PENDING;

/// A failed command: its exit code and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// The message (says what to do).
    pub message: String,
}

impl Failure {
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
}

/// Every control's store error exits with the code its outcome decides
/// ([`failover_core::Outcome::exit_code`]), saying what happened and what to do.
impl<E: failover_core::ControlError> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: e.outcome().exit_code(),
            message: e.to_string(),
        }
    }
}

/// The default actor: `user@host` of the OS.
pub fn default_actor() -> String {
    let user = whoami::username().unwrap_or_else(|_| "unknown".into());
    let host = whoami::hostname().unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

impl Global {
    /// The audit of a change made through `store`: the actor is `--actor` or the
    /// store's database login.
    pub(crate) fn audit<S: PgStore>(&self, store: &S) -> Result<Audit, Failure> {
        let reason = self.reason.as_deref().ok_or_else(|| {
            Failure::refused("refused, nothing changed: --reason is required for every change: say why (e.g. --reason \"runaway algo\")")
        })?;
        let actor = match (&self.actor, store.pool().settings().user()) {
            (Some(actor), _) => actor.clone(),
            (None, Some(login)) => login.to_owned(),
            (None, None) => default_actor(),
        };
        let mut audit = Audit::new(actor, reason);
        if let Some(t) = &self.ticket {
            audit = audit.with_ticket(t);
        }
        if let Some(id) = self.request_id {
            audit = audit.with_request_id(id);
        }
        if self.break_glass {
            audit = audit.breaking_glass();
        }
        Ok(audit)
    }
}

/// Says on stderr what a relaxation is about to relax, and makes it conditional on
/// that state: when it moved in between, the store refuses (exit 2) naming the change.
pub(crate) fn relaxing(audit: Audit, what: String, position: Position) -> Audit {
    eprintln!("about to relax: {what} (position {position})");
    audit.expecting(position)
}

pub(crate) fn set_by(by: &str, at: SystemTime) -> String {
    if by.is_empty() {
        String::from("initial state")
    } else {
        format!("set by {by} at {}", time(at))
    }
}

/// True when the control with env prefix `prefix` has a DSN: its own or the shared
/// `TRADEPULSE_POSTGRES__DSN`, by the stores' own rule.
fn env_set(prefix: &str) -> bool {
    failover_core::postgres::PgSettings::dsn_variable(prefix, |k| std::env::var(k).ok()).is_some()
}

/// The store a reading command uses: as it is, or with `--allow-standby` on a pool
/// that also accepts a standby, saying on stderr which server answered (a standby
/// with its replay lag: its answer may be behind the primary's).
pub(crate) async fn reading<S: PgStore>(
    store: Arc<S>,
    allow_standby: bool,
) -> Result<Arc<S>, Failure> {
    if !allow_standby {
        return Ok(store);
    }
    let pool = store
        .pool()
        .read_only_from_standby()
        .map_err(|e| Failure::refused(e.to_string()))?;
    let answered = pool.answered_by().await.map_err(|e| Failure {
        code: EXIT_UNAVAILABLE,
        message: format!("no server answered: {e}"),
    })?;
    eprintln!("{answered}");
    Ok(Arc::new(S::from_pool(pool)))
}

pub(crate) fn kill_store() -> Result<Arc<killswitch::PostgresKillSwitchStore>, Failure> {
    Ok(Arc::new(killswitch::PostgresKillSwitchStore::from_env()?))
}

pub(crate) fn mode_store() -> Result<Arc<symbol_mode::PostgresSymbolModeStore>, Failure> {
    Ok(Arc::new(symbol_mode::PostgresSymbolModeStore::from_env()?))
}

pub(crate) fn lease_store() -> Result<Arc<fencing::PostgresLeaseFencer>, Failure> {
    Ok(Arc::new(fencing::PostgresLeaseFencer::from_env()?))
}

/// What a command printed: text for people, JSON with `--json`.
pub(crate) fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let g = cli.global;
    match cli.command {
        Command::KillSwitch { action } => controls::kill_switch(&g, action).await?,
        Command::Mode { action } => controls::mode(&g, action).await?,
        Command::GlobalMode { action } => controls::global_mode(&g, action).await?,
        Command::CancelAll { symbol } => controls::cancel_all(&g, symbol).await?,
        Command::Withdrawals { action } => controls::withdrawals(&g, action).await?,
        Command::Symbols { action } => controls::symbols(&g, action).await?,
        Command::Throttle { action } => crate::throttle::run(&g, action).await?,
        Command::Scope { action } => crate::scope::run(&g, action).await?,
        Command::Strategies { action } => crate::strategies::run(&g, action).await?,
        Command::Approvals { action } => crate::approvals::run(&g, action).await?,
        Command::Lease {
            action: LeaseCmd::Show { resource },
        } => controls::lease(&g, resource).await?,
        Command::Audit { action } => audit(&g, action).await?,
        Command::Migrate { print_roles } => crate::migrate::run(print_roles, g.json).await?,
        Command::Doctor => crate::doctor::run(g.json).await?,
        #[cfg(feature = "drill")]
        Command::Drill { sync, report_dir } => drill(&g, sync, report_dir).await?,
    }
    Ok(())
}

/// `audit export|verify|checkpoint`.
async fn audit(g: &Global, action: AuditCmd) -> Result<(), Failure> {
    match action {
        AuditCmd::Export {
            since: None,
            format: Format::Jsonl,
            out,
            quiet,
        } => {
            let pool = audit_pool(g.allow_standby).await?;
            let controls: Vec<&str> = [
                (killswitch::postgres::ENV_PREFIX, "kill_switch"),
                (killswitch::postgres::ENV_PREFIX, "scope"),
                (symbol_mode::postgres::ENV_PREFIX, "symbol_mode"),
                (fencing::postgres::ENV_PREFIX, "lease"),
            ]
            .into_iter()
            .filter(|(prefix, _)| env_set(prefix))
            .map(|(_, control)| control)
            .collect();
            crate::verify::export_log(&pool, &controls, g.json, quiet, out).await?;
        }
        AuditCmd::Export {
            since,
            format,
            out,
            quiet,
        } => {
            if since.is_some() && format == Format::Jsonl {
                eprintln!("note: with --since the export holds the events alone, without the log's leaf hashes and tree head: `audit verify` checks only a whole-log export (omit --since)");
            }
            audit_export(g, since, format, out, quiet).await?
        }
        AuditCmd::Verify {
            file,
            checkpoint,
            public_key,
            previous,
            quiet,
        } => crate::verify::verify(
            &file,
            crate::verify::VerifyArgs {
                checkpoint,
                public_key,
                previous,
            },
            g.json,
            quiet,
        )?,
        AuditCmd::Checkpoint {
            key,
            out,
            origin,
            key_name,
        } => {
            let pool = audit_pool(false).await?;
            crate::verify::checkpoint(&pool, &key, out, origin, key_name, g.json).await?;
        }
    }
    Ok(())
}

/// `drill [--sync] [--report-dir DIR]`.
#[cfg(feature = "drill")]
async fn drill(g: &Global, sync: bool, report_dir: PathBuf) -> Result<(), Failure> {
    let config = crate::drill::DrillConfig {
        synchronous: sync,
        ..Default::default()
    };
    let json = g.json;
    // On a terminal a bar over the drill's steps (its lines print above it); in a
    // pipe, a file or with --json the lines alone (or nothing).
    let bar = crate::verify::progress_bar(crate::drill::STEPS, "steps", json);
    let report = crate::drill::run(config, |line| {
        if bar.is_hidden() {
            if !json {
                println!("   {line}");
            }
        } else {
            bar.println(format!("   {line}"));
            bar.inc(1);
        }
    })
    .await;
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure { code: EXIT_FAILED, message: format!("drill failed: {e}; PostgreSQL server binaries are needed (Debian: apt-get install postgresql)") })?;
    let evidence = report.write_evidence(&report_dir).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!(
            "writing evidence into {}: {e}; give a writable --report-dir",
            report_dir.display()
        ),
    })?;
    let value = serde_json::json!({"report": report.to_json(), "json": evidence.json, "markdown": evidence.markdown, "sha256_file": evidence.checksums, "json_sha256": evidence.json_sha256, "markdown_sha256": evidence.markdown_sha256});
    print(
        json,
        value,
        format!(
            "{}\nevidence: {} {} (sha256 in {})",
            report.table(),
            evidence.json.display(),
            evidence.markdown.display(),
            evidence.checksums.display()
        ),
    );
    if !report.objectives_met() {
        return Err(Failure {
            code: EXIT_FAILED,
            message: "OBJECTIVE BREACHED: RPO or RTO missed; see the report".into(),
        });
    }
    Ok(())
}

/// The pool of the database whose audit log the audit commands read: the first
/// control with a DSN (kill switch, symbol modes, fencing). The log covers every
/// control whose events live in that database.
async fn audit_pool(allow_standby: bool) -> Result<failover_core::postgres::PgPool, Failure> {
    if env_set(killswitch::postgres::ENV_PREFIX) {
        return Ok(reading(kill_store()?, allow_standby).await?.pool().clone());
    }
    if env_set(symbol_mode::postgres::ENV_PREFIX) {
        return Ok(reading(mode_store()?, allow_standby).await?.pool().clone());
    }
    if env_set(fencing::postgres::ENV_PREFIX) {
        return Ok(reading(lease_store()?, allow_standby).await?.pool().clone());
    }
    Err(Failure::refused("no database: set TRADEPULSE_POSTGRES__DSN (every control), or TRADEPULSE_KILL_SWITCH_POSTGRES__DSN, TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN or TRADEPULSE_FENCING_POSTGRES__DSN"))
}

/// The databases whose audit logs the events export reads, each distinct DSN once (by
/// the stores' own rule: a control's own `…_POSTGRES__DSN`, else
/// `TRADEPULSE_POSTGRES__DSN`), in the order kill switch, symbol modes, fencing: the
/// env prefix of the first control configured for it, and the controls whose events
/// are exported from it (those configured for it, scopes with the kill switch, and the
/// approvals kept in every database).
fn export_databases() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut databases: Vec<(String, &'static str, Vec<&'static str>)> = Vec::new();
    for (prefix, controls) in [
        (
            killswitch::postgres::ENV_PREFIX,
            &["kill_switch", "scope"][..],
        ),
        (symbol_mode::postgres::ENV_PREFIX, &["symbol_mode"]),
        (fencing::postgres::ENV_PREFIX, &["lease"]),
    ] {
        let Some(dsn) =
            failover_core::postgres::PgSettings::dsn_variable(prefix, |k| std::env::var(k).ok())
                .and_then(|var| std::env::var(var).ok())
        else {
            continue;
        };
        match databases.iter_mut().find(|(d, _, _)| *d == dsn) {
            Some((_, _, of)) => of.extend_from_slice(controls),
            None => databases.push((dsn, prefix, controls.to_vec())),
        }
    }
    databases
        .into_iter()
        .map(|(_, prefix, mut controls)| {
            controls.push("approvals");
            (prefix, controls)
        })
        .collect()
}

/// The pool of the store with env prefix `prefix`, as a reading command uses it.
async fn export_pool(
    prefix: &str,
    allow_standby: bool,
) -> Result<failover_core::postgres::PgPool, Failure> {
    if prefix == killswitch::postgres::ENV_PREFIX {
        Ok(reading(kill_store()?, allow_standby).await?.pool().clone())
    } else if prefix == symbol_mode::postgres::ENV_PREFIX {
        Ok(reading(mode_store()?, allow_standby).await?.pool().clone())
    } else {
        Ok(reading(lease_store()?, allow_standby).await?.pool().clone())
    }
}

/// `audit export --format csv` and `--since`: the events of every database's audit
/// log, read in index ranges and written range by range (memory stays at one range),
/// through the same target as the log export.
async fn audit_export(
    g: &Global,
    since: Option<SystemTime>,
    format: Format,
    out: Option<PathBuf>,
    quiet: bool,
) -> Result<(), Failure> {
    let databases = export_databases();
    if databases.is_empty() {
        return Err(Failure::refused("nothing to export: set TRADEPULSE_POSTGRES__DSN (every control), or TRADEPULSE_KILL_SWITCH_POSTGRES__DSN, TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN and/or TRADEPULSE_FENCING_POSTGRES__DSN"));
    }
    let bar = crate::verify::progress_bar(0, "entries", quiet || g.json);
    let mut target = crate::verify::ExportTarget::open(
        out.as_deref(),
        match format {
            Format::Csv => "audit.csv",
            Format::Jsonl => "audit.jsonl",
        },
    )?;
    let mut export = export::EventExport::new(format, since);
    export.begin(target.writer()).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!("writing {}: {e}; give a writable --out path", target.name),
    })?;
    for (prefix, controls) in &databases {
        let pool = export_pool(prefix, g.allow_standby).await?;
        let w = target.writer();
        failover_core::audit_log::for_each_entry(
            &pool,
            Some(controls),
            |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
            |line| export.entry(w, line),
        )
        .await
        .map_err(|e| Failure {
            // Unavailable within the retry budget: nothing written, safe to run again.
            code: match &e {
                failover_core::audit_log::ExportError::Db(d)
                    if matches!(d.kind(), failover_core::errors::DbErrorKind::Unavailable) =>
                {
                    EXIT_UNAVAILABLE
                }
                _ => EXIT_FAILED,
            },
            message: format!(
                "exporting the audit log of {} ({}): {e}",
                pool.settings(),
                controls.join(", ")
            ),
        })?;
    }
    let target_name = target.name.clone();
    let sha256 = target.finish()?;
    bar.finish_and_clear();
    if export.gone > 0 {
        eprintln!("note: {} log entr{} whose event row is gone from the database are not in the export; the whole-log export (`safetyctl audit export` without --format csv or --since) names them and `audit verify` reports them", export.gone, if export.gone == 1 { "y" } else { "ies" });
    }
    let events = export.events;
    let found = &export.controls;
    let summary = serde_json::json!({"sha256": sha256, "events": events, "controls": found, "out": target_name});
    let from = if found.is_empty() {
        String::new()
    } else {
        format!(" from {}", found.join(", "))
    };
    // With the export on stdout the checksum goes to stderr, keeping stdout the export.
    if out.is_none() {
        eprintln!("sha256 {sha256}  {target_name}  ({events} events{from})");
    } else if g.json {
        println!("{summary}");
    } else {
        println!("sha256 {sha256}  {target_name}  ({events} events{from})");
    }
    Ok(())
}
