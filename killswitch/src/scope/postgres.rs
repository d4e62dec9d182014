//! Scopes in PostgreSQL (feature `postgres`), in the kill switch's database: the
//! root of every tree is its `kill_switch_state` row.
//!
//! * Table `scopes`: one row per node, its own mode and last change; operators read
//!   it by hand: `SELECT path, mode, reason, updated_by FROM scopes ORDER BY path;`
//! * Table `scope_events`: the append-only trail, each row an entry of the audit log.
//! * Each change is one round trip to `scope_apply`, which decides everything against
//!   the locked rows and sends `NOTIFY scope_changed` with the delta of the change.
//! * `scope_effective(path)` reads the kill switch and the node's ancestors in one
//!   statement.
//! * Settings are the kill switch's (`TRADEPULSE_KILL_SWITCH_POSTGRES__*`): both live
//!   in one database, migrated together.

use super::{
    relax_what, DecidedBy, EffectiveScope, Error, ScopeAction, ScopeChange, ScopeDelta, ScopeEvent,
    ScopeMode, ScopePath, ScopeRefusal, ScopeState, ScopeStore, APPROVAL_ACTION,
};
use failover_core::authority::{other_change, refusal_from_status};
use failover_core::postgres::{
    interpret_payload, unexpected_status, ApplyCall, ApplyColumns, ListenOptions, Notified,
    PgChangeFeed, PgPool, Verdict,
};
use failover_core::{
    Applied, Audit, AuditError, Authority, ChangeRef, DbError, DbErrorKind, Position, Precondition,
};
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

/// The NOTIFY channel; the payload is the delta of one change as JSON.
pub const CHANNEL: &str = "scope_changed";

/// The health and metrics component name of the scope store.
pub const COMPONENT: &str = "scope";

const APPLY: &str =
    "SELECT o_status AS status, o_path AS path, o_mode AS mode, o_reason AS reason, \
    o_updated_by AS updated_by, o_ticket AS ticket, o_updated_at AS updated_at, \
    o_created_by AS created_by, o_position AS position, o_other_position AS other_position, \
    o_other_actor AS other_actor, o_other_what AS other_what, o_other_at AS other_at, \
    o_approval_id AS approval_id, o_expires_at AS expires_at, o_break_glass AS break_glass, \
    o_version AS version, o_since_event AS since_event \
    FROM scope_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// Where `scope_apply` answers a pending approval and a broken glass.
const APPLY_COLUMNS: ApplyColumns = ApplyColumns {
    pending_id: "approval_id",
    expires_at: "expires_at",
    break_glass: Some("break_glass"),
};
const COLUMNS: &str = "path, mode, reason, updated_by, ticket, updated_at, created_by, position";
const EFFECTIVE: &str = "SELECT o_path AS path, o_own AS own, o_effective AS effective, \
    o_root AS root, o_decided_by AS decided_by, o_actor AS actor, o_reason AS reason, \
    o_at AS at, o_position AS position FROM scope_effective($1)";
const CHANGES: &str = "SELECT st.version, st.position, \
    (SELECT request_id FROM scope_events WHERE version = $1 ORDER BY position DESC LIMIT 1) AS since_event, \
    (SELECT request_id FROM scope_events WHERE position = st.position) AS head_event, \
    coalesce((SELECT array_agg(path ORDER BY path COLLATE \"C\") FROM scopes WHERE version > $1), '{}') AS paths, \
    coalesce((SELECT array_agg(mode ORDER BY path COLLATE \"C\") FROM scopes WHERE version > $1), '{}') AS modes \
    FROM scope_store_state st WHERE st.id = 1";
const HISTORY: &str =
    "SELECT position, request_id, path, action, from_mode, to_mode, reason, actor, \
    ticket, at, login, authority, approval_id, break_glass FROM scope_events \
    WHERE ($1::TEXT IS NULL OR path = $1) ORDER BY position DESC LIMIT $2";
/// One event, named as the apply function names the change in force.
const EVENT_AT: &str = "SELECT position AS other_position, actor AS other_actor, \
    scope_event_what(e) AS other_what, at AS other_at FROM scope_events e WHERE position = $1";
/// Candidates for a near miss: paths within two characters of the length.
const NEAR: &str = "SELECT path FROM scopes WHERE abs(length(path) - length($1)) <= 2 \
    ORDER BY path COLLATE \"C\" LIMIT 10000";

/// Scopes in PostgreSQL.
#[derive(Debug)]
pub struct PostgresScopeStore {
    pool: PgPool,
    changes: PgChangeFeed<ScopeChange>,
}

