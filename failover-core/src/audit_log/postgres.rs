//! Reading the log from PostgreSQL, and publishing checkpoints.

use super::entry::{format_time, AuditRecord};
use super::export::{hex, ExportLine, TreeHead};
use super::merkle::{Hash, RightEdge};
use super::note::{sign_note, Checkpoint, NoteError};
use crate::errors::{DbError, DbErrorKind};
use crate::postgres::PgPool;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;
use tokio_postgres::types::Type;

/// The current tree head (`audit_log_head`): size and root.
pub async fn tree_head(pool: &PgPool) -> Result<TreeHead, DbError> {
    let row = pool
        .query_one(
            "audit_log.tree_head",
            "SELECT size, edge FROM audit_log_head WHERE id = 1",
            &[],
        )
        .await?;
    head_of(row.get(0), row.get(1))
}

fn head_of(size: i64, edge: Vec<Vec<u8>>) -> Result<TreeHead, DbError> {
    let corrupt = || {
        DbError::new(
            DbErrorKind::Permanent,
            "audit_log.tree_head",
            None,
            format!("audit_log_head is corrupt (size {size}, {} edge hashes): the tree head was written outside the log's trigger; restore it from a backup and verify an export against the last checkpoint", edge.len()),
        )
    };
    let edge: Vec<Hash> = edge
        .iter()
        .map(|h| <Hash>::try_from(h.as_slice()).map_err(|_| corrupt()))
        .collect::<Result<_, _>>()?;
    let tree = RightEdge::from_parts(u64::try_from(size).map_err(|_| corrupt())?, edge)
        .ok_or_else(corrupt)?;
    Ok(TreeHead {
        size: tree.size(),
        root: tree.root(),
    })
}

/// Why a checkpoint was not published.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The tree head could not be read.
    #[error("reading the audit log's tree head: {0}")]
    Db(#[from] DbError),
    /// The note could not be made (a bad key name or origin).
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// Reads the current tree head and returns it as a checkpoint note signed by `key`
/// under `key_name`; sets the gauges `audit_checkpoint_last_timestamp_seconds` and
/// `audit_checkpoint_size`. Call it on a schedule and keep the notes outside the
/// database (object storage, another site): an export verifies against any of them.
pub async fn publish_checkpoint(
    pool: &PgPool,
    origin: &str,
    key_name: &str,
    key: &SigningKey,
) -> Result<String, CheckpointError> {
    super::describe_metrics();
    let head = tree_head(pool).await?;
    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size: head.size,
        root: head.root,
    };
    if origin.is_empty() || origin.contains('\n') {
        return Err(NoteError::Malformed("the origin is one non-empty line".into()).into());
    }
    let note = sign_note(&checkpoint.body(), key_name, key)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("audit_checkpoint_last_timestamp_seconds").set(now);
    metrics::gauge!("audit_checkpoint_size").set(head.size as f64);
    Ok(note)
}

const LOG: &str = "SELECT idx, control, position, leaf_hash FROM audit_log \
    WHERE idx >= $1 AND idx < $2 ORDER BY idx";
const KILL_SWITCH: &str = "SELECT position, request_id::TEXT, action, actor, reason, ticket, at, \
    authority, engaged, login, version, approval_id::TEXT, break_glass FROM kill_switch_events \
    WHERE position = ANY($1)";
const SYMBOL_MODE: &str = "SELECT position, request_id::TEXT, command, actor, reason, ticket, at, \
    authority, from_mode, login, relaxes, symbol, to_mode, version, withdrawals_halted, \
    approval_id::TEXT, break_glass, from_rate, from_burst, to_rate, to_burst \
    FROM symbol_mode_events WHERE position = ANY($1)";
const SCOPE: &str = "SELECT position, request_id::TEXT, action, actor, reason, ticket, at, \
    authority, approval_id::TEXT, break_glass, from_mode, login, path, to_mode, version \
    FROM scope_events WHERE position = ANY($1)";
const APPROVALS: &str = "SELECT position, request_id::TEXT, event, actor, reason, ticket, at, \
    action, detail, login, what FROM approval_events WHERE position = ANY($1)";
const LEASE: &str = "SELECT id, event, holder, at, resource, token, \
    (extract(epoch FROM ttl) * 1000000)::BIGINT FROM fencing_lease_events WHERE id = ANY($1)";

