//! The JSONL export of the audit log and its offline verification.
//!
//! One line per log entry in index order, then one line with the tree head:
//!
//! ```text
//! {"index":0,"control":"kill_switch","position":…,"request_id":…,"action":"engage","actor":…,"reason":…,"ticket":null,"at":"…","details":{…},"entry":"tp-audit-v1 {…}","leaf":"<hex>"}
//! …
//! {"tree_head":{"size":N,"root":"<hex>"}}
//! ```
//!
//! `entry` is the canonical entry recomputed from the live event row when the export
//! was taken (null when the row is gone); `leaf` is the leaf hash the log recorded when
//! the event was appended. Verification rebuilds every entry from the line's fields,
//! checks its leaf hash against `leaf`, checks the indices run 0, 1, 2 … and checks the
//! root of the recorded leaves against the head.

use super::entry::{json_string, key, raw_value, AuditRecord, ENCODING_VERSION};
use super::merkle::{leaf_hash, Hash, RightEdge};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;

/// One entry line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLine {
    /// The entry's index in the log (0, 1, 2 …).
    pub index: u64,
    /// The event.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The canonical entry recomputed from the live row (null when the row is gone).
    pub entry: Option<String>,
    /// The leaf hash recorded at append time (hex).
    pub leaf: String,
}

/// The last line of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// The number of entries.
    pub size: u64,
    /// The root of their tree.
    pub root: Hash,
}

impl TreeHead {
    /// The head line: `{"tree_head":{"size":N,"root":"<hex>"}}`.
    pub fn line(&self) -> String {
        serde_json::json!({"tree_head": {"size": self.size, "root": hex(&self.root)}}).to_string()
    }
}

/// The hex of a hash.
pub fn hex(h: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(h.len() * 2);
    for b in h {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// A hash from its hex.
pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// What is wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry rebuilt from the line's fields does not hash to the leaf recorded
    /// at append time: the event was changed (in the file or in the database).
    Edited(String),
    /// An index is absent: an entry was removed.
    Missing,
    /// An index appears out of order: entries were moved.
    Reordered,
    /// The recorded leaves do not hash to the head's root (or the head's size is not
    /// the number of entries).
    WrongRoot(String),
    /// A line is not an export line.
    Malformed(String),
}

/// The first thing wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The first bad index, when there is one.
    pub index: Option<u64>,
    /// The position of the event at that index, when known.
    pub position: Option<u64>,
    /// The control of that event, when known.
    pub control: Option<String>,
    /// The 1-based line of the file.
    pub line: u64,
    /// What is wrong.
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match (self.index, self.position, &self.control) {
            (Some(i), Some(p), Some(c)) => {
                format!("index {i} ({c} position {p}, line {})", self.line)
            }
            (Some(i), _, _) => format!("index {i} (line {})", self.line),
            _ => format!("line {}", self.line),
        };
        match &self.problem {
            Problem::Edited(why) => write!(f, "edited: {at}: {why}"),
            Problem::Missing => write!(
                f,
                "missing: {at}: no line has this index, an entry was removed"
            ),
            Problem::Reordered => write!(
                f,
                "reordered: {at}: this index appears out of order, entries were moved"
            ),
            Problem::WrongRoot(why) => write!(f, "wrong root: {why}"),
            Problem::Malformed(why) => write!(f, "malformed: {at}: {why}"),
        }
    }
}

/// A verified export: its head and the recorded leaves, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The head, checked against the leaves.
    pub head: TreeHead,
    /// The leaf hashes, index by index.
    pub leaves: Vec<Hash>,
}

enum Line {
    Entry(Box<ExportLine>),
    Head(TreeHead),
}

#[derive(Deserialize)]
struct HeadLine {
    tree_head: HeadFields,
}

#[derive(Deserialize)]
struct HeadFields {
    size: u64,
    root: String,
}

fn parse_line(text: &str) -> Result<Line, String> {
    if text.starts_with("{\"tree_head\"") {
        let h: HeadLine = serde_json::from_str(text).map_err(|e| format!("tree head: {e}"))?;
        let root = parse_hex(&h.tree_head.root).ok_or("tree head: root is not 64 hex digits")?;
        return Ok(Line::Head(TreeHead {
            size: h.tree_head.size,
            root,
        }));
    }
    serde_json::from_str::<ExportLine>(text)
        .map(|l| Line::Entry(Box::new(l)))
        .map_err(|e| format!("not an export line: {e}"))
}

