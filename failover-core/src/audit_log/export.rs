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

use super::entry::AuditRecord;
use super::merkle::{leaf_hash, Hash, RightEdge};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// Verifies an export read from `reader`, calling `progress` with the bytes read so
/// far every few thousand lines. Ok with the head and leaves; otherwise the first
/// thing wrong, by line order.
pub fn verify_export(
    reader: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<Verified, Finding> {
    // Per line: its index, position, control and whether its entry matched its leaf.
    struct Seen {
        index: u64,
        position: u64,
        control: String,
        edited: Option<String>,
    }
    let mut seen: Vec<Seen> = Vec::new();
    let mut leaves: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut in_order: Vec<Hash> = Vec::new();
    let mut head = None;
    let mut bytes = 0u64;
    let mut lines = 0u64;
    for text in reader.lines() {
        lines += 1;
        let text = text.map_err(|e| malformed(lines, format!("cannot read: {e}")))?;
        bytes += text.len() as u64 + 1;
        if lines % 4096 == 0 {
            progress(bytes);
        }
        if text.is_empty() {
            continue;
        }
        if head.is_some() {
            return Err(malformed(lines, "a line after the tree head".into()));
        }
        match parse_line(&text).map_err(|e| malformed(lines, e))? {
            Line::Head(h) => head = Some((h, lines)),
            Line::Entry(l) => {
                let recorded = parse_hex(&l.leaf).ok_or_else(|| Finding {
                    index: Some(l.index),
                    position: Some(l.record.position),
                    control: Some(l.record.control.clone()),
                    line: lines,
                    problem: Problem::Malformed("leaf is not 64 hex digits".into()),
                })?;
                let rebuilt = l.record.canonical();
                let edited = match &l.entry {
                    None => Some("the event row is gone from the database".to_owned()),
                    Some(e) if *e != rebuilt => {
                        Some("the entry does not match the event's fields".to_owned())
                    }
                    Some(_) if leaf_hash(rebuilt.as_bytes()) != recorded => Some(
                        "the event's fields do not hash to the leaf recorded when it was appended"
                            .to_owned(),
                    ),
                    Some(_) => None,
                };
                if leaves.insert(l.index, recorded).is_some() {
                    return Err(Finding {
                        index: Some(l.index),
                        position: Some(l.record.position),
                        control: Some(l.record.control),
                        line: lines,
                        problem: Problem::Malformed("this index appears twice".into()),
                    });
                }
                in_order.push(recorded);
                seen.push(Seen {
                    index: l.index,
                    position: l.record.position,
                    control: l.record.control,
                    edited,
                });
            }
        }
    }
    progress(bytes);
    for (k, s) in seen.iter().enumerate() {
        let k = k as u64;
        if s.index != k {
            let (problem, at) = if leaves.contains_key(&k) {
                (Problem::Reordered, seen.iter().find(|x| x.index == k))
            } else {
                (Problem::Missing, None)
            };
            return Err(Finding {
                index: Some(k),
                position: at.map(|x| x.position),
                control: at.map(|x| x.control.clone()),
                line: k + 1,
                problem,
            });
        }
        if let Some(why) = &s.edited {
            return Err(Finding {
                index: Some(k),
                position: Some(s.position),
                control: Some(s.control.clone()),
                line: k + 1,
                problem: Problem::Edited(why.clone()),
            });
        }
    }
    let Some((head, head_line)) = head else {
        return Err(malformed(
            lines,
            "no tree head line at the end: the export was cut short".into(),
        ));
    };
    let n = seen.len() as u64;
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
    for leaf in &in_order {
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
    Ok(Verified {
        head,
        leaves: in_order,
    })
}