type Row = tokio_postgres::Row;

fn s(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::String)
}

/// An event row of `control` as the fields of its canonical entry (the Rust side
/// of `tradepulse_audit_entry`).
fn record(control: &str, r: &Row) -> AuditRecord {
    let at = |i| format_time(r.get::<_, SystemTime>(i));
    match control {
        "kill_switch" => AuditRecord {
            control: control.into(),
            position: r.get::<_, i64>(0) as u64,
            request_id: r.get(1),
            action: r.get(2),
            actor: r.get(3),
            reason: r.get(4),
            ticket: r.get(5),
            at: at(6),
            details: BTreeMap::from([
                ("approval_id".to_owned(), s(r.get(11))),
                ("authority".to_owned(), s(r.get(7))),
                ("break_glass".to_owned(), json!(r.get::<_, bool>(12))),
                ("engaged".to_owned(), json!(r.get::<_, bool>(8))),
                ("login".to_owned(), s(r.get(9))),
                ("version".to_owned(), json!(r.get::<_, i64>(10))),
            ]),
        },
        "symbol_mode" => AuditRecord {
            control: control.into(),
            position: r.get::<_, i64>(0) as u64,
            request_id: r.get(1),
            action: r.get(2),
            actor: r.get(3),
            reason: r.get(4),
            ticket: r.get(5),
            at: at(6),
            details: BTreeMap::from([
                ("authority".to_owned(), s(r.get(7))),
                ("from_mode".to_owned(), s(r.get(8))),
                ("login".to_owned(), s(r.get(9))),
                ("relaxes".to_owned(), json!(r.get::<_, bool>(10))),
                ("symbol".to_owned(), s(r.get(11))),
                ("to_mode".to_owned(), s(r.get(12))),
                ("version".to_owned(), json!(r.get::<_, i64>(13))),
                (
                    "withdrawals_halted".to_owned(),
                    json!(r.get::<_, Option<bool>>(14)),
                ),
                ("approval_id".to_owned(), s(r.get(15))),
                ("break_glass".to_owned(), json!(r.get::<_, bool>(16))),
                ("from_rate".to_owned(), json!(r.get::<_, Option<i32>>(17))),
                ("from_burst".to_owned(), json!(r.get::<_, Option<i32>>(18))),
                ("to_rate".to_owned(), json!(r.get::<_, Option<i32>>(19))),
                ("to_burst".to_owned(), json!(r.get::<_, Option<i32>>(20))),
            ]),
        },
        "scope" => AuditRecord {
            control: control.into(),
            position: r.get::<_, i64>(0) as u64,
            request_id: r.get(1),
            action: r.get(2),
            actor: r.get(3),
            reason: r.get(4),
            ticket: r.get(5),
            at: at(6),
            details: BTreeMap::from([
                ("authority".to_owned(), s(r.get(7))),
                ("approval_id".to_owned(), s(r.get(8))),
                ("break_glass".to_owned(), json!(r.get::<_, bool>(9))),
                ("from_mode".to_owned(), s(r.get(10))),
                ("login".to_owned(), s(r.get(11))),
                ("path".to_owned(), s(r.get(12))),
                ("to_mode".to_owned(), s(r.get(13))),
                ("version".to_owned(), json!(r.get::<_, i64>(14))),
            ]),
        },
        "approvals" => AuditRecord {
            control: control.into(),
            position: r.get::<_, i64>(0) as u64,
            request_id: r.get(1),
            action: r.get(2),
            actor: r.get(3),
            reason: r.get(4),
            ticket: r.get(5),
            at: at(6),
            details: BTreeMap::from([
                ("action".to_owned(), json!(r.get::<_, String>(7))),
                ("detail".to_owned(), s(r.get(8))),
                ("login".to_owned(), json!(r.get::<_, String>(9))),
                ("what".to_owned(), json!(r.get::<_, String>(10))),
            ]),
        },
        _ => AuditRecord {
            control: control.into(),
            position: r.get::<_, i64>(0) as u64,
            request_id: None,
            action: r.get(1),
            actor: r.get(2),
            reason: None,
            ticket: None,
            at: at(3),
            details: BTreeMap::from([
                ("resource".to_owned(), json!(r.get::<_, String>(4))),
                ("token".to_owned(), json!(r.get::<_, i64>(5))),
                ("ttl_us".to_owned(), json!(r.get::<_, i64>(6))),
            ]),
        },
    }
}