/// Reads the entry lines of an export (for naming entries another export lacks);
/// stops at the head line.
pub fn read_entries(reader: impl BufRead) -> Result<Vec<ExportLine>, Finding> {
    let mut out = Vec::new();
    for (n, text) in reader.lines().enumerate() {
        let text = text.map_err(|e| malformed(n as u64 + 1, format!("cannot read: {e}")))?;
        match parse_line(&text).map_err(|e| malformed(n as u64 + 1, e))? {
            Line::Entry(l) => out.push(*l),
            Line::Head(_) => break,
        }
    }
    Ok(out)
}

fn malformed(line: u64, why: String) -> Finding {
    Finding {
        index: None,
        position: None,
        control: None,
        line,
        problem: Problem::Malformed(why),
    }
}

/// One entry line, its values kept as the line's raw JSON text: a value already in
/// canonical form (a string without escapes, an integer, a boolean, null) is copied
/// into the rebuilt entry as it is written, anything else is decoded and rewritten.
#[derive(Deserialize)]
struct RawLine<'a> {
    index: u64,
    #[serde(borrow)]
    control: Cow<'a, str>,
    position: u64,
    #[serde(borrow)]
    request_id: &'a RawValue,
    #[serde(borrow)]
    action: &'a RawValue,
    #[serde(borrow)]
    actor: &'a RawValue,
    #[serde(borrow)]
    reason: &'a RawValue,
    #[serde(borrow)]
    ticket: &'a RawValue,
    #[serde(borrow)]
    at: &'a RawValue,
    #[serde(borrow)]
    details: BTreeMap<Cow<'a, str>, &'a RawValue>,
    #[serde(borrow)]
    entry: Option<&'a RawValue>,
    #[serde(borrow)]
    leaf: &'a str,
}

impl RawLine<'_> {
    /// The canonical entry of the line's fields: the layout of
    /// [`AuditRecord::canonical`], from raw values.
    fn canonical(&self, out: &mut String) {
        out.clear();
        out.push_str(ENCODING_VERSION);
        out.push_str(" {");
        key(out, "action", true);
        raw_value(out, self.action.get());
        key(out, "actor", false);
        raw_value(out, self.actor.get());
        key(out, "at", false);
        raw_value(out, self.at.get());
        key(out, "control", false);
        json_string(out, &self.control);
        key(out, "details", false);
        out.push('{');
        for (i, (k, v)) in self.details.iter().enumerate() {
            key(out, k, i == 0);
            raw_value(out, v.get());
        }
        out.push('}');
        key(out, "position", false);
        let _ = write!(out, "{}", self.position);
        key(out, "reason", false);
        raw_value(out, self.reason.get());
        key(out, "request_id", false);
        raw_value(out, self.request_id.get());
        key(out, "ticket", false);
        raw_value(out, self.ticket.get());
        out.push('}');
    }
}

/// True when the JSON string `raw` (with its quotes and escapes) holds `text`: the runs
/// between escapes compared as they are, the simple escapes decoded on the way;
/// anything else (`\u` escapes) decoded whole.
fn same_string(raw: &str, text: &str) -> bool {
    let slow = || serde_json::from_str::<String>(raw).is_ok_and(|s| s == text);
    let r = raw.as_bytes();
    if r.len() < 2 || r[0] != b'"' || r[r.len() - 1] != b'"' {
        return false;
    }
    let (r, t) = (&r[1..r.len() - 1], text.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < r.len() {
        let run = r[i..]
            .iter()
            .position(|&b| b == b'\\')
            .unwrap_or(r.len() - i);
        if t.get(j..j + run) != Some(&r[i..i + run]) {
            return false;
        }
        i += run;
        j += run;
        if i == r.len() {
            break;
        }
        let decoded = match r.get(i + 1) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'r') => b'\r',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            _ => return slow(),
        };
        if t.get(j) != Some(&decoded) {
            return false;
        }
        i += 2;
        j += 1;
    }
    j == t.len()
}

