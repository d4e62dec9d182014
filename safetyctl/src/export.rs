//! `safetyctl audit export`: every control's audit events, once each, ordered by
//! time, as JSON lines or CSV, with the SHA-256 of the bytes written.

use serde::Serialize;
use std::collections::HashSet;
use std::time::SystemTime;

/// One audit event of any control, flattened for export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportEvent {
    /// `kill_switch`, `symbol_mode` or `lease`.
    pub control: &'static str,
    /// The event's identity within its control: its position (`timeline << 40 |
    /// counter`, never reused across failovers); the row id for leases.
    pub position: u64,
    /// The request id (idempotency key); empty for lease events.
    pub request_id: String,
    /// What was done: `engage`, `set_symbol_mode`, `acquire` …
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Ticket, if any.
    pub ticket: Option<String>,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Control-specific fields as JSON (mode, symbol, token …).
    pub details: serde_json::Value,
    #[serde(skip)]
    at_time: Option<SystemTime>,
}

impl ExportEvent {
    /// An event.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        control: &'static str,
        position: u64,
        request_id: String,
        action: String,
        actor: String,
        reason: String,
        ticket: Option<String>,
        at: SystemTime,
        details: serde_json::Value,
    ) -> Self {
        Self {
            control,
            position,
            request_id,
            action,
            actor,
            reason,
            ticket,
            at: humantime::format_rfc3339_micros(at).to_string(),
            details,
            at_time: Some(at),
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header line.
    Csv,
}

/// Keeps events at or after `since`, drops duplicates (same control and position),
/// and orders by time, then control, then position.
pub fn prepare(events: Vec<ExportEvent>, since: Option<SystemTime>) -> Vec<ExportEvent> {
    let mut seen = HashSet::new();
    let mut out: Vec<ExportEvent> = events
        .into_iter()
        .filter(|e| since.is_none_or(|s| e.at_time.is_none_or(|t| t >= s)))
        .filter(|e| seen.insert((e.control, e.position)))
        .collect();
    out.sort_by(|a, b| (a.at_time, a.control, a.position).cmp(&(b.at_time, b.control, b.position)));
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The export's bytes.
pub fn render(events: &[ExportEvent], format: Format) -> Vec<u8> {
    let mut out = String::new();
    match format {
        Format::Jsonl => {
            for e in events {
                out.push_str(&serde_json::to_string(e).expect("events serialise"));
                out.push('\n');
            }
        }
        Format::Csv => {
            out.push_str("control,position,request_id,action,actor,reason,ticket,at,details\r\n");
            for e in events {
                let fields = [
                    e.control.to_owned(),
                    e.position.to_string(),
                    e.request_id.clone(),
                    e.action.clone(),
                    e.actor.clone(),
                    e.reason.clone(),
                    e.ticket.clone().unwrap_or_default(),
                    e.at.clone(),
                    e.details.to_string(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&row.join(","));
                out.push_str("\r\n");
            }
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_since_filters_and_csv_quotes() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let e = |pos, secs, reason: &str| {
            ExportEvent::new(
                "kill_switch",
                pos,
                "r".into(),
                "engage".into(),
                "ops:alice".into(),
                reason.into(),
                None,
                t + std::time::Duration::from_secs(secs),
                serde_json::json!({}),
            )
        };
        let events = prepare(
            vec![e(2, 2, "b"), e(1, 1, "a, \"quoted\""), e(2, 2, "b")],
            None,
        );
        assert_eq!(
            events.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2]
        );
        let csv = String::from_utf8(render(&events, Format::Csv)).unwrap();
        assert!(csv.contains("\"a, \"\"quoted\"\"\""), "{csv}");
        assert_eq!(
            prepare(events, Some(t + std::time::Duration::from_secs(2))).len(),
            1
        );
    }
}