/// The registered controls besides [`CONTROLS`] whose events table exists: each with the
/// statement reading its rows (as JSON, and their `at`) and its encoding.
const REGISTERED: &str = "SELECT control, \
    format('SELECT to_jsonb(t)::TEXT, (to_jsonb(t)->>''at'')::TIMESTAMPTZ FROM %s t \
            WHERE t.%I = ANY($1)', to_regclass(events_table), position_key), \
    position_key, action_key, actor_key, has_reason, has_request_id, has_ticket, \
    detail_keys, detail_defaults::TEXT \
    FROM tradepulse_controls \
    WHERE to_regclass(events_table) IS NOT NULL AND NOT control = ANY($1)";

/// A control encoded from its registration (`tradepulse_register_control`).
struct Registered {
    control: String,
    sql: String,
    position: String,
    action: String,
    actor: String,
    reason: bool,
    request_id: bool,
    ticket: bool,
    details: Vec<String>,
    defaults: serde_json::Map<String, Value>,
}

impl Registered {
    fn of(r: &Row) -> Self {
        let defaults: Option<String> = r.get(9);
        Self {
            control: r.get(0),
            sql: r.get(1),
            position: r.get(2),
            action: r.get(3),
            actor: r.get(4),
            reason: r.get(5),
            request_id: r.get(6),
            ticket: r.get(7),
            details: r.get(8),
            defaults: defaults
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_default(),
        }
    }

    /// An event row (its JSON and its `at`) as the fields of its canonical entry: the
    /// Rust side of the generic branch of `tradepulse_audit_entry`.
    fn record(&self, row: &Value, at: Option<SystemTime>) -> Option<AuditRecord> {
        let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_owned);
        let when = |has: bool, k: &str| if has { text(k) } else { None };
        Some(AuditRecord {
            control: self.control.clone(),
            position: row.get(&self.position)?.as_u64()?,
            request_id: when(self.request_id, "request_id"),
            action: text(&self.action).unwrap_or_default(),
            actor: text(&self.actor).unwrap_or_default(),
            reason: when(self.reason, "reason"),
            ticket: when(self.ticket, "ticket"),
            at: at.map(format_time).unwrap_or_default(),
            details: self
                .details
                .iter()
                .map(|k| {
                    let v = row.get(k).or_else(|| self.defaults.get(k));
                    (k.clone(), v.cloned().unwrap_or(Value::Null))
                })
                .collect(),
        })
    }
}