fn db_error(op: &'static str, message: String) -> Error {
    Error::Database {
        source: DbError::new(DbErrorKind::Permanent, op, None, message),
    }
}

fn mode(op: &'static str, text: &str) -> Result<ScopeMode, Error> {
    text.parse().map_err(|e| {
        db_error(
            op,
            format!("the database holds {e}; run the migrations of this version"),
        )
    })
}

fn path(op: &'static str, text: &str) -> Result<ScopePath, Error> {
    ScopePath::parse(text).map_err(|e| db_error(op, format!("the database holds a bad path: {e}")))
}

fn state_from(op: &'static str, r: &Row) -> Result<ScopeState, Error> {
    Ok(ScopeState {
        path: path(op, r.get("path"))?,
        mode: mode(op, r.get("mode"))?,
        reason: r.get("reason"),
        updated_by: r.get("updated_by"),
        ticket: r.get("ticket"),
        updated_at: r.get("updated_at"),
        created_by: r.get("created_by"),
        position: Position::from_i64(r.get("position")),
    })
}

/// The newest position: what a (re)connected listener publishes; a reader that
/// holds less reads what changed since its version.
async fn current(pool: &PgPool) -> Result<ScopeChange, DbError> {
    let sql = "SELECT position FROM scope_store_state WHERE id = 1";
    let row = pool.query_opt("scope.current", sql, &[]).await?;
    let r = row.ok_or_else(|| {
        DbError::new(
            DbErrorKind::SchemaMissing,
            "scope.current",
            None,
            "scope_store_state has no row id = 1".into(),
        )
    })?;
    Ok(ScopeChange::at(Position::from_i64(r.get("position"))))
}

/// The change at `position`, carrying the delta of the one scope it set when it has
/// a version to follow from (a reader at `version - 1` applies it as is).
fn one_change(
    position: Position,
    version: u64,
    since_event: Option<Uuid>,
    head: Uuid,
    scope: (ScopePath, ScopeMode),
) -> ScopeChange {
    ScopeChange {
        position,
        delta: version.checked_sub(1).map(|since| ScopeDelta {
            since,
            since_event,
            version,
            position,
            head_event: Some(head),
            scopes: vec![scope],
        }),
    }
}

/// The delta a `scope_changed` notification carries.
#[derive(Debug, serde::Deserialize)]
struct NotifiedDelta {
    position: u64,
    version: u64,
    since_event: Option<Uuid>,
    head_event: Uuid,
    path: String,
    mode: String,
}

impl NotifiedDelta {
    fn change(self) -> Option<ScopeChange> {
        let scope = (ScopePath::parse(&self.path).ok()?, self.mode.parse().ok()?);
        let change = one_change(
            Position(self.position),
            self.version,
            self.since_event,
            self.head_event,
            scope,
        );
        change.delta.is_some().then_some(change)
    }
}

/// A payload with the delta is published as is; a bare position means "newer".
fn interpret(payload: &str, held: Position) -> Notified<ScopeChange> {
    let decode = |p: &str| serde_json::from_str::<NotifiedDelta>(p).ok()?.change();
    interpret_payload(payload, held, decode, |p| Some(ScopeChange::at(p)))
}

failover_core::pg_feed_store!(PostgresScopeStore {
    env_prefix: crate::postgres::ENV_PREFIX,
    component: COMPONENT,
    migrations: "killswitch" => crate::postgres::MIGRATIONS,
    error: Error,
    item: ScopeChange,
    channel: CHANNEL,
    events_table: "scope_events",
    reload: current,
    interpret: interpret,
});

/// A command as `scope_apply` takes it.
#[derive(Debug, Clone, Copy)]
enum Command {
    Create,
    Set(ScopeMode),
}

impl PostgresScopeStore {
    /// Sets how the change listener probes and reconnects.
    #[must_use]
    pub fn with_listen_options(mut self, options: ListenOptions) -> Self {
        self.changes.set_listen_options(options);
        self
    }

    /// The change that produced the state at `position` (read back to name it in a
    /// refusal the apply function decided under the scope's lock).
    async fn event_at(&self, position: Position) -> Result<Option<ChangeRef>, Error> {
        let row = self
            .pool
            .query_opt(
                "scope.event_at",
                EVENT_AT,
                &[(&position.as_i64(), Type::INT8)],
            )
            .await?;
        Ok(row.as_ref().and_then(other_change))
    }

