//! The commands. Exit codes: 0 done; 2 refused (bad input, ticket missing,
//! transition forbidden — nothing changed); 3 unavailable within the retry budget;
//! 1 anything else (schema missing, a database error). Every error says what to do.

use crate::export::{self, ExportEvent, Format};
use clap::{Args, Parser, Subcommand};
use failover_core::postgres::PgStore;
use failover_core::Audit;
use fencing::LeaseFencer;
use killswitch::KillSwitchStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use symbol_mode::{SymbolMode, SymbolModeStore};

/// The runbooks' CLI: talks to PostgreSQL directly with the services' settings
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
    /// Who acts, for the audit trail (default: OS user@host).
    #[arg(long, global = true)]
    pub actor: Option<String>,
    /// Why (required for every change).
    #[arg(long, global = true)]
    pub reason: Option<String>,
    /// Incident or change ticket (required to relax safety).
    #[arg(long, global = true)]
    pub ticket: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// `WithdrawalsHalt(on/off)`.
    Withdrawals {
        /// halt | lift
        #[command(subcommand)]
        action: WithdrawalsCmd,
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
    /// The persisted state (the runbook's `kill_switch_state` row).
    Show,
    /// Stop trading (`--reason` required, `--ticket` optional).
    Engage,
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
    /// SHA-256 of the export printed.
    Export {
        /// Only events at or after this time (RFC 3339, e.g. 2025-01-31T00:00:00Z).
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        /// jsonl | csv
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}; give an RFC 3339 time like 2025-01-31T00:00:00Z"))
}

/// Exit code: done.
pub const EXIT_OK: i32 = 0;
/// Exit code: anything else (schema missing, database error).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: refused, nothing changed.
pub const EXIT_REFUSED: i32 = 2;
/// Exit code: unavailable within the retry budget.
pub const EXIT_UNAVAILABLE: i32 = 3;

/// A failed command: its exit code and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// The message (says what to do).
    pub message: String,
}

