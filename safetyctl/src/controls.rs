//! The commands of the controls: the kill switch, symbol and global modes,
//! `CancelAll`, the withdrawals halt, the symbol registry and leases. Each reads what a
//! relaxation would relax, says it on stderr and makes the change conditional on it.

use crate::cli::{
    kill_store, lease_store, mode_store, print, reading, relaxing, set_by, time, to_json, Failure,
    Global, GlobalModeCmd, KillSwitchCmd, ModeCmd, SymbolsCmd, WithdrawalsCmd,
};
use failover_core::Position;
use fencing::LeaseFencer;
use killswitch::KillSwitchStore;
use symbol_mode::{SymbolMode, SymbolModeStore};

/// `lease show RESOURCE`.
pub(crate) async fn lease(g: &Global, resource: String) -> Result<(), Failure> {
    let store = reading(lease_store()?, g.allow_standby).await?;
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
    Ok(())
}

/// `kill-switch show|engage|disengage|history`.
pub(crate) async fn kill_switch(g: &Global, action: KillSwitchCmd) -> Result<(), Failure> {
    let store = kill_store()?;
    let mut wait = None;
    let state = match action {
        KillSwitchCmd::Show => reading(store, g.allow_standby).await?.load().await?,
        KillSwitchCmd::Engage { wait: w } => {
            wait = Some((w, store.clone()));
            store.engage(&g.audit(&*store)?).await?.into_inner()
        }
        KillSwitchCmd::Disengage => {
            let audit = g.audit(&*store)?;
            let seen = store.load().await?;
            let audit = if seen.engaged {
                relaxing(
                    audit,
                    format!(
                        "kill switch ENGAGED -> disengaged, {} (reason {:?})",
                        set_by(&seen.updated_by, seen.updated_at),
                        seen.reason
                    ),
                    seen.position,
                )
            } else {
                audit.expecting(seen.position)
            };
            store.disengage(&audit).await?.into_inner()
        }
        KillSwitchCmd::History { limit } => {
            let store = reading(store, g.allow_standby).await?;
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
    if let Some((w, store)) = wait {
        crate::receipt::kill_switch(g, &w, &store, state.position).await?;
    }
    Ok(())
}

/// `mode show|set`.
pub(crate) async fn mode(g: &Global, action: ModeCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    match action {
        ModeCmd::Show { symbol } => {
            symbol_mode::validate_symbol(&symbol).map_err(symbol_mode::Error::from)?;
            let store = reading(store, g.allow_standby).await?;
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
        ModeCmd::Set { symbol, mode, wait } => {
            let audit = g.audit(&*store)?;
            let seen = store.symbol_state(&symbol).await?;
            let (own, position) = seen
                .as_ref()
                .map_or((SymbolMode::Normal, Position::ZERO), |s| {
                    (s.mode, s.position)
                });
            let audit = if mode < own {
                let by = seen.as_ref().map_or_else(
                    || String::from("initial state"),
                    |s| set_by(&s.updated_by, s.updated_at),
                );
                relaxing(audit, format!("{symbol} {own} -> {mode}, {by}"), position)
            } else {
                audit.expecting(position)
            };
            let event = store.set_symbol_mode(&symbol, mode, &audit).await?;
            print(
                g.json,
                to_json(&event),
                format!(
                    "{symbol} set to {mode} (position {}, by {})",
                    event.position, event.actor
                ),
            );
            crate::receipt::symbol_modes(g, &wait, &store, event.position).await?;
        }
    }
    Ok(())
}

/// `global-mode show|set`.
pub(crate) async fn global_mode(g: &Global, action: GlobalModeCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    match action {
        GlobalModeCmd::Show => {
            let venue = reading(store, g.allow_standby).await?.venue().await?;
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
            let audit = g.audit(&*store)?;
            let venue = store.venue().await?;
            let audit = if mode < venue.global {
                let by = last_change(&store, venue.global_position).await?;
                relaxing(
                    audit,
                    format!("global mode {} -> {mode}, {by}", venue.global),
                    venue.global_position,
                )
            } else {
                audit.expecting(venue.global_position)
            };
            let event = store.set_global_mode(mode, &audit).await?;
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
    Ok(())
}

/// `cancel-all SYMBOL`.
pub(crate) async fn cancel_all(g: &Global, symbol: String) -> Result<(), Failure> {
    let store = mode_store()?;
    let command = store.cancel_all(&symbol, &g.audit(&*store)?).await?;
    print(
        g.json,
        to_json(&command),
        format!(
            "CancelAll({symbol}) sent (seq {}, by {})",
            command.seq, command.actor
        ),
    );
    Ok(())
}

/// `withdrawals halt|lift`.
pub(crate) async fn withdrawals(g: &Global, action: WithdrawalsCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    let on = matches!(action, WithdrawalsCmd::Halt);
    let audit = g.audit(&*store)?;
    let venue = store.venue().await?;
    let audit = if !on && venue.withdrawals_halted {
        let by = last_change(&store, venue.withdrawals_position).await?;
        relaxing(
            audit,
            format!("withdrawals HALTED -> allowed, {by}"),
            venue.withdrawals_position,
        )
    } else {
        audit.expecting(venue.withdrawals_position)
    };
    let event = store.withdrawals_halt(on, &audit).await?;
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
    Ok(())
}

/// Who made the change at `position` of the symbol-mode store, and when.
pub(crate) async fn last_change(
    store: &symbol_mode::PostgresSymbolModeStore,
    position: Position,
) -> Result<String, Failure> {
    if position == Position::ZERO {
        return Ok(String::from("initial state"));
    }
    // The newest events first: the change in force is usually among them.
    let events = store.history(1000).await?;
    Ok(events.iter().find(|e| e.position == position).map_or_else(
        || format!("last changed at position {position}"),
        |e| set_by(&e.actor, e.at),
    ))
}

pub(crate) async fn symbols(g: &Global, action: SymbolsCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    let wanted: Vec<String> = match action {
        SymbolsCmd::List => {
            let all = reading(store, g.allow_standby).await?.symbols().await?;
            let text = all
                .iter()
                .map(|r| {
                    format!(
                        "{}  registered by {} at {}",
                        r.symbol,
                        r.registered_by,
                        time(r.registered_at)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(g.json, to_json(&all), text);
            return Ok(());
        }
        SymbolsCmd::Add { symbols } => symbols,
        SymbolsCmd::Import { file } => std::fs::read_to_string(&file)
            .map_err(|e| {
                Failure::refused(format!(
                    "reading {}: {e}; give a readable file with one symbol per line",
                    file.display()
                ))
            })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
    };
    // Every symbol is checked before any is registered: a bad line changes nothing.
    for symbol in &wanted {
        symbol_mode::validate_symbol(symbol).map_err(symbol_mode::Error::from)?;
    }
    let audit = g.audit(&*store)?;
    let mut added = Vec::new();
    let mut known = Vec::new();
    for symbol in &wanted {
        let one = audit.clone().with_request_id(uuid::Uuid::new_v4());
        match store.register_symbol(symbol, &one).await? {
            Some(_) => added.push(symbol.clone()),
            None => known.push(symbol.clone()),
        }
    }
    let text = format!(
        "registered {} symbol(s){}{}",
        added.len(),
        if added.is_empty() {
            String::new()
        } else {
            format!(": {}", added.join(" "))
        },
        if known.is_empty() {
            String::new()
        } else {
            format!("; already registered: {}", known.join(" "))
        }
    );
    print(
        g.json,
        serde_json::json!({"registered": added, "already_registered": known}),
        text,
    );
    Ok(())
}