    async fn near_miss(&self, text: &str) -> Result<Option<ScopePath>, Error> {
        let rows = self
            .pool
            .query("scope.near_miss", NEAR, &[(&text, Type::TEXT)])
            .await?;
        let known: Vec<ScopePath> = rows
            .iter()
            .filter_map(|r| ScopePath::parse(r.get("path")).ok())
            .collect();
        Ok(ScopePath::near_miss(text, &known))
    }

    async fn unknown(&self, text: &str) -> Error {
        match self.near_miss(text).await {
            Ok(did_you_mean) => Error::Control(ScopeRefusal::UnknownScope {
                path: text.to_owned(),
                did_you_mean,
            }),
            Err(e) => e,
        }
    }

    async fn apply(
        &self,
        target: &ScopePath,
        command: Command,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        const OP: &str = "scope.apply";
        audit.validate(failover_core::Safety::Tighten, "")?;
        let request_id = audit.request_id();
        let (action, to) = match command {
            Command::Create => (ScopeAction::Create, ScopeMode::Normal),
            Command::Set(to) => (ScopeAction::SetMode, to),
        };
        let precondition = audit.precondition();
        // Safe to send again on a retry: the request id makes it idempotent.
        let row = self
            .pool
            .query_one(
                OP,
                APPLY,
                &[
                    (&request_id, Type::UUID),
                    (&action.as_str(), Type::TEXT),
                    (&target.as_str(), Type::TEXT),
                    (&to.as_str(), Type::TEXT),
                    (&audit.reason(), Type::TEXT),
                    (&audit.actor(), Type::TEXT),
                    (&audit.ticket(), Type::TEXT),
                    (&audit.authority().as_str(), Type::TEXT),
                    (&precondition.expected(), Type::INT8),
                    (&precondition.required(), Type::BOOL),
                    (&audit.break_glass(), Type::BOOL),
                ],
            )
            .await
            .map_err(|e| Error::from(e.during_write()))?;
        let status: String = row.get("status");
        let other_what = || {
            row.get::<_, Option<String>>("other_what")
                .unwrap_or_default()
        };
        match status.as_str() {
            "already_exists" => {
                return Err(Error::Control(ScopeRefusal::AlreadyExists {
                    path: target.clone(),
                }))
            }
            "near_miss" => {
                return Err(Error::Control(ScopeRefusal::NearMiss {
                    path: target.clone(),
                    existing: path(OP, &other_what())?,
                }))
            }
            "parent_missing" => {
                return Err(Error::Control(ScopeRefusal::ParentMissing {
                    path: target.clone(),
                    parent: path(OP, &other_what())?,
                }))
            }
            "unknown_scope" => return Err(self.unknown(target.as_str()).await),
            "ticket_required" => {
                return Err(Error::InvalidAudit(AuditError::TicketRequired {
                    action: other_what(),
                }))
            }
            _ => {}
        }
        let state = state_from(OP, &row)?;
        let what = relax_what(target, state.mode, to);
        let name = |_| -> Result<String, Error> { Ok(what.clone()) };
        let call = ApplyCall::new(APPROVAL_ACTION, audit, state.position, &name);
        match call.decode(&row, &APPLY_COLUMNS)? {
            Verdict::Applied { replayed: true } => return Ok(Applied::replayed(state)),
            Verdict::Applied { replayed: false } => {}
            Verdict::Control(status) => {
                return Err(match status.as_str() {
                    // `scope_apply` checks the step before the precondition; a state that
                    // moved since the caller read it is named first, as in memory.
                    "step_too_large" if matches!(precondition, Precondition::At(seen) if seen != state.position) =>
                    {
                        let other = self.event_at(state.position).await?;
                        let moved = refusal_from_status(
                            "precondition_failed",
                            &what,
                            request_id,
                            precondition,
                            state.position,
                            other,
                        );
                        moved.map_or_else(|| db_error(OP, status.clone()), Error::from)
                    }
                    "step_too_large" => Error::Control(ScopeRefusal::StepTooLarge {
                        path: target.clone(),
                        from: state.mode,
                        to,
                    }),
                    s => unexpected_status(OP, s).into(),
                });
            }
        }
        let version = row.get::<_, Option<i64>>("version").unwrap_or(0).max(0) as u64;
        let scope = (state.path.clone(), state.mode);
        let since_event = row.get("since_event");
        let change = one_change(state.position, version, since_event, request_id, scope);
        self.changes.feed().publish(change);
        Ok(Applied::new(state))
    }
}

#[async_trait::async_trait]
impl ScopeStore for PostgresScopeStore {
    async fn create_scope(
        &self,
        path: &ScopePath,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        self.apply(path, Command::Create, audit).await
    }

