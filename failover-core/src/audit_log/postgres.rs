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

/// The log as one consistent snapshot: every entry with the event's live fields, and
/// the head.
#[derive(Debug, Clone)]
pub struct LogSnapshot {
    /// One line per entry, in index order.
    pub lines: Vec<ExportLine>,
    /// The head as `audit_log_head` states it.
    pub head: TreeHead,
}

const LOG: &str = "SELECT idx, control, position, leaf_hash FROM audit_log ORDER BY idx";
const KILL_SWITCH: &str = "SELECT position, request_id::TEXT, action, actor, reason, ticket, at, \
    authority, engaged, login, version, approval_id::TEXT, break_glass FROM kill_switch_events";
const SYMBOL_MODE: &str = "SELECT position, request_id::TEXT, command, actor, reason, ticket, at, \
    authority, from_mode, login, relaxes, symbol, to_mode, version, withdrawals_halted, \
    approval_id::TEXT, break_glass, from_rate, from_burst, to_rate, to_burst \
    FROM symbol_mode_events";
const SCOPE: &str = "SELECT position, request_id::TEXT, action, actor, reason, ticket, at, \
    authority, approval_id::TEXT, break_glass, from_mode, login, path, to_mode, version \
    FROM scope_events";
const APPROVALS: &str = "SELECT position, request_id::TEXT, event, actor, reason, ticket, at, \
    action, detail, login, what FROM approval_events";
const LEASE: &str = "SELECT id, event, holder, at, resource, token, \
    (extract(epoch FROM ttl) * 1000000)::BIGINT FROM fencing_lease_events";

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

/// Reads the whole log, each entry joined with its event row as it is now, and the
/// head, in one repeatable-read snapshot (entries commit in index order, so the
/// snapshot holds a prefix of the log). `progress(done, total)` is called as entries
/// are joined. An entry whose event row is gone gets no `entry`.
pub async fn read_log(pool: &PgPool, progress: impl Fn(u64, u64)) -> Result<LogSnapshot, DbError> {
    let (log, mut events, size, edge) = pool
        .run("audit_log.read", move |c| {
            Box::pin(async move {
                c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let head = c
                    .query_one("SELECT size, edge FROM audit_log_head WHERE id = 1", &[])
                    .await?;
                let log = c.query(LOG, &[]).await?;
                let mut events: HashMap<(&'static str, i64), AuditRecord> = HashMap::new();
                for (control, table, sql) in [
                    ("kill_switch", "kill_switch_events", KILL_SWITCH),
                    ("symbol_mode", "symbol_mode_events", SYMBOL_MODE),
                    ("scope", "scope_events", SCOPE),
                    ("approvals", "approval_events", APPROVALS),
                    ("lease", "fencing_lease_events", LEASE),
                ] {
                    let exists: bool = c
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                        .await?
                        .get(0);
                    if !exists {
                        continue;
                    }
                    for r in c.query(sql, &[]).await? {
                        events.insert((control, r.get(0)), record(control, &r));
                    }
                }
                c.batch_execute("COMMIT").await?;
                Ok((
                    log,
                    events,
                    head.get::<_, i64>(0),
                    head.get::<_, Vec<Vec<u8>>>(1),
                ))
            })
        })
        .await?;
    let total = log.len() as u64;
    let mut lines = Vec::with_capacity(log.len());
    for (i, l) in log.iter().enumerate() {
        let control: String = l.get(1);
        let position: i64 = l.get(2);
        let leaf: Vec<u8> = l.get(3);
        let key = match control.as_str() {
            "kill_switch" => "kill_switch",
            "symbol_mode" => "symbol_mode",
            "scope" => "scope",
            "approvals" => "approvals",
            _ => "lease",
        };
        let (record, entry) = match events.remove(&(key, position)) {
            Some(r) => {
                let entry = r.canonical();
                (r, Some(entry))
            }
            None => (
                AuditRecord {
                    control: control.clone(),
                    position: position as u64,
                    request_id: None,
                    action: String::new(),
                    actor: String::new(),
                    reason: None,
                    ticket: None,
                    at: String::new(),
                    details: BTreeMap::new(),
                },
                None,
            ),
        };
        lines.push(ExportLine {
            index: l.get::<_, i64>(0) as u64,
            record,
            entry,
            leaf: hex(&leaf),
        });
        if i.is_multiple_of(4096) {
            progress(i as u64, total);
        }
    }
    progress(total, total);
    Ok(LogSnapshot {
        lines,
        head: head_of(size, edge)?,
    })
}
