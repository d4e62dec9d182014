//! `scope create|set|show|tree|history`: halts of a desk, a strategy, an account or a
//! venue — nodes of the firm's trees, under the global kill switch.
//!
//! A scope's own mode is one of NORMAL < REDUCE_ONLY < CANCEL_ONLY < HALTED; its
//! effective mode is the strictest of the kill switch, every ancestor and its own.
//! Tightening applies at once; relaxing needs a supervisor and `--ticket`, goes one
//! step at a time from HALTED, and applies only while the scope is still the one the
//! command printed.

use crate::cli::{kill_store, print, reading, relaxing, set_by, time, to_json, Failure, Global};
use clap::Subcommand;
use killswitch::scope::{effective_tree, EffectiveScope, ScopeMode, ScopePath, ScopeStore};
use killswitch::KillSwitchStore;
use std::sync::Arc;

/// Scope commands.
#[derive(Debug, Subcommand)]
pub enum ScopeCmd {
    /// Creates a scope (audited; an operator may). Its parent must exist; a
    /// one-segment path starts a tree. Paths are lower case: `acme/eq/mm-1`.
    Create {
        /// The path, e.g. acme/eq/mm-1.
        path: String,
    },
    /// Sets a scope's own mode. Tightening applies at once; relaxing needs a
    /// supervisor and `--ticket`, and goes from HALTED to CANCEL_ONLY first.
    Set {
        /// The path.
        path: String,
        /// NORMAL | REDUCE_ONLY | CANCEL_ONLY | HALTED
        mode: ScopeMode,
        /// `--wait [--timeout 5s]`: until every live engine applied it.
        #[command(flatten)]
        wait: crate::receipt::WaitArgs,
    },
    /// A scope's own mode, its effective mode (`effective`) and which node decides it.
    Show {
        /// The path.
        path: String,
    },
    /// The scopes under PATH (every tree without it), with own and effective modes.
    Tree {
        /// The subtree's root.
        path: Option<String>,
    },
    /// A scope's audit events, newest first.
    History {
        /// The path.
        path: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub(crate) fn scope_store() -> Result<Arc<killswitch::PostgresScopeStore>, Failure> {
    Ok(Arc::new(killswitch::PostgresScopeStore::from_env()?))
}

fn effective_json(e: &EffectiveScope) -> serde_json::Value {
    serde_json::json!({
        "path": e.path,
        "mode": e.own,
        "effective": e.effective,
        "decided_by": e.decided_by,
        "decision": e,
    })
}

fn effective_text(e: &EffectiveScope) -> String {
    let mut text = format!("{}: mode {}, effective {}", e.path, e.own, e.effective);
    if e.effective != ScopeMode::Normal || !e.actor.is_empty() {
        text.push_str(&format!(
            ", decided by {} ({}, reason {:?})",
            e.decided_by,
            set_by(&e.actor, e.at),
            e.reason
        ));
    }
    text
}

/// Runs a scope command.
pub(crate) async fn run(g: &Global, action: ScopeCmd) -> Result<(), Failure> {
    let store = scope_store()?;
    match action {
        ScopeCmd::Create { path } => {
            let path = ScopePath::parse(&path).map_err(killswitch::scope::Error::from)?;
            let applied = store.create_scope(&path, &g.audit(&*store)?).await?;
            let replayed = applied.replayed;
            let state = applied.into_inner();
            print(
                g.json,
                to_json(&state),
                format!(
                    "scope {} created{} (position {}, by {})",
                    state.path,
                    if replayed { " (replayed)" } else { "" },
                    state.position,
                    state.updated_by
                ),
            );
        }
        ScopeCmd::Set { path, mode, wait } => {
            let audit = g.audit(&*store)?;
            let seen = store.scope(&path).await?;
            let audit = match &seen {
                Some(s) if mode < s.mode => relaxing(
                    audit,
                    format!(
                        "{} {} -> {mode}, {}",
                        s.path,
                        s.mode,
                        set_by(&s.updated_by, s.updated_at)
                    ),
                    s.position,
                ),
                Some(s) => audit.expecting(s.position),
                // The store refuses naming the known path it resembles, or saying to
                // create it.
                None => audit,
            };
            let state = store
                .set_scope_mode(&path, mode, &audit)
                .await?
                .into_inner();
            let effective = store.effective(state.path.as_str()).await?;
            let mut value = effective_json(&effective);
            value["position"] = serde_json::json!(state.position);
            print(
                g.json,
                value,
                format!(
                    "{} set to {mode} (position {}, by {}); {}",
                    state.path,
                    state.position,
                    state.updated_by,
                    effective_text(&effective)
                ),
            );
            crate::receipt::scopes(g, &wait, &store, state.position).await?;
        }
        ScopeCmd::Show { path } => {
            let store = reading(store, g.allow_standby).await?;
            let effective = store.effective(&path).await?;
            print(
                g.json,
                effective_json(&effective),
                effective_text(&effective),
            );
        }
        ScopeCmd::Tree { path } => {
            let under = path
                .as_deref()
                .map(ScopePath::parse)
                .transpose()
                .map_err(killswitch::scope::Error::from)?;
            let store = reading(store, g.allow_standby).await?;
            if let Some(under) = &under {
                // An unknown subtree is refused as `scope show` would refuse it.
                store.effective(under.as_str()).await?;
            }
            let all = store.scopes(None).await?;
            let root = reading(kill_store()?, g.allow_standby)
                .await?
                .load()
                .await?;
            let rows = effective_tree(&all, root.engaged, under.as_ref());
            let text = rows
                .iter()
                .map(|(s, effective)| {
                    format!(
                        "{:indent$}{:<width$} {:<11} effective {}",
                        "",
                        s.path.segments().last().unwrap_or_default(),
                        s.mode.as_str(),
                        effective.as_str(),
                        indent = 2 * (s.path.depth() - 1),
                        width = 30usize.saturating_sub(2 * (s.path.depth() - 1)),
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let value = serde_json::json!({
                "kill_switch_engaged": root.engaged,
                "scopes": rows.iter().map(|(s, effective)| serde_json::json!({"path": s.path, "mode": s.mode, "effective": effective, "updated_by": s.updated_by, "position": s.position})).collect::<Vec<_>>(),
            });
            let text = if root.engaged {
                format!("kill switch ENGAGED: every scope is effectively HALTED\n{text}")
            } else {
                text
            };
            print(g.json, value, text);
        }
        ScopeCmd::History { path, limit } => {
            let path = ScopePath::parse(&path).map_err(killswitch::scope::Error::from)?;
            let store = reading(store, g.allow_standby).await?;
            // An unknown path is refused (with the known one it resembles), not
            // answered with an empty history.
            store.effective(path.as_str()).await?;
            let events = store.scope_history(Some(&path), limit).await?;
            let text = events
                .iter()
                .map(|e| {
                    format!(
                        "{}  {:<12}  {:<8}  {} -> {}  by {}  reason {:?}  ticket {}",
                        time(e.at),
                        e.position.to_string(),
                        e.action.as_str(),
                        e.from_mode.map_or("-", ScopeMode::as_str),
                        e.to_mode,
                        e.actor,
                        e.reason,
                        e.ticket.as_deref().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(g.json, to_json(&events), text);
        }
    }
    Ok(())
}
