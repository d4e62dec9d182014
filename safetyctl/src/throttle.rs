//! `safetyctl throttle`: a symbol's order-rate throttle (new orders a second per
//! process, and a burst). Setting or lowering a limit tightens; raising or clearing
//! it relaxes: a supervisor, `--ticket`, and the throttle as it was read (exit 2,
//! naming the change, when it moved in between).

use crate::cli::{mode_store, print, reading, relaxing, set_by, time, to_json, Failure, Global};
use clap::Subcommand;
use symbol_mode::{SymbolModeStore, Throttle, ThrottleState, Transition};

/// Throttle commands.
#[derive(Debug, Subcommand)]
pub enum ThrottleCmd {
    /// Puts a limit on a registered symbol: `throttle set BTC-USD 50/s --burst 100`
    /// (raising an existing limit needs `--ticket`).
    Set {
        /// The symbol.
        symbol: String,
        /// New orders a second, written N/s (e.g. 50/s).
        rate: String,
        /// Orders admitted at once (default: the rate).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Clears a symbol's limit (`--ticket` required: it relaxes).
    Clear {
        /// The symbol.
        symbol: String,
    },
    /// The limits in force (one symbol's, or all).
    Show {
        /// The symbol (default: every throttled symbol).
        symbol: Option<String>,
    },
}

fn describe(limit: Option<Throttle>) -> String {
    limit.map_or_else(|| "none".to_owned(), |t| t.to_string())
}

fn line(t: &ThrottleState) -> String {
    format!(
        "{}: {} ({}, reason {:?}, position {})",
        t.symbol,
        describe(t.limit),
        set_by(&t.updated_by, t.updated_at),
        t.reason,
        t.position
    )
}

/// Runs a throttle command.
pub async fn run(g: &Global, action: ThrottleCmd) -> Result<(), Failure> {
    let store = mode_store()?;
    let (symbol, limit) = match action {
        ThrottleCmd::Show { symbol } => {
            let all = reading(store, g.allow_standby).await?.throttles().await?;
            let shown: Vec<&ThrottleState> = match &symbol {
                Some(s) => all.iter().filter(|t| &t.symbol == s).collect(),
                None => all.iter().filter(|t| t.limit.is_some()).collect(),
            };
            let text = match (&symbol, shown.is_empty()) {
                (Some(s), true) => format!("{s}: none (never throttled)"),
                (None, true) => String::from("no symbol is throttled"),
                _ => shown.iter().map(|t| line(t)).collect::<Vec<_>>().join("\n"),
            };
            print(g.json, to_json(&shown), text);
            return Ok(());
        }
        ThrottleCmd::Set {
            symbol,
            rate,
            burst,
        } => {
            let limit = Throttle::parse(&rate, burst).map_err(symbol_mode::Error::from)?;
            (symbol, Some(limit))
        }
        ThrottleCmd::Clear { symbol } => (symbol, None),
    };
    let audit = g.audit(&*store)?;
    let seen = store
        .throttles()
        .await?
        .into_iter()
        .find(|t| t.symbol == symbol);
    let (from, position) = seen
        .as_ref()
        .map_or((None, failover_core::Position::ZERO), |t| {
            (t.limit, t.position)
        });
    let audit = if Throttle::transition(from, limit) == Transition::Relax {
        let by = seen
            .as_ref()
            .map_or_else(String::new, |t| set_by(&t.updated_by, t.updated_at));
        relaxing(
            audit,
            format!(
                "throttle of {symbol} {} -> {}, {by}",
                describe(from),
                describe(limit)
            ),
            position,
        )
    } else {
        audit.expecting(position)
    };
    let event = store.set_throttle(&symbol, limit, &audit).await?;
    print(
        g.json,
        to_json(&event),
        format!(
            "throttle of {symbol} set to {} (position {}, by {} at {})",
            describe(limit),
            event.position,
            event.actor,
            time(event.at)
        ),
    );
    Ok(())
}
