//! The canonical encoding of an audit event, version `tp-audit-v1`.
//!
//! A log entry is the UTF-8 text `tp-audit-v1 ` (the version tag and one space)
//! followed by one JSON object, with no whitespace outside strings:
//!
//! * keys in byte order, at every level;
//! * the object's keys are exactly `action`, `actor`, `at`, `control`, `details`,
//!   `position`, `reason`, `request_id`, `ticket`;
//! * strings verbatim, escaped as JSON requires and no more: `"` `\` and the control
//!   characters below U+0020 (`\b \f \n \r \t`, the others `\u00xx` in lower-case
//!   hex); everything else, non-ASCII included, is written as is;
//! * integers in decimal, booleans `true`/`false`, NULL `null`;
//! * timestamps as UTC RFC 3339 with six fractional digits: `2025-01-31T09:30:00.000000Z`;
//! * durations as integer microseconds.
//!
//! What each control puts in the object:
//!
//! | control       | position              | action          | actor  | reason, ticket, request_id | details |
//! |---------------|-----------------------|-----------------|--------|-----------------------------|---------|
//! | `kill_switch` | `position`            | `action`        | `actor`| as recorded                 | `authority`, `engaged`, `login`, `version` |
//! | `symbol_mode` | `position`            | `command`       | `actor`| as recorded                 | `authority`, `from_mode`, `login`, `relaxes`, `symbol`, `to_mode`, `version`, `withdrawals_halted` |
//! | `lease`       | the event's `id`      | `event`         | `holder`| null                       | `resource`, `token`, `ttl_us` |
//!
//! The database builds the same text in SQL (`tradepulse_audit_entry`), when an event
//! is inserted, and stores the leaf hash of it; a later version of the encoding gets a
//! new tag and the verifier keeps reading the old one.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The version tag every entry of this encoding starts with.
pub const ENCODING_VERSION: &str = "tp-audit-v1";

/// One audit event of any control, with the fields its canonical entry is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// `kill_switch`, `symbol_mode` or `lease`.
    pub control: String,
    /// The event's identity within its control: its position (the row id for leases).
    pub position: u64,
    /// The request id (idempotency key); null for lease events.
    pub request_id: Option<String>,
    /// What was done: `engage`, `SetSymbolMode`, `acquire` …
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why; null for lease events.
    pub reason: Option<String>,
    /// Ticket, if any.
    pub ticket: Option<String>,
    /// When: UTC RFC 3339 with microseconds.
    pub at: String,
    /// The control's own fields (strings, integers, booleans or null).
    pub details: BTreeMap<String, Value>,
}

impl AuditRecord {
    /// The canonical entry (`tp-audit-v1 {…}`): the bytes whose leaf hash the log keeps.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(ENCODING_VERSION);
        out.push(' ');
        out.push('{');
        key(&mut out, "action", true);
        string(&mut out, &self.action);
        key(&mut out, "actor", false);
        string(&mut out, &self.actor);
        key(&mut out, "at", false);
        string(&mut out, &self.at);
        key(&mut out, "control", false);
        string(&mut out, &self.control);
        key(&mut out, "details", false);
        out.push('{');
        for (i, (k, v)) in self.details.iter().enumerate() {
            key(&mut out, k, i == 0);
            value(&mut out, v);
        }
        out.push('}');
        key(&mut out, "position", false);
        let _ = write!(out, "{}", self.position);
        key(&mut out, "reason", false);
        opt(&mut out, self.reason.as_deref());
        key(&mut out, "request_id", false);
        opt(&mut out, self.request_id.as_deref());
        key(&mut out, "ticket", false);
        opt(&mut out, self.ticket.as_deref());
        out.push('}');
        out
    }
}

/// A timestamp as the encoding writes it: UTC RFC 3339 with six fractional digits.
pub fn format_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn key(out: &mut String, k: &str, first: bool) {
    if !first {
        out.push(',');
    }
    string(out, k);
    out.push(':');
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.push_str("null"),
    }
}

fn value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                key(out, k, i == 0);
                value(out, v);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_encoding_is_sorted_compact_and_escapes_only_what_json_needs() {
        let record = AuditRecord {
            control: "kill_switch".into(),
            position: 1 << 40 | 7,
            request_id: Some("5f0c…".into()),
            action: "engage".into(),
            actor: "ops:alice".into(),
            reason: Some("runaway \"algo\"\n\u{1}é/".into()),
            ticket: None,
            at: "2025-01-31T09:30:00.000001Z".into(),
            details: [
                ("version".to_owned(), json!(3)),
                ("engaged".to_owned(), json!(true)),
                ("login".to_owned(), Value::Null),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            record.canonical(),
            "tp-audit-v1 {\"action\":\"engage\",\"actor\":\"ops:alice\",\"at\":\"2025-01-31T09:30:00.000001Z\",\"control\":\"kill_switch\",\"details\":{\"engaged\":true,\"login\":null,\"version\":3},\"position\":1099511627783,\"reason\":\"runaway \\\"algo\\\"\\n\\u0001é/\",\"request_id\":\"5f0c…\",\"ticket\":null}"
        );
        // What serde_json writes for a string is what the encoding writes.
        let mut s = String::new();
        string(&mut s, "a\"b\\c\u{7f}\u{1f}\t");
        assert_eq!(s, serde_json::to_string("a\"b\\c\u{7f}\u{1f}\t").unwrap());
    }

    #[test]
    fn timestamps_have_six_fractional_digits_in_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_738_315_800);
        assert_eq!(format_time(t), "2025-01-31T09:30:00.000000Z");
    }
}
