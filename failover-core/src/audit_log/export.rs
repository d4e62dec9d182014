//! The JSONL export of the audit log (format 2) and its offline verification.
//!
//! A header line, one line per log entry in index order, then one line with the tree
//! head:
//!
//! ```text
//! {"audit_export":2}
//! {"index":0,"leaf":"<hex>","encoding":"tp-audit-v1","entry":{"action":"engage","actor":…,"at":…,"control":"kill_switch","details":{…},"position":…,"reason":…,"request_id":…,"ticket":null}}
//! …
//! {"tree_head":{"size":N,"root":"<hex>"}}
//! ```
//!
//! `entry` is the event's canonical entry, rebuilt from the live event row when the
//! export was taken, written as the JSON object it is: the bytes after the encoding tag
//! and its space are exactly the line's bytes between `"entry":` and the final `}`. The
//! fields a reader sees are the hashed bytes themselves; nothing is repeated beside
//! them. `leaf` is the leaf hash the log recorded when the event was appended. An
//! entry whose event row is gone is written as `"entry":null` followed by its `control`
//! and `position` (such a line never verifies).
//!
//! Every entry line has exactly this layout, keys in this order, no whitespace:
//! verification reads the index, the leaf and the tag at their places, hashes
//! `tag ␠ entry` and compares it with `leaf`, checks the indices run 0, 1, 2 … and
//! checks the root of the recorded leaves against the head. A line in any other layout
//! is refused, so no field can be added, repeated or moved beside the hashed bytes.
//!
//! Format 1 (before the header line existed) repeated every field beside the entry;
//! verification refuses it and says to export again.

use super::entry::{AuditRecord, ENCODING_VERSION};
use super::merkle::{Hash, RightEdge};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::io::BufRead;

/// The export format [`ExportLine::line`] writes and [`verify_export`] reads.
pub const EXPORT_FORMAT: u32 = 2;

/// The first line of an export: `{"audit_export":2}`.
pub fn header_line() -> String {
    format!("{{\"audit_export\":{EXPORT_FORMAT}}}")
}

/// One entry line of an export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportLine {
    /// The entry's index in the log (0, 1, 2 …).
    pub index: u64,
    /// The control of the event, as the log records it.
    pub control: String,
    /// The event's position, as the log records it.
    pub position: u64,
    /// The event as its row is now (None when the row is gone).
    pub record: Option<AuditRecord>,
    /// The leaf hash recorded at append time (hex).
    pub leaf: String,
}

/// The serde shape of an entry line, for reading one whole (not for verifying).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    index: u64,
    leaf: String,
    encoding: String,
    entry: Option<AuditRecord>,
    control: Option<String>,
    position: Option<u64>,
}

impl ExportLine {
    /// The line (without its newline), in the layout verification requires.
    pub fn line(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("{\"index\":");
        out.push_str(&self.index.to_string());
        out.push_str(",\"leaf\":\"");
        out.push_str(&self.leaf);
        out.push_str("\",\"encoding\":\"");
        out.push_str(ENCODING_VERSION);
        out.push_str("\",\"entry\":");
        match &self.record {
            Some(r) => out.push_str(&r.canonical()[ENCODING_VERSION.len() + 1..]),
            None => {
                out.push_str("null,\"control\":");
                super::entry::json_string(&mut out, &self.control);
                out.push_str(",\"position\":");
                out.push_str(&self.position.to_string());
            }
        }
        out.push('}');
        out
    }

