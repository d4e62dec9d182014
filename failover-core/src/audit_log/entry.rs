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
//! | `kill_switch` | `position`            | `action`        | `actor`| as recorded                 | `approval_id`, `authority`, `break_glass`, `engaged`, `login`, `version` |
//! | `symbol_mode` | `position`            | `command`       | `actor`| as recorded                 | `approval_id`, `authority`, `break_glass`, `from_burst`, `from_mode`, `from_rate`, `login`, `relaxes`, `symbol`, `to_burst`, `to_mode`, `to_rate`, `version`, `withdrawals_halted` |
//! | `scope`       | `position`            | `action`        | `actor`| as recorded                 | `approval_id`, `authority`, `break_glass`, `from_mode`, `login`, `path`, `to_mode`, `version` |
//! | `approvals`   | `position`            | `event`         | `actor`| as recorded                 | `action`, `detail`, `login`, `what` |
//! | `lease`       | the event's `id`      | `event`         | `holder`| null                       | `resource`, `token`, `ttl_us` |
//!
//! A `break_glass` absent from a row (written before the column existed) encodes as
//! `false`, what the column's default makes of it.
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
    /// `kill_switch`, `symbol_mode`, `scope`, `approvals` or `lease`.
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
        let mut out = String::with_capacity(320);
        encode(
            &mut out,
            &Fields {
                control: &self.control,
                position: self.position,
                request_id: self.request_id.as_deref(),
                action: &self.action,
                actor: &self.actor,
                reason: self.reason.as_deref(),
                ticket: self.ticket.as_deref(),
                at: &self.at,
            },
            |out| {
                for (i, (k, v)) in self.details.iter().enumerate() {
                    key(out, k, i == 0);
                    value(out, v);
                }
            },
        );
        out
    }
}

/// The fields of an entry besides `details`, borrowed.
pub(crate) struct Fields<'a> {
    pub(crate) control: &'a str,
    pub(crate) position: u64,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) action: &'a str,
    pub(crate) actor: &'a str,
    pub(crate) reason: Option<&'a str>,
    pub(crate) ticket: Option<&'a str>,
    pub(crate) at: &'a str,
}

/// Writes the canonical entry of `f` into `out`; `details` writes the members of the
/// details object (sorted, separated as [`key`] does).
pub(crate) fn encode(out: &mut String, f: &Fields<'_>, details: impl FnOnce(&mut String)) {
    out.push_str(ENCODING_VERSION);
    out.push(' ');
    out.push('{');
    key(out, "action", true);
    string(out, f.action);
    key(out, "actor", false);
    string(out, f.actor);
    key(out, "at", false);
    string(out, f.at);
    key(out, "control", false);
    string(out, f.control);
    key(out, "details", false);
    out.push('{');
    details(out);
    out.push('}');
    key(out, "position", false);
    let _ = write!(out, "{}", f.position);
    key(out, "reason", false);
    opt(out, f.reason);
    key(out, "request_id", false);
    opt(out, f.request_id);
    key(out, "ticket", false);
    opt(out, f.ticket);
    out.push('}');
}

/// Writes a JSON value given as its raw text canonically: as is when it already is
/// (`true`, `false`, `null`, a plain integer, a string without escapes), otherwise
/// parsed and rewritten.
pub(crate) fn raw_value(out: &mut String, raw: &str) {
    let b = raw.as_bytes();
    let plain_int = !b.is_empty()
        && b.iter()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || (i == 0 && *c == b'-' && b.len() > 1));
    let plain_str = b.len() >= 2 && b[0] == b'"' && !b.contains(&b'\\');
    if plain_int || plain_str || raw == "true" || raw == "false" || raw == "null" {
        out.push_str(raw);
    } else {
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => value(out, &v),
            Err(_) => out.push_str(raw),
        }
    }
}

/// A timestamp as the encoding writes it: UTC RFC 3339 with six fractional digits.
pub fn format_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

pub(crate) fn key(out: &mut String, k: &str, first: bool) {
    if !first {
        out.push(',');
    }
    string(out, k);
    out.push(':');
}

/// Writes `s` as a JSON string, escaped as the encoding escapes.
pub(crate) fn json_string(out: &mut String, s: &str) {
    string(out, s)
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole; the escapes are all ASCII,
    // so a run never splits a character.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
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
