//! `--wait`: after a change, wait until every live process's handle has applied it.
//!
//! Every handle built `with_receipts` reports the position it applied (table
//! `handle_receipts`, see `failover_core::receipt`). After the write, `--wait` reads
//! the receipt of the position the write produced until every live process confirmed
//! it or `--timeout` (default 5 s) passed; on a terminal one line shows the progress
//! ("312/1,000 processes confirmed, 14 ms"). Then it prints how many confirmed and
//! after how long, names the live processes that have not (host, pid, process name,
//! last seen), and lists apart those not heard of within `--live-within` (default
//! 5 s): aged out, not counted. With `--json` the receipt is printed as JSON.
//!
//! Exit code [`EXIT_NOT_CONFIRMED`] (6): the change was written, but a live process
//! had not confirmed it within the timeout (or no live process reports at all).

use crate::cli::{Failure, Global, EXIT_UNAVAILABLE};
use clap::Args;
use failover_core::postgres::PgPool;
use failover_core::receipt::{ProcessReceipt, Receipt};
use failover_core::Position;
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Exit code: the change was written, but not every live process confirmed it within
/// `--timeout` (or none reports at all).
pub const EXIT_NOT_CONFIRMED: i32 = 6;

/// How often the receipt is read while waiting.
const POLL: Duration = Duration::from_millis(25);

/// At most this many aged-out processes are named in text (all of them with --json).
const AGED_OUT_SHOWN: usize = 20;

/// The flags of a change that can wait for its receipt.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// After the change, wait until every live process's handle applied it; exit 6
    /// when one has not within --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Processes not heard of for longer than this are aged out: listed, not counted.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub live_within: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 5s or 500ms"))
}

/// `kill-switch engage --wait`: waits for `position` of the kill switch.
pub(crate) async fn kill_switch(
    g: &Global,
    args: &WaitArgs,
    store: &killswitch::PostgresKillSwitchStore,
    position: Position,
) -> Result<(), Failure> {
    let wanted = Wanted {
        pool: store.pool(),
        component: killswitch::HEALTH_COMPONENT,
        target: "",
        position,
        what: "kill switch",
    };
    wait(g, args, wanted).await
}

/// `mode set … --wait`: waits for `position` of the symbol-mode store (every
/// `SymbolModes` handle watches the whole store).
pub(crate) async fn symbol_modes(
    g: &Global,
    args: &WaitArgs,
    store: &symbol_mode::PostgresSymbolModeStore,
    position: Position,
) -> Result<(), Failure> {
    let wanted = Wanted {
        pool: store.pool(),
        component: symbol_mode::HEALTH_COMPONENT,
        target: "",
        position,
        what: "symbol modes",
    };
    wait(g, args, wanted).await
}

/// `scope set … --wait`: waits for `position` of the scope store (every `ScopeModes`
/// handle watches every tree).
pub(crate) async fn scopes(
    g: &Global,
    args: &WaitArgs,
    store: &killswitch::PostgresScopeStore,
    position: Position,
) -> Result<(), Failure> {
    let wanted = Wanted {
        pool: store.pool(),
        component: killswitch::scope::SCOPE_HEALTH_COMPONENT,
        target: "",
        position,
        what: "scopes",
    };
    wait(g, args, wanted).await
}

/// What is waited for: a position of one control's `(component, target)`.
struct Wanted<'a> {
    /// The pool of the database the control's handles report to.
    pool: &'a PgPool,
    /// The receipts' component, e.g. `kill_switch`.
    component: &'static str,
    /// What the handles watch (`""` for the whole control).
    target: &'a str,
    /// The position the write produced.
    position: Position,
    /// For messages: "kill switch", "symbol modes".
    what: &'static str,
}