    /// Reads an entry line whole (any key order; this is not a verification).
    pub fn parse(text: &str) -> Result<ExportLine, String> {
        let w: Wire = serde_json::from_str(text).map_err(|e| format!("not an export line: {e}"))?;
        if w.encoding != ENCODING_VERSION {
            return Err(format!(
                "entry {} is encoded as {:?}, which this version does not read",
                w.index, w.encoding
            ));
        }
        let (control, position) = match &w.entry {
            Some(r) => (r.control.clone(), r.position),
            None => (
                w.control.unwrap_or_default(),
                w.position.unwrap_or_default(),
            ),
        };
        Ok(ExportLine {
            index: w.index,
            control,
            position,
            record: w.entry,
            leaf: w.leaf,
        })
    }
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

#[derive(Deserialize)]
struct HeadLine {
    tree_head: HeadFields,
}

#[derive(Deserialize)]
struct HeadFields {
    size: u64,
    root: String,
}

fn parse_head(text: &[u8]) -> Result<TreeHead, String> {
    let h: HeadLine = serde_json::from_slice(text).map_err(|e| format!("tree head: {e}"))?;
    let root = parse_hex(&h.tree_head.root).ok_or("tree head: root is not 64 hex digits")?;
    Ok(TreeHead {
        size: h.tree_head.size,
        root,
    })
}

/// Checks the header line; the error says what to do with another format.
fn check_header(line: &[u8]) -> Result<(), String> {
    if line == header_line().as_bytes() {
        return Ok(());
    }
    if line.starts_with(b"{\"index\":") {
        return Err(format!(
            "this export is in format 1 (no header line, every field repeated beside the entry); this safetyctl verifies format {EXPORT_FORMAT} only: export the log again with `safetyctl audit export`"
        ));
    }
    #[derive(Deserialize)]
    struct Header {
        audit_export: u64,
    }
    match serde_json::from_slice::<Header>(line) {
        Ok(h) => Err(format!(
            "this export is in format {}; this safetyctl verifies format {EXPORT_FORMAT} only: verify it with the safetyctl that wrote it, or export the log again with this one",
            h.audit_export
        )),
        Err(_) => Err(format!(
            "the first line is not the header {}: this is not an audit log export",
            header_line()
        )),
    }
}

/// Reads the entry lines of an export (for naming entries another export lacks);
/// stops at the head line.
pub fn read_entries(reader: impl BufRead) -> Result<Vec<ExportLine>, Finding> {
    let mut out = Vec::new();
    for (n, text) in reader.lines().enumerate() {
        let line = n as u64 + 1;
        let text = text.map_err(|e| malformed(line, format!("cannot read: {e}")))?;
        if text.is_empty() {
            continue;
        }
        if line == 1 {
            check_header(text.as_bytes()).map_err(|e| malformed(line, e))?;
            continue;
        }
        if text.starts_with("{\"tree_head\"") {
            break;
        }
        out.push(ExportLine::parse(&text).map_err(|e| malformed(line, e))?);
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

/// An entry line split at the places its layout fixes.
struct Split<'a> {
    index: u64,
    leaf: &'a [u8],
    encoding: &'a [u8],
    /// The bytes between `"entry":` and the line's final `}`.
    entry: &'a [u8],
}

/// Splits `{"index":N,"leaf":"<64 hex>","encoding":"<tag>","entry":…}`; `None` when the
/// line has another layout.
fn split(line: &[u8]) -> Option<Split<'_>> {
    let rest = line.strip_prefix(b"{\"index\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let index = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"leaf\":\"")?;
    let (leaf, rest) = (rest.get(..64)?, rest.get(64..)?);
    let rest = rest.strip_prefix(b"\",\"encoding\":\"")?;
    let tag = rest.iter().position(|&b| b == b'"')?;
    let (encoding, rest) = (&rest[..tag], &rest[tag..]);
    let rest = rest.strip_prefix(b"\",\"entry\":")?;
    let entry = rest.strip_suffix(b"}")?;
    Some(Split {
        index,
        leaf,
        encoding,
        entry,
    })
}

/// The control and position of an entry (or of a gone row's line), read as JSON: only
/// to name a line in a finding.
fn names(line: &[u8]) -> (Option<u64>, Option<String>) {
    #[derive(Deserialize)]
    struct Names<'a> {
        #[serde(borrow)]
        control: Cow<'a, str>,
        position: u64,
    }
    #[derive(Deserialize)]
    struct Gone<'a> {
        #[serde(borrow)]
        entry: Option<Names<'a>>,
        #[serde(borrow)]
        control: Option<Cow<'a, str>>,
        position: Option<u64>,
    }
    match serde_json::from_slice::<Gone<'_>>(line) {
        Ok(Gone { entry: Some(n), .. }) => (Some(n.position), Some(n.control.into_owned())),
        Ok(g) => (g.position, g.control.map(Cow::into_owned)),
        Err(_) => (None, None),
    }
}

