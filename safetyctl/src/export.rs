//! `safetyctl audit export --format csv` and `--since`: the events of the audit log,
//! one row (CSV) or one JSON line per log entry, written as the log is read range by
//! range, never held whole.

use failover_core::audit_log::{AuditRecord, ExportLine};
use serde::Serialize;
use std::io::Write;
use std::time::SystemTime;

/// One audit event of any control, flattened for export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportEvent {
    /// `kill_switch`, `scope`, `symbol_mode`, `approvals` or `lease`.
    pub control: String,
    /// The event's identity within its control: its position (`timeline << 40 |
    /// counter`, never reused across failovers); the row id for leases.
    pub position: u64,
    /// The request id (idempotency key); empty for lease events.
    pub request_id: String,
    /// What was done: `engage`, `SetSymbolMode`, `requested`, `acquire` …
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why; empty for lease events.
    pub reason: String,
    /// Ticket, if any.
    pub ticket: Option<String>,
    /// When (RFC 3339, UTC, microseconds).
    pub at: String,
    /// Control-specific fields as JSON (mode, symbol, token …), those of the event's
    /// canonical log entry.
    pub details: serde_json::Value,
}

impl From<AuditRecord> for ExportEvent {
    fn from(r: AuditRecord) -> Self {
        Self {
            control: r.control,
            position: r.position,
            request_id: r.request_id.unwrap_or_default(),
            action: r.action,
            actor: r.actor,
            reason: r.reason.unwrap_or_default(),
            ticket: r.ticket,
            at: r.at,
            details: serde_json::Value::Object(r.details.into_iter().collect()),
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

/// The CSV header line.
pub const CSV_HEADER: &str =
    "control,position,request_id,action,actor,reason,ticket,at,details\r\n";

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Writes one event: a JSON line, or a CSV row (fields quoted when they hold a comma,
/// a quote or a line break; details as JSON text).
pub fn write_event(out: &mut impl Write, e: &ExportEvent, format: Format) -> std::io::Result<()> {
    match format {
        Format::Jsonl => {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")
        }
        Format::Csv => {
            let fields = [
                csv_field(&e.control),
                e.position.to_string().into(),
                csv_field(&e.request_id),
                csv_field(&e.action),
                csv_field(&e.actor),
                csv_field(&e.reason),
                csv_field(e.ticket.as_deref().unwrap_or_default()),
                csv_field(&e.at),
                csv_field(&e.details.to_string()).into_owned().into(),
            ];
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(f.as_bytes())?;
            }
            out.write_all(b"\r\n")
        }
    }
}

/// The events export as it is written: the CSV header first, then one event per log
/// entry handed to [`entry`](Self::entry), those at or after `since` only.
#[derive(Debug)]
pub struct EventExport {
    format: Format,
    since: Option<SystemTime>,
    /// Events written.
    pub events: u64,
    /// The controls of the events written, in the order first met.
    pub controls: Vec<String>,
    /// Entries whose event row is gone from the database (not written: a row holds
    /// the event's fields).
    pub gone: u64,
}

impl EventExport {
    /// An export in `format` of the events at or after `since`.
    pub fn new(format: Format, since: Option<SystemTime>) -> Self {
        Self {
            format,
            since,
            events: 0,
            controls: Vec::new(),
            gone: 0,
        }
    }

    /// Writes what precedes the events (the CSV header).
    pub fn begin(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            Format::Csv => out.write_all(CSV_HEADER.as_bytes()),
            Format::Jsonl => Ok(()),
        }
    }

    /// Writes the event of one log entry, unless it is before `since`.
    pub fn entry(&mut self, out: &mut impl Write, line: ExportLine) -> std::io::Result<()> {
        let Some(record) = line.record else {
            self.gone += 1;
            return Ok(());
        };
        if let Some(since) = self.since {
            // The log writes every time as RFC 3339 UTC; one it cannot read is kept.
            if humantime::parse_rfc3339(&record.at).is_ok_and(|at| at < since) {
                return Ok(());
            }
        }
        if !self.controls.contains(&record.control) {
            self.controls.push(record.control.clone());
        }
        write_event(out, &ExportEvent::from(record), self.format)?;
        self.events += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(position: u64, at: &str, reason: &str) -> ExportLine {
        ExportLine {
            index: position,
            control: "kill_switch".into(),
            position,
            record: Some(AuditRecord {
                control: "kill_switch".into(),
                position,
                request_id: Some("r".into()),
                action: "engage".into(),
                actor: "ops:alice".into(),
                reason: Some(reason.into()),
                ticket: None,
                at: at.into(),
                details: [("engaged".to_owned(), json!(true))].into_iter().collect(),
            }),
            leaf: String::new(),
        }
    }

    #[test]
    fn since_filters_csv_quotes_and_gone_rows_are_counted() {
        let since = humantime::parse_rfc3339("2025-01-31T09:30:00Z").unwrap();
        let mut export = EventExport::new(Format::Csv, Some(since));
        let mut out = Vec::new();
        export.begin(&mut out).unwrap();
        for l in [
            line(1, "2025-01-31T09:29:59.999999Z", "early"),
            line(2, "2025-01-31T09:30:00.000000Z", "a, \"quoted\""),
            ExportLine {
                record: None,
                ..line(3, "2025-01-31T09:31:00.000000Z", "gone")
            },
        ] {
            export.entry(&mut out, l).unwrap();
        }
        let csv = String::from_utf8(out).unwrap();
        assert_eq!(
            csv,
            format!("{CSV_HEADER}kill_switch,2,r,engage,ops:alice,\"a, \"\"quoted\"\"\",,2025-01-31T09:30:00.000000Z,\"{{\"\"engaged\"\":true}}\"\r\n")
        );
        assert_eq!((export.events, export.gone), (1, 1));
        assert_eq!(export.controls, ["kill_switch"]);

        let mut export = EventExport::new(Format::Jsonl, None);
        let mut out = Vec::new();
        export
            .entry(&mut out, line(1, "2025-01-31T09:29:59.999999Z", "x"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reason"], "x");
        assert_eq!(v["details"]["engaged"], true);
        assert_eq!(v["ticket"], serde_json::Value::Null);
    }
}