/// Waits for `wanted` when `args.wait`; prints the outcome; fails with
/// [`EXIT_NOT_CONFIRMED`] when a live process has not confirmed within the timeout.
async fn wait(g: &Global, args: &WaitArgs, wanted: Wanted<'_>) -> Result<(), Failure> {
    if !args.wait {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = started + args.timeout;
    let bar = progress(g.json);
    let mut last_error = None;
    let mut last: Option<Receipt> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(
            remaining.max(POLL * 4),
            failover_core::receipt::read(
                wanted.pool,
                wanted.component,
                wanted.target,
                wanted.position,
                args.live_within,
            ),
        )
        .await;
        match read {
            Ok(Ok(receipt)) => {
                let done = receipt.complete();
                bar.set_message(format!(
                    "{}/{} processes confirmed, {} ms",
                    HumanCount(receipt.confirmed.len() as u64),
                    HumanCount(receipt.live() as u64),
                    started.elapsed().as_millis()
                ));
                last = Some(receipt);
                if done {
                    break;
                }
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {
                last_error = Some(format!(
                    "reading the receipt took longer than {:?}",
                    args.timeout
                ))
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let Some(receipt) = last else {
        return Err(Failure {
            code: EXIT_UNAVAILABLE,
            message: format!(
                "the change was written (position {}), but its receipt could not be read within {:?}: {}; send the same command again with --wait and the same --request-id to read it once the database answers",
                wanted.position,
                args.timeout,
                last_error.unwrap_or_default()
            ),
        });
    };
    report(g.json, &receipt, elapsed, &wanted, args);
    if receipt.complete() {
        return Ok(());
    }
    let message = if receipt.live() == 0 {
        format!(
            "NOT CONFIRMED: no live process reports its {} position (none heard of within {:?}); the change is written (position {}), but no running handle is known to have applied it: check that the engines run and build their handles with_receipts",
            wanted.what, args.live_within, wanted.position
        )
    } else {
        format!(
            "NOT CONFIRMED: {} of {} live process(es) had not applied {} position {} within {:?} (named above); the change is written: check those processes (stopped, partitioned from the database?) and cancel their orders by other means if they do not confirm",
            receipt.pending.len(),
            receipt.live(),
            wanted.what,
            wanted.position,
            args.timeout
        )
    };
    Err(Failure {
        code: EXIT_NOT_CONFIRMED,
        message,
    })
}

/// On a terminal, one line of progress on stderr; hidden otherwise.
fn progress(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn process(r: &ProcessReceipt) -> String {
    format!(
        "{} pid {} {}  at position {}, last seen {} ago",
        r.process.host,
        r.process.pid,
        r.process.process_name,
        r.position,
        humantime::format_duration(Duration::from_millis(r.last_seen_ago.as_millis() as u64))
    )
}

fn report(json: bool, receipt: &Receipt, elapsed: Duration, wanted: &Wanted<'_>, args: &WaitArgs) {
    if json {
        let mut value = serde_json::to_value(receipt).unwrap_or(serde_json::Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert("complete".into(), receipt.complete().into());
            object.insert("waited_ms".into(), (elapsed.as_millis() as u64).into());
        }
        println!("{}", serde_json::json!({ "receipt": value }));
        return;
    }
    let ms = elapsed.as_millis();
    if receipt.complete() {
        println!(
            "{} position {}: {}/{} live processes confirmed after {ms} ms",
            wanted.what,
            wanted.position,
            HumanCount(receipt.confirmed.len() as u64),
            HumanCount(receipt.live() as u64)
        );
    } else {
        println!(
            "{} position {}: {}/{} live processes confirmed; not confirmed within {:?}:",
            wanted.what,
            wanted.position,
            HumanCount(receipt.confirmed.len() as u64),
            HumanCount(receipt.live() as u64),
            args.timeout
        );
        for r in &receipt.pending {
            println!("  {}", process(r));
        }
    }
    if !receipt.aged_out.is_empty() {
        println!(
            "aged out (not heard of within {:?}, not counted): {}",
            args.live_within,
            receipt.aged_out.len()
        );
        for r in receipt.aged_out.iter().take(AGED_OUT_SHOWN) {
            println!("  {}", process(r));
        }
        if receipt.aged_out.len() > AGED_OUT_SHOWN {
            println!(
                "  … and {} more (--json lists them all)",
                receipt.aged_out.len() - AGED_OUT_SHOWN
            );
        }
    }
}