impl Failure {
    fn refused(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
}

impl From<killswitch::Error> for Failure {
    fn from(e: killswitch::Error) -> Self {
        use killswitch::Error as E;
        let code = match &e {
            E::InvalidAudit(_) | E::RequestReused { .. } | E::Config(_) => EXIT_REFUSED,
            E::Unavailable { .. } => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

impl From<symbol_mode::Error> for Failure {
    fn from(e: symbol_mode::Error) -> Self {
        use symbol_mode::Error as E;
        let code = match &e {
            E::InvalidSymbol(_)
            | E::InvalidAudit(_)
            | E::TransitionForbidden { .. }
            | E::RequestReused { .. }
            | E::Config(_) => EXIT_REFUSED,
            E::Unavailable { .. } => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

impl From<fencing::Error> for Failure {
    fn from(e: fencing::Error) -> Self {
        use fencing::Error as E;
        let code = match &e {
            E::Invalid { .. } | E::Config(_) => EXIT_REFUSED,
            E::Unavailable { .. } => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Self {
            code,
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
    fn audit(&self) -> Result<Audit, Failure> {
        let reason = self.reason.as_deref().ok_or_else(|| {
            Failure::refused("refused, nothing changed: --reason is required for every change: say why (e.g. --reason \"runaway algo\")")
        })?;
        let actor = self.actor.clone().unwrap_or_else(default_actor);
        let mut audit = Audit::new(actor, reason);
        if let Some(t) = &self.ticket {
            audit = audit.with_ticket(t);
        }
        Ok(audit)
    }
}

/// True when the control with env prefix `prefix` has a DSN: its own or the shared
/// `TRADEPULSE_POSTGRES__DSN`, by the stores' own rule.
fn env_set(prefix: &str) -> bool {
    failover_core::postgres::PgSettings::dsn_variable(prefix, |k| std::env::var(k).ok()).is_some()
}

fn kill_store() -> Result<Arc<killswitch::PostgresKillSwitchStore>, Failure> {
    Ok(Arc::new(killswitch::PostgresKillSwitchStore::from_env()?))
}

fn mode_store() -> Result<Arc<symbol_mode::PostgresSymbolModeStore>, Failure> {
    Ok(Arc::new(symbol_mode::PostgresSymbolModeStore::from_env()?))
}

fn lease_store() -> Result<Arc<fencing::PostgresLeaseFencer>, Failure> {
    Ok(Arc::new(fencing::PostgresLeaseFencer::from_env()?))
}

/// What a command printed: text for people, JSON with `--json`.
fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let g = cli.global;
    match cli.command {
        Command::KillSwitch { action } => {
            let store = kill_store()?;
            let state = match action {
                KillSwitchCmd::Show => store.load().await?,
                KillSwitchCmd::Engage => store.engage(&g.audit()?).await?,
                KillSwitchCmd::Disengage => store.disengage(&g.audit()?).await?,
                KillSwitchCmd::History { limit } => {
                    let events = store.history(limit).await?;
                    let text = events
                        .iter()
                        .map(|e| {
                            format!(
                                "{}  {:<12}  {:<9}  by {}  reason {:?}  ticket {}",
                                time(e.at),
                                e.position.to_string(),
                                e.action.as_str(),
                                e.actor,
                                e.reason,
                                e.ticket.as_deref().unwrap_or("-")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    print(g.json, to_json(&events), text);
                    return Ok(());
                }
            };
            let text = format!(
                "kill switch {}\n  reason      {}\n  updated_at  {}\n  updated_by  {}\n  ticket      {}\n  version     {}\n  position    {}",
                if state.engaged { "ENGAGED (trading halted)" } else { "disengaged (trading allowed)" },
                state.reason,
                time(state.updated_at),
                state.updated_by,
                state.ticket.as_deref().unwrap_or("-"),
                state.version,
                state.position
            );
            print(g.json, to_json(&state), text);
        }
        Command::Mode { action } => {
            let store = mode_store()?;
            match action {
                ModeCmd::Show { symbol } => {
                    symbol_mode::validate_symbol(&symbol).map_err(symbol_mode::Error::from)?;
                    let own = store.symbol_state(&symbol).await?;
                    let venue = store.venue().await?;
                    let mode = own.as_ref().map_or(SymbolMode::Normal, |s| s.mode);
                    let effective = SymbolMode::effective(venue.global, mode);
                    let value = serde_json::json!({"symbol": symbol, "mode": mode, "global": venue.global, "effective": effective, "last_change": own});
                    print(
                        g.json,
                        value,
                        format!(
                            "{symbol}: mode {mode}, global {}, effective {effective}",
                            venue.global
                        ),
                    );
                }
                ModeCmd::Set { symbol, mode } => {
                    let event = store.set_symbol_mode(&symbol, mode, &g.audit()?).await?;
                    print(
                        g.json,
                        to_json(&event),
                        format!(
                            "{symbol} set to {mode} (position {}, by {})",
                            event.position, event.actor
                        ),
                    );
                }
            }
        }
        Command::GlobalMode { action } => {
            let store = mode_store()?;
            match action {
                GlobalModeCmd::Show => {
                    let venue = store.venue().await?;
                    print(
                        g.json,
                        to_json(&venue),
                        format!(
                            "global mode {}, withdrawals {}",
                            venue.global,
                            if venue.withdrawals_halted {
                                "HALTED"
                            } else {
                                "allowed"
                            }
                        ),
                    );
                }
                GlobalModeCmd::Set { mode } => {
                    let event = store.set_global_mode(mode, &g.audit()?).await?;
                    print(
                        g.json,
                        to_json(&event),
                        format!(
                            "global mode set to {mode} (position {}, by {})",
                            event.position, event.actor
                        ),
                    );
                }
            }
        }
        Command::CancelAll { symbol } => {
            let store = mode_store()?;
            let command = store.cancel_all(&symbol, &g.audit()?).await?;
            print(
                g.json,
                to_json(&command),
                format!(
                    "CancelAll({symbol}) sent (seq {}, by {})",
                    command.seq, command.actor
                ),
            );
        }
        Command::Withdrawals { action } => {
            let store = mode_store()?;
            let on = matches!(action, WithdrawalsCmd::Halt);
            let event = store.withdrawals_halt(on, &g.audit()?).await?;
            print(
                g.json,
                to_json(&event),
                format!(
                    "withdrawals {} (position {}, by {})",
                    if on { "HALTED" } else { "allowed again" },
                    event.position,
                    event.actor
                ),
            );
        }
        Command::Lease {
            action: LeaseCmd::Show { resource },
        } => {
            let store = lease_store()?;
            let lease = store.current(&resource).await?;
            let value = match &lease {
                Some(l) => {
                    serde_json::json!({"resource": l.resource, "holder": l.holder, "token": l.token, "expires_in_ms": l.expires_in.as_millis() as u64})
                }
                None => serde_json::json!({"resource": resource, "holder": null}),
            };
            let text = match &lease {
                Some(l) => format!(
                    "{resource}: held by {} with token {} for another {:?}",
                    l.holder, l.token, l.expires_in
                ),
                None => format!("{resource}: free (no unexpired lease)"),
            };
            print(g.json, value, text);
        }
        Command::Audit {
            action: AuditCmd::Export { since, format, out },
        } => {
            audit_export(g.json, since, format, out).await?;
        }
        Command::Migrate { print_roles } => crate::migrate::run(print_roles, g.json).await?,
        Command::Doctor => crate::doctor::run(g.json).await?,
        #[cfg(feature = "drill")]
        Command::Drill { sync, report_dir } => {
            let config = crate::drill::DrillConfig {
                synchronous: sync,
                ..Default::default()
            };
            let json = g.json;
            let report = crate::drill::run(config, |line| if !json { println!("   {line}") })
                .await
                .map_err(|e| Failure { code: EXIT_FAILED, message: format!("drill failed: {e}; PostgreSQL server binaries are needed (Debian: apt-get install postgresql)") })?;
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
        }
    }
    Ok(())
}

const ALL: usize = i64::MAX as usize;

async fn audit_export(
    json: bool,
    since: Option<SystemTime>,
    format: Format,
    out: Option<PathBuf>,
) -> Result<(), Failure> {
    let mut events = Vec::new();
    let mut sources = Vec::new();
    if env_set(killswitch::postgres::ENV_PREFIX) {
        sources.push("kill_switch");
        for e in kill_store()?.history(ALL).await? {
            events.push(ExportEvent::new(
                "kill_switch",
                e.position.0,
                e.request_id.to_string(),
                e.action.as_str().into(),
                e.actor,
                e.reason,
                e.ticket,
                e.at,
                serde_json::json!({"engaged": e.engaged}),
            ));
        }
    }
    if env_set(symbol_mode::postgres::ENV_PREFIX) {
        sources.push("symbol_mode");
        for e in mode_store()?.history(ALL).await? {
            events.push(ExportEvent::new(
                "symbol_mode",
                e.position.0,
                e.request_id.to_string(),
                e.command.kind().as_str().into(),
                e.actor,
                e.reason,
                e.ticket,
                e.at,
                to_json(&e.command),
            ));
        }
    }
    if env_set(fencing::postgres::ENV_PREFIX) {
        sources.push("lease");
        for e in lease_store()?.lease_history(None, ALL).await? {
            events.push(ExportEvent::new(
                "lease",
                e.id,
                String::new(),
                e.event.clone(),
                e.holder.clone(),
                String::new(),
                None,
                e.at,
                serde_json::json!({"resource": e.resource, "token": e.token, "ttl_ms": e.ttl.as_millis() as u64}),
            ));
        }
    }
    if sources.is_empty() {
        return Err(Failure::refused("nothing to export: set TRADEPULSE_POSTGRES__DSN (every control), or TRADEPULSE_KILL_SWITCH_POSTGRES__DSN, TRADEPULSE_SYMBOL_MODE_POSTGRES__DSN and/or TRADEPULSE_FENCING_POSTGRES__DSN"));
    }
    let events = export::prepare(events, since);
    let bytes = export::render(&events, format);
    let sha256 = crate::evidence::sha256_hex(&bytes);
    match &out {
        Some(path) => std::fs::write(path, &bytes).map_err(|e| Failure {
            code: EXIT_FAILED,
            message: format!(
                "writing {}: {e}; give a writable --out path",
                path.display()
            ),
        })?,
        None => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&bytes);
        }
    }
    let target = out
        .as_ref()
        .map_or("-".to_owned(), |p| p.display().to_string());
    let summary = serde_json::json!({"sha256": sha256, "events": events.len(), "controls": sources, "out": target});
    // With the export on stdout the checksum goes to stderr, keeping stdout the export.
    if out.is_none() {
        eprintln!("sha256 {sha256}  {target}  ({} events)", events.len());
    } else if json {
        println!("{summary}");
    } else {
        println!(
            "sha256 {sha256}  {target}  ({} events from {})",
            events.len(),
            sources.join(", ")
        );
    }
    Ok(())
}
