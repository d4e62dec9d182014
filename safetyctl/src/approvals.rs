//! `safetyctl approvals`: four eyes before a safety control is relaxed.
//!
//! * `require ACTION… [--expiry 15m]` tightens (an operator may, audited);
//! * `waive ACTION…` relaxes (a supervisor, `--ticket`); while any action is
//!   required the waiver itself waits for a second supervisor (exit 4);
//! * `list [--all]`, `policy`, `review`, `events [ID]` read (`list` first closes the
//!   requests past their expiry, each an `expired` event in the audit log);
//! * `approve ID` applies a pending request's command — a second supervisor (another
//!   login and another actor) — or refuses (exit 2): self-approval, expired (requests
//!   past their expiry are closed first, as `list` does), or the
//!   state moved since the request (`stale_request`, naming the change);
//! * `reject ID --reason …` closes a pending request;
//! * `acknowledge ID` closes a break-glass relaxation's review (a second supervisor).
//!
//! A relaxation of a required action answers exit 4 "pending approval: request ID …";
//! `--break-glass` applies it at once, audited and listed by `review`.

use crate::cli::{print, time, to_json, Failure, Global, EXIT_REFUSED};
use clap::Subcommand;
use failover_core::approvals::{ApprovalRequest, ApprovalStore, PostgresApprovals};
use failover_core::postgres::PgStore;
use failover_core::Authority;
use std::time::Duration;
use uuid::Uuid;

