//! `safetyctl strategies`: the firm-wide halt of new strategy activations
//! (`NewStrategiesHalt`). `disable-new` tightens: any operator, at once, no ticket
//! needed. `enable-new` relaxes: a supervisor, `--ticket` (exit 2 without, naming
//! it), and the halt as it was read (exit 2, naming the change, when it moved in
//! between); exit 4 while `strategies.enable-new` requires a second supervisor's
//! approval. Engines answer it with `SymbolModes::may_activate_strategy`.

use crate::cli::{mode_store, print, reading, relaxing, set_by, time, to_json, Failure, Global};
use clap::Subcommand;
use symbol_mode::{NewStrategiesState, SymbolModeStore};

/// Strategy activation commands.
#[derive(Debug, Subcommand)]
pub enum StrategiesCmd {
    /// Halts new strategy activations firm-wide (`--reason` required, `--ticket`
    /// optional); running strategies go on.
    DisableNew,
    /// Enables new strategy activations again (`--reason` and `--ticket` required).
    EnableNew,
    /// Whether new strategy activations are halted, and who set it.
    Show,
}

fn line(s: &NewStrategiesState) -> String {
    let state = if s.new_strategies_disabled {
        "new strategy activations DISABLED"
    } else {
        "new strategy activations enabled"
    };
    match (&s.updated_by, s.updated_at) {
        (Some(by), Some(at)) => format!(
            "{state} ({}, reason {:?}{}, position {})",
            set_by(by, at),
            s.reason.as_deref().unwrap_or_default(),
            s.ticket
                .as_deref()
                .map(|t| format!(", ticket {t}"))
                .unwrap_or_default(),
            s.position
        ),
        _ => format!("{state} (initial state)"),
    }
}

/// Runs a strategies command.
pub async fn run(g: &Global, action: StrategiesCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    let on = match action {
        StrategiesCmd::Show => {
            let state = reading(store, g.allow_standby)
                .await?
                .new_strategies()
                .await?;
            print(g.json, to_json(&state), line(&state));
            return Ok(());
        }
        StrategiesCmd::DisableNew => true,
        StrategiesCmd::EnableNew => false,
    };
    if !on && g.ticket.is_none() {
        return Err(Failure::refused(
            "refused, nothing changed: enabling new strategy activations again relaxes safety: --ticket is required (the incident or change ticket, e.g. --ticket INC-7)",
        ));
    }
    let audit = g.audit(&*store)?;
    let seen = store.new_strategies().await?;
    let audit = if !on && seen.new_strategies_disabled {
        relaxing(
            audit,
            format!(
                "new strategy activations DISABLED -> enabled, {}",
                line(&seen)
            ),
            seen.position,
        )
    } else {
        audit.expecting(seen.position)
    };
    let event = store.new_strategies_halt(on, &audit).await?;
    print(
        g.json,
        to_json(&event),
        format!(
            "new strategy activations {} (position {}, by {} at {})",
            if on { "DISABLED" } else { "enabled again" },
            event.position,
            event.actor,
            time(event.at)
        ),
    );
    Ok(())
}