    async fn set_scope_mode(
        &self,
        path: &str,
        mode: ScopeMode,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, Error> {
        let path = ScopePath::parse(path)?;
        self.apply(&path, Command::Set(mode), audit).await
    }

    async fn scope(&self, path: &str) -> Result<Option<ScopeState>, Error> {
        let path = ScopePath::parse(path)?;
        let sql = format!("SELECT {COLUMNS} FROM scopes WHERE path = $1");
        let row = self
            .pool
            .query_opt("scope.get", &sql, &[(&path.as_str(), Type::TEXT)])
            .await?;
        row.map(|r| state_from("scope.get", &r)).transpose()
    }

    async fn scopes(&self, under: Option<&ScopePath>) -> Result<Vec<ScopeState>, Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM scopes WHERE ($1::TEXT IS NULL OR path = $1 \
             OR starts_with(path, $1 || '/')) ORDER BY path COLLATE \"C\""
        );
        let under = under.map(ScopePath::as_str);
        let rows = self
            .pool
            .query("scope.list", &sql, &[(&under, Type::TEXT)])
            .await?;
        rows.iter().map(|r| state_from("scope.list", r)).collect()
    }

    async fn effective(&self, text: &str) -> Result<EffectiveScope, Error> {
        const OP: &str = "scope.effective";
        let target = ScopePath::parse(text)?;
        let row = self
            .pool
            .query_opt(OP, EFFECTIVE, &[(&target.as_str(), Type::TEXT)])
            .await?;
        let Some(r) = row else {
            return Err(self.unknown(text).await);
        };
        let decided_by = if r.get::<_, bool>("root") {
            DecidedBy::Root
        } else {
            DecidedBy::Scope(path(OP, r.get("decided_by"))?)
        };
        Ok(EffectiveScope {
            path: target,
            own: mode(OP, r.get("own"))?,
            effective: mode(OP, r.get("effective"))?,
            decided_by,
            actor: r.get("actor"),
            reason: r.get("reason"),
            at: r.get("at"),
            position: Position::from_i64(r.get("position")),
        })
    }

    async fn changes_since(&self, since: u64) -> Result<ScopeDelta, Error> {
        const OP: &str = "scope.changes_since";
        let since_i = i64::try_from(since).unwrap_or(i64::MAX);
        let r = self
            .pool
            .query_opt(OP, CHANGES, &[(&since_i, Type::INT8)])
            .await?
            .ok_or_else(|| Error::SchemaMissing {
                source: DbError::new(
                    DbErrorKind::SchemaMissing,
                    OP,
                    None,
                    "scope_store_state has no row id = 1".into(),
                ),
            })?;
        let paths: Vec<String> = r.get("paths");
        let modes: Vec<String> = r.get("modes");
        let scopes = paths
            .iter()
            .zip(&modes)
            .map(|(p, m)| Ok((path(OP, p)?, mode(OP, m)?)))
            .collect::<Result<_, Error>>()?;
        let position = Position::from_i64(r.get("position"));
        Ok(ScopeDelta {
            since,
            since_event: r.get("since_event"),
            version: r.get::<_, i64>("version").max(0) as u64,
            position,
            head_event: r.get("head_event"),
            scopes,
        })
    }

    async fn scope_history(
        &self,
        under: Option<&ScopePath>,
        limit: usize,
    ) -> Result<Vec<ScopeEvent>, Error> {
        const OP: &str = "scope.history";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let target = under.map(ScopePath::as_str);
        let rows = self
            .pool
            .query(OP, HISTORY, &[(&target, Type::TEXT), (&limit, Type::INT8)])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ScopeEvent {
                    position: Position::from_i64(r.get("position")),
                    request_id: r.get("request_id"),
                    path: path(OP, r.get("path"))?,
                    action: ScopeAction::parse(r.get("action"))
                        .ok_or_else(|| db_error(OP, "unknown scope action".into()))?,
                    from_mode: r
                        .get::<_, Option<&str>>("from_mode")
                        .map(|m| mode(OP, m))
                        .transpose()?,
                    to_mode: mode(OP, r.get("to_mode"))?,
                    reason: r.get("reason"),
                    actor: r.get("actor"),
                    ticket: r.get("ticket"),
                    at: r.get("at"),
                    login: r.get("login"),
                    authority: r.get::<_, Option<&str>>("authority").map(|a| match a {
                        "operator" => Authority::Operator,
                        _ => Authority::Supervisor,
                    }),
                    approval_id: r.get("approval_id"),
                    break_glass: r.get("break_glass"),
                })
            })
            .collect()
    }
}