/// The leaf hash of `tag ␠ entry`: SHA-256(0x00 ‖ tag ‖ 0x20 ‖ entry).
fn entry_leaf(tag: &[u8], entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(tag);
    h.update(b" ");
    h.update(entry);
    h.finalize().into()
}

/// Verifies an export read from `reader`, calling `progress` with the bytes read so
/// far every few thousand lines. Ok with the head and leaves; otherwise the first
/// thing wrong, by line order.
pub fn verify_export(
    mut reader: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<Verified, Finding> {
    let mut indices: Vec<u64> = Vec::new();
    let mut leaves: Vec<Hash> = Vec::new();
    // From the first line whose index is not its place on: each line's position and
    // control, to name a missing or moved entry.
    let mut irregular: Option<(usize, u64)> = None;
    let mut named: Vec<(Option<u64>, Option<String>)> = Vec::new();
    let mut first_edit: Option<Finding> = None;
    let mut header = false;
    let mut head = None;
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut text: Vec<u8> = Vec::with_capacity(1024);
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
        if !header {
            check_header(line).map_err(|e| malformed(lines, e))?;
            header = true;
            continue;
        }
        if head.is_some() {
            return Err(malformed(lines, "a line after the tree head".into()));
        }
        if line.starts_with(b"{\"tree_head\"") {
            head = Some((parse_head(line).map_err(|e| malformed(lines, e))?, lines));
            continue;
        }
        let Some(l) = split(line) else {
            return Err(malformed(
                lines,
                "not an entry line of format 2: {\"index\":N,\"leaf\":\"<hex>\",\"encoding\":\"tp-audit-v1\",\"entry\":{…}} with nothing else, in this order, without whitespace".into(),
            ));
        };
        let at = |problem| {
            let (position, control) = names(line);
            Finding {
                index: Some(l.index),
                position,
                control,
                line: lines,
                problem,
            }
        };
        if l.encoding != ENCODING_VERSION.as_bytes() {
            return Err(at(Problem::Malformed(format!(
                "the entry is encoded as {:?}, which this version does not read",
                String::from_utf8_lossy(l.encoding)
            ))));
        }
        let recorded = std::str::from_utf8(l.leaf)
            .ok()
            .and_then(parse_hex)
            .ok_or_else(|| at(Problem::Malformed("leaf is not 64 hex digits".into())))?;
        if first_edit.is_none() {
            let edited = if l.entry.starts_with(b"null") {
                Some("the event row is gone from the database")
            } else if !l.entry.starts_with(b"{") || entry_leaf(l.encoding, l.entry) != recorded {
                Some("the entry (the event's fields) does not hash to the leaf recorded when it was appended")
            } else {
                None
            };
            if let Some(why) = edited {
                first_edit = Some(at(Problem::Edited(why.to_owned())));
            }
        }
        if irregular.is_none() && l.index != indices.len() as u64 {
            irregular = Some((indices.len(), lines));
        }
        if irregular.is_some() {
            named.push(names(line));
        }
        indices.push(l.index);
        leaves.push(recorded);
    }
    progress(bytes);
    if !header {
        return Err(malformed(
            lines,
            "the file is empty: an export has a header, its entries and a tree head".into(),
        ));
    }
    if let Some((k, line)) = irregular {
        if first_edit.as_ref().is_none_or(|f| f.line > line) {
            let wanted = k as u64;
            let found = indices[k..].iter().position(|index| *index == wanted);
            let (position, control) = found.map_or((None, None), |i| named[i].clone());
            return Err(Finding {
                index: Some(wanted),
                position,
                control,
                line,
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
    use super::super::merkle::leaf_hash;
    use super::*;
    use serde_json::json;

    fn export(reasons: &[&str]) -> (Vec<String>, TreeHead) {
        let mut tree = RightEdge::new();
        let mut lines = vec![header_line()];
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
            let leaf = leaf_hash(record.canonical().as_bytes());
            tree.push(leaf);
            lines.push(
                ExportLine {
                    index: i as u64,
                    control: record.control.clone(),
                    position: record.position,
                    record: Some(record),
                    leaf: hex(&leaf),
                }
                .line(),
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
    fn a_line_is_valid_json_whose_entry_is_the_canonical_entry() {
        let (lines, _) = export(&["a \"quoted\" reason\n", "b"]);
        let l = ExportLine::parse(&lines[1]).unwrap();
        let record = l.record.clone().unwrap();
        assert_eq!(record.reason.as_deref(), Some("a \"quoted\" reason\n"));
        assert_eq!(ExportLine::parse(&l.line()).unwrap(), l);
        assert_eq!(l.line(), lines[1]);
        assert_eq!(
            hex(&leaf_hash(record.canonical().as_bytes())),
            l.leaf,
            "the line's leaf is the canonical entry's"
        );
    }

    #[test]
    fn verification_names_the_first_bad_line() {
        let (lines, head) = export(&["a \"quoted\" reason", "b", "c", "d"]);
        assert_eq!(check(&lines).unwrap().head, head);

        // A readable field edited: it is the hashed bytes.
        let mut edited = lines.clone();
        edited[2] = edited[2].replacen("\"reason\":\"b\"", "\"reason\":\"x\"", 1);
        assert_ne!(edited[2], lines[2]);
        let f = check(&edited).unwrap_err();
        assert_eq!((f.index, f.position), (Some(1), Some(11)), "{f}");
        assert!(matches!(f.problem, Problem::Edited(_)), "{f}");

        // A field added or repeated beside the entry (a reader would see it) is refused,
        // and so is the same line re-formatted.
        for other in [
            lines[2].replacen("{\"index\":1,", "{\"index\":1,\"reason\":\"x\",", 1),
            lines[2].replacen("}}", "},\"entry\":{}}", 1),
            lines[2].replace(",\"", ", \""),
        ] {
            let mut added = lines.clone();
            added[2] = other;
            let f = check(&added).unwrap_err();
            assert!(
                matches!(f.problem, Problem::Malformed(_) | Problem::Edited(_)),
                "{f}"
            );
            assert_eq!(f.line, 3, "{f}");
        }

        // The same index twice, two lines swapped, one removed.
        let mut twice = lines.clone();
        twice[3] = twice[2].clone();
        let f = check(&twice).unwrap_err();
        assert_eq!(f.index, Some(2), "{f}");
        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        let f = check(&swapped).unwrap_err();
        assert_eq!(
            (f.index, f.position, &f.problem),
            (Some(1), Some(11), &Problem::Reordered),
            "{f}"
        );
        let mut missing = lines.clone();
        missing.remove(3);
        let f = check(&missing).unwrap_err();
        assert_eq!((f.index, &f.problem), (Some(2), &Problem::Missing), "{f}");

        // A line after the head.
        let mut after = lines.clone();
        after.push(lines[1].clone());
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

    #[test]
    fn an_export_of_another_format_is_refused_saying_to_export_again() {
        let (lines, _) = export(&["a"]);
        let old = vec![
            "{\"index\":0,\"control\":\"kill_switch\",\"position\":10}".to_owned(),
            lines[2].clone(),
        ];
        let f = check(&old).unwrap_err();
        assert!(f.to_string().contains("format 1"), "{f}");
        assert!(f.to_string().contains("export the log again"), "{f}");
        let mut newer = lines.clone();
        newer[0] = "{\"audit_export\":3}".into();
        let f = check(&newer).unwrap_err();
        assert!(f.to_string().contains("format 3"), "{f}");
    }
}