/// Approval commands.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// Requires a second supervisor's approval to relax these actions (kill-switch.disengage,
    /// global-mode.relax, mode.relax, withdrawals.lift, throttle.relax, scope.relax).
    /// Tightens: an operator may; `--reason` required.
    Require {
        /// The actions.
        #[arg(required = true)]
        actions: Vec<String>,
        /// How long their requests stay open (default 15m; 1s to 24h), e.g. 30m.
        #[arg(long, value_parser = parse_duration)]
        expiry: Option<Duration>,
    },
    /// Stops requiring approval for these actions. Relaxes: a supervisor with
    /// `--reason` and `--ticket`; while any action is required, a second supervisor
    /// approves the waiver (exit 4 until then), or `--break-glass`.
    Waive {
        /// The actions.
        #[arg(required = true)]
        actions: Vec<String>,
    },
    /// Pending requests, newest first.
    List {
        /// Closed requests too.
        #[arg(long)]
        all: bool,
    },
    /// Which actions require approval, and how long their requests stay open.
    Policy,
    /// Break-glass relaxations not yet acknowledged by a second supervisor.
    Review,
    /// The approvals trail (of one request when given), newest first.
    Events {
        /// The request.
        id: Option<Uuid>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Approves a pending request: its command is applied now, against the state it
    /// was asked against. Another login and another actor than the requester's.
    Approve {
        /// The request id.
        id: Uuid,
    },
    /// Rejects a pending request (`--reason` required).
    Reject {
        /// The request id.
        id: Uuid,
    },
    /// Acknowledges a break-glass relaxation (a second supervisor).
    Acknowledge {
        /// The request id.
        id: Uuid,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; give a duration like 15m or 30s"))
}

/// The actor: `--actor`, or the database login.
fn actor<S: PgStore>(g: &Global, store: &S) -> String {
    match (&g.actor, store.pool().settings().user()) {
        (Some(actor), _) => actor.clone(),
        (None, Some(login)) => login.to_owned(),
        (None, None) => crate::cli::default_actor(),
    }
}

fn request_line(r: &ApprovalRequest) -> String {
    format!(
        "{}  {:<10}  {:<22}  {}  by {} (login {}) at {}, expires {}{}{}",
        r.id,
        r.status,
        r.action,
        r.what,
        r.requested_by,
        r.requested_login,
        time(r.requested_at),
        time(r.expires_at),
        r.ticket
            .as_deref()
            .map(|t| format!(", ticket {t}"))
            .unwrap_or_default(),
        r.decision
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default()
    )
}

/// Closes the requests past their expiry (each an `expired` event, so an entry of the
/// audit log) before a command acts on requests, and returns them. A sweep that fails
/// is reported on stderr and does not stop the command: an approval refuses an expired
/// request by itself, and the listing shows it as expired.
async fn expire_due(approvals: &PostgresApprovals, actor: &str) -> Vec<ApprovalRequest> {
    match approvals.expire_due(actor).await {
        Ok(closed) => closed,
        Err(e) => {
            eprintln!("warning: expired requests were not closed: {e}");
            Vec::new()
        }
    }
}

/// Runs an approvals command.
pub async fn run(g: &Global, action: ApprovalsCmd) -> Result<(), Failure> {
    let store = killswitch::PostgresKillSwitchStore::from_env()?;
    let approvals = PostgresApprovals::new(store.pool().clone());
    // The CLI claims supervisor authority; the database grants what the login holds.
    let authority = Authority::Supervisor;
    match action {
        ApprovalsCmd::Require { actions, expiry } => {
            let audit = g.audit(&store)?;
            let position = approvals.require(&actions, expiry, &audit).await?;
            print(
                g.json,
                serde_json::json!({"required": actions, "policy_position": position}),
                format!(
                    "approval now required to relax: {} (policy position {position})",
                    actions.join(" ")
                ),
            );
        }
        ApprovalsCmd::Waive { actions } => {
            let audit = g.audit(&store)?;
            let position = approvals.waive(&actions, &audit).await?;
            print(
                g.json,
                serde_json::json!({"waived": actions, "policy_position": position}),
                format!(
                    "approval no longer required to relax: {} (policy position {position})",
                    actions.join(" ")
                ),
            );
        }
        ApprovalsCmd::List { all } => {
            let closed = expire_due(&approvals, &actor(g, &store)).await;
            let requests = approvals.list(all).await?;
            let mut lines: Vec<String> = closed
                .iter()
                .filter(|_| !all)
                .map(|r| format!("closed now: {}", request_line(r)))
                .collect();
            if requests.is_empty() {
                lines.push("no pending approval requests".into());
            }
            lines.extend(requests.iter().map(request_line));
            let text = lines.join("\n");
            print(g.json, to_json(&requests), text);
        }
        ApprovalsCmd::Review => {
            let requests = approvals.review().await?;
            let text = if requests.is_empty() {
                String::from("no break-glass relaxation awaits acknowledgement")
            } else {
                requests
                    .iter()
                    .map(|r| {
                        format!(
                            "BREAK-GLASS {} (acknowledge with: safetyctl approvals acknowledge {})",
                            request_line(r),
                            r.id
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print(g.json, to_json(&requests), text);
        }
        ApprovalsCmd::Policy => {
            let policy = approvals.policy().await?;
            let text = policy
                .iter()
                .map(|p| {
                    format!(
                        "{:<22}  {:<12}  expiry {}",
                        p.action,
                        if p.required {
                            "REQUIRED"
                        } else {
                            "not required"
                        },
                        humantime::format_duration(Duration::from_secs(p.expiry_secs))
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(g.json, to_json(&policy), text);
        }
        ApprovalsCmd::Events { id, limit } => {
            let events = approvals.events(id, limit).await?;
            let text = events
                .iter()
                .map(|e| {
                    format!(
                        "{}  {:<12}  {}  {}  by {} (login {}){}",
                        time(e.at),
                        e.event,
                        e.request_id,
                        e.what,
                        e.actor,
                        e.login,
                        e.detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(g.json, to_json(&events), text);
        }
        ApprovalsCmd::Approve { id } => {
            expire_due(&approvals, &actor(g, &store)).await;
            let approved = approvals.approve(id, &actor(g, &store), authority).await?;
            print(
                g.json,
                to_json(&approved),
                format!(
                    "approved and applied: {} (requested by {}, position {})",
                    approved.what, approved.requested_by, approved.position
                ),
            );
        }
        ApprovalsCmd::Reject { id } => {
            let reason = g.reason.as_deref().ok_or_else(|| Failure {
                code: EXIT_REFUSED,
                message: "refused, nothing changed: --reason is required to reject: say why".into(),
            })?;
            let decided = approvals
                .reject(id, &actor(g, &store), reason, authority)
                .await?;
            print(
                g.json,
                to_json(&decided),
                format!("rejected request {id}: {}", decided.what),
            );
        }
        ApprovalsCmd::Acknowledge { id } => {
            let decided = approvals
                .acknowledge(id, &actor(g, &store), authority)
                .await?;
            print(
                g.json,
                to_json(&decided),
                format!("acknowledged break-glass request {id}: {}", decided.what),
            );
        }
    }
    Ok(())
}