/// Verifies an export read from `reader`, calling `progress` with the bytes read so
/// far every few thousand lines. Ok with the head and leaves; otherwise the first
/// thing wrong, by line order.
pub fn verify_export(
    mut reader: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<Verified, Finding> {
    // Per entry line: its index, position and control (as an index into `controls`).
    let mut indices: Vec<(u64, u64, u8)> = Vec::new();
    let mut controls: Vec<String> = Vec::new();
    let mut leaves: Vec<Hash> = Vec::new();
    let mut first_edit: Option<Finding> = None;
    let mut head = None;
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut text: Vec<u8> = Vec::with_capacity(1024);
    let mut rebuilt = String::with_capacity(512);
    loop {
        text.clear();
        let read = reader
            .read_until(b'\n', &mut text)
            .map_err(|e| malformed(lines + 1, format!("cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        lines += 1;
        bytes += read as u64;
        if lines.is_multiple_of(4096) {
            progress(bytes);
        }
        let mut end = text.len();
        while end > 0 && matches!(text[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let line = &text[..end];
        if line.is_empty() {
            continue;
        }
        if head.is_some() {
            return Err(malformed(lines, "a line after the tree head".into()));
        }
        if line.starts_with(b"{\"tree_head\"") {
            let line = std::str::from_utf8(line)
                .map_err(|_| malformed(lines, "the tree head is not UTF-8".into()))?;
            match parse_line(line).map_err(|e| malformed(lines, e))? {
                Line::Head(h) => head = Some((h, lines)),
                Line::Entry(_) => unreachable!("a tree head line parses as a head"),
            }
            continue;
        }
        let l: RawLine<'_> = serde_json::from_slice(line)
            .map_err(|e| malformed(lines, format!("not an export line: {e}")))?;
        let control = match controls.iter().position(|c| *c == l.control) {
            Some(i) => i,
            None => {
                controls.push(l.control.to_string());
                controls.len() - 1
            }
        };
        let at = |problem| Finding {
            index: Some(l.index),
            position: Some(l.position),
            control: Some(l.control.to_string()),
            line: lines,
            problem,
        };
        let recorded = parse_hex(l.leaf)
            .ok_or_else(|| at(Problem::Malformed("leaf is not 64 hex digits".into())))?;
        if first_edit.is_none() {
            l.canonical(&mut rebuilt);
            let edited = match l.entry.map(RawValue::get) {
                None | Some("null") => Some("the event row is gone from the database"),
                Some(e) if !same_string(e, &rebuilt) => {
                    Some("the entry does not match the event's fields")
                }
                Some(_) if leaf_hash(rebuilt.as_bytes()) != recorded => {
                    Some("the event's fields do not hash to the leaf recorded when it was appended")
                }
                Some(_) => None,
            };
            if let Some(why) = edited {
                first_edit = Some(at(Problem::Edited(why.to_owned())));
            }
        }
        indices.push((
            l.index,
            l.position,
            u8::try_from(control).unwrap_or(u8::MAX),
        ));
        leaves.push(recorded);
    }
    progress(bytes);
    let named = |i: usize| {
        let (_, position, control) = indices[i];
        (Some(position), controls.get(usize::from(control)).cloned())
    };
    if let Some(k) = indices
        .iter()
        .enumerate()
        .position(|(k, (index, _, _))| *index != k as u64)
    {
        let wanted = k as u64;
        if first_edit.as_ref().is_none_or(|f| f.line > wanted + 1) {
            let found = indices.iter().position(|(index, _, _)| *index == wanted);
            let (position, control) = found.map_or((None, None), named);
            return Err(Finding {
                index: Some(wanted),
                position,
                control,
                line: k as u64 + 1,
                problem: if found.is_some() {
                    Problem::Reordered
                } else {
                    Problem::Missing
                },
            });
        }
    }
    if let Some(f) = first_edit {
        return Err(f);
    }
    let Some((head, head_line)) = head else {
        return Err(malformed(
            lines,
            "no tree head line at the end: the export was cut short".into(),
        ));
    };
    let n = leaves.len() as u64;
    let wrong = |why: String| Finding {
        index: None,
        position: None,
        control: None,
        line: head_line,
        problem: Problem::WrongRoot(why),
    };
    if head.size != n {
        return Err(wrong(format!(
            "the head says {} entries, the export has {n}",
            head.size
        )));
    }
    let mut tree = RightEdge::new();
    for leaf in &leaves {
        tree.push(*leaf);
    }
    let root = tree.root();
    if root != head.root {
        return Err(wrong(format!(
            "the {n} recorded leaves hash to {}, the head says {}",
            hex(&root),
            hex(&head.root)
        )));
    }
    Ok(Verified { head, leaves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_string_is_compared_through_its_escapes() {
        let text = "tp-audit-v1 {\"a\":\"b\\\\c\\n\u{1}é\"}";
        let raw = serde_json::to_string(text).unwrap();
        assert!(same_string(&raw, text));
        // Written with other (valid) escapes: still the same string.
        assert!(same_string(&raw.replace('é', "\\u00e9"), text));
        assert!(same_string(&raw.replace("\\\"", "\\u0022"), text));
        assert!(!same_string(&raw, &text.replace('b', "x")));
        assert!(!same_string(&raw, &format!("{text} ")));
        assert!(!same_string("\"\"", text));
    }

    fn export(reasons: &[&str]) -> (Vec<String>, TreeHead) {
        let mut tree = RightEdge::new();
        let mut lines = Vec::new();
        for (i, reason) in reasons.iter().enumerate() {
            let record = AuditRecord {
                control: "kill_switch".into(),
                position: 10 + i as u64,
                request_id: None,
                action: "engage".into(),
                actor: "ops:alice".into(),
                reason: Some((*reason).into()),
                ticket: None,
                at: "2025-01-31T09:30:00.000000Z".into(),
                details: [("version".to_owned(), json!(i))].into_iter().collect(),
            };
            let entry = record.canonical();
            let leaf = leaf_hash(entry.as_bytes());
            tree.push(leaf);
            lines.push(
                serde_json::to_string(&ExportLine {
                    index: i as u64,
                    record,
                    entry: Some(entry),
                    leaf: hex(&leaf),
                })
                .unwrap(),
            );
        }
        let head = TreeHead {
            size: tree.size(),
            root: tree.root(),
        };
        lines.push(head.line());
        (lines, head)
    }

    fn check(lines: &[String]) -> Result<Verified, Finding> {
        verify_export(std::io::Cursor::new(lines.join("\n")), |_| {})
    }

    #[test]
    fn verification_names_the_first_bad_line() {
        let (lines, head) = export(&["a \"quoted\" reason", "b", "c", "d"]);
        assert_eq!(check(&lines).unwrap().head, head);

        // Only the entry text changed: the fields still hash to the leaf, but the
        // export no longer says what it recorded.
        let mut entry_only = lines.clone();
        entry_only[1] =
            entry_only[1].replacen("\\\"reason\\\":\\\"b\\\"", "\\\"reason\\\":\\\"x\\\"", 1);
        assert_ne!(entry_only[1], lines[1]);
        let f = check(&entry_only).unwrap_err();
        assert_eq!((f.index, f.position), (Some(1), Some(11)));
        assert!(matches!(f.problem, Problem::Edited(_)), "{f}");

        // The same index twice, and a line after the head.
        let mut twice = lines.clone();
        twice[2] = twice[1].clone();
        let f = check(&twice).unwrap_err();
        assert_eq!(f.index, Some(2), "{f}");
        let mut after = lines.clone();
        after.push(lines[0].clone());
        assert!(matches!(
            check(&after).unwrap_err().problem,
            Problem::Malformed(_)
        ));

        // Cut short: no head.
        let f = check(&lines[..3]).unwrap_err();
        assert!(f.to_string().contains("cut short"), "{f}");

        // A head that claims fewer entries.
        let mut short_head = lines.clone();
        let last = short_head.len() - 1;
        short_head[last] = TreeHead { size: 3, ..head }.line();
        assert!(matches!(
            check(&short_head).unwrap_err().problem,
            Problem::WrongRoot(_)
        ));
    }
}