/// Entries [`write_log`] reads per round trip.
pub const EXPORT_BATCH: u64 = 5_000;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log failed.
    #[error("reading the audit log: {0}")]
    Db(#[from] DbError),
    /// Writing the export failed.
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// The controls whose event tables exist, with the statement reading their rows.
const CONTROLS: [(&str, &str, &str); 5] = [
    ("kill_switch", "kill_switch_events", KILL_SWITCH),
    ("symbol_mode", "symbol_mode_events", SYMBOL_MODE),
    ("scope", "scope_events", SCOPE),
    ("approvals", "approval_events", APPROVALS),
    ("lease", "fencing_lease_events", LEASE),
];

/// Writes the export of the log (format [`EXPORT_FORMAT`](super::EXPORT_FORMAT): the
/// header, one line per entry joined with its event row as it is now, the head) to
/// `out` as it reads, [`EXPORT_BATCH`] entries a round trip, and returns the head.
/// The entries are read by [`for_each_entry`]; `progress(done, total)` is called after
/// each batch.
pub async fn write_log<W: std::io::Write + Send>(
    pool: &PgPool,
    out: &mut W,
    progress: impl Fn(u64, u64),
) -> Result<TreeHead, ExportError> {
    writeln!(out, "{}", super::header_line())?;
    let head = for_each_entry(pool, None, progress, |line| {
        out.write_all(line.line().as_bytes())?;
        out.write_all(b"\n")
    })
    .await?;
    writeln!(out, "{}", head.line())?;
    out.flush()?;
    Ok(head)
}

/// Reads the log's entries in index order and hands each to `each`, joined with its
/// event row as it is now (`record` is `None` when the row is gone), then returns the
/// head the entries add up to. With `controls`, only the entries of those controls are
/// handed over, and only their event tables are read.
///
/// The head is read first; the entries below it are then read by index range (keyset
/// pagination), [`EXPORT_BATCH`] entries a round trip, each batch one bounded
/// statement per control under the pool's retry policy, and handed over before the
/// next range is read, so memory stays at one batch whatever the log's size. Entries
/// are never changed once appended and commit in index order, so the pages add up to
/// the log the head describes; the event rows are read as they are when their page is
/// read (an entry whose row was changed since its append does not verify, which is the
/// point). `progress(done, total)` is called after each batch. An error from `each`
/// (writing the output) stops the read and is returned as [`ExportError::Write`].
pub async fn for_each_entry(
    pool: &PgPool,
    controls: Option<&[&str]>,
    progress: impl Fn(u64, u64),
    mut each: impl FnMut(ExportLine) -> std::io::Result<()>,
) -> Result<TreeHead, ExportError> {
    let head = tree_head(pool).await?;
    let wanted = |control: &str| controls.is_none_or(|c| c.contains(&control));
    // The registry is the last table asked about (a database migrated before it has none).
    let mut tables: Vec<&str> = CONTROLS.iter().map(|(_, t, _)| *t).collect();
    tables.push("tradepulse_controls");
    let exists: Vec<bool> = pool
        .query_one(
            "audit_log.export.tables",
            "SELECT array_agg(to_regclass(t) IS NOT NULL ORDER BY n) FROM unnest($1::TEXT[]) WITH ORDINALITY AS u(t, n)",
            &[(&tables, Type::TEXT_ARRAY)],
        )
        .await?
        .get(0);
    let builtin: Vec<&str> = CONTROLS.iter().map(|(c, _, _)| *c).collect();
    let registered: Vec<Registered> = if exists.last() == Some(&true) {
        pool.query(
            "audit_log.export.controls",
            REGISTERED,
            &[(&builtin, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(Registered::of)
        .collect()
    } else {
        Vec::new()
    };
    let total = head.size;
    let mut from = 0u64;
    while from < total {
        let to = (from + EXPORT_BATCH).min(total);
        let (lo, hi) = (from as i64, to as i64);
        let log: Vec<Row> = pool
            .query(
                "audit_log.export.entries",
                LOG,
                &[(&lo, Type::INT8), (&hi, Type::INT8)],
            )
            .await?
            .into_iter()
            .filter(|l| wanted(l.get::<_, &str>(1)))
            .collect();
        let mut events: HashMap<(String, i64), AuditRecord> = HashMap::new();
        for (i, (control, _, sql)) in CONTROLS.iter().enumerate() {
            let positions: Vec<i64> = log
                .iter()
                .filter(|l| l.get::<_, &str>(1) == *control)
                .map(|l| l.get(2))
                .collect();
            if positions.is_empty() || !exists.get(i).copied().unwrap_or(false) {
                continue;
            }
            for r in pool
                .query(
                    "audit_log.export.events",
                    sql,
                    &[(&positions, Type::INT8_ARRAY)],
                )
                .await?
            {
                events.insert((control.to_string(), r.get(0)), record(control, &r));
            }
        }
        for reg in &registered {
            let positions: Vec<i64> = log
                .iter()
                .filter(|l| l.get::<_, &str>(1) == reg.control)
                .map(|l| l.get(2))
                .collect();
            if positions.is_empty() {
                continue;
            }
            for r in pool
                .query(
                    "audit_log.export.events",
                    &reg.sql,
                    &[(&positions, Type::INT8_ARRAY)],
                )
                .await?
            {
                let row: Value = serde_json::from_str(r.get(0)).unwrap_or(Value::Null);
                if let Some(record) = reg.record(&row, r.get(1)) {
                    events.insert((reg.control.clone(), record.position as i64), record);
                }
            }
        }
        for l in &log {
            let control: String = l.get(1);
            let position: i64 = l.get(2);
            let leaf: Vec<u8> = l.get(3);
            each(ExportLine {
                index: l.get::<_, i64>(0) as u64,
                record: events.remove(&(control.clone(), position)),
                control,
                position: position as u64,
                leaf: hex(&leaf),
            })?;
        }
        from = to;
        progress(from, total);
    }
    progress(total, total);
    Ok(head)
}
