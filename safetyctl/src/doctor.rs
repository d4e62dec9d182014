//! `safetyctl doctor`: whether a database is ready for the controls, one line per
//! check with `ok` or `FAIL` and what to do. Exit 0 only when every check passes.
//!
//! The checks, per database the controls' settings name (one when every control
//! reads `TRADEPULSE_POSTGRES__DSN`):
//!
//! * **config** — where each control's DSN comes from;
//! * **connection** — which `host:port` answered, and whether the session is encrypted;
//! * **server** — primary or standby;
//! * **migrations** — every embedded migration of failover-core and of each control
//!   recorded in `failover_core_migrations` (with the same checksum);
//! * **roles** — the four roles of the authority model exist, and which the login holds;
//! * **push** — a NOTIFY from a pooled connection reaches a LISTEN connection;
//! * **kill switch row** — the operators' `SELECT engaged, reason, updated_at FROM
//!   kill_switch_state WHERE id = 1;` and the age of `updated_at`;
//! * **replication** — each standby's replay lag as the primary sees it;
//! * **clock** — the server's clock against this host's;
//! * **connections** — free connection slots, and on PostgreSQL 16+ whether the login
//!   may use `reserved_connections`;
//! * **locks** — sessions holding locks on the controls' state tables for longer than
//!   [`LOCK_AGE`].
//!
//! On a standby (reached because no host of the DSN accepts writes) the checks that
//! only mean something on a primary — push (a standby refuses NOTIFY) and replication
//! as the primary sees it — are reported as skipped, and replication is checked from
//! the standby's side (its WAL receiver). The other checks run and decide the exit
//! code, so doctor can vet a replica before it is promoted; the server line says that
//! the services write only through a primary.
//!
//! Every query goes through the pool's query helpers, each bounded by the operation
//! timeout and the retry budget of the settings.

use crate::cli::{Failure, EXIT_FAILED};
use failover_core::postgres::tokio_postgres::types::Type;
use failover_core::postgres::{
    DbError, Migration, PgPool, PgSettings, PgStore, CORE_MIGRATIONS, SHARED_ENV_PREFIX,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A session holding a lock on a control's state table longer than this is reported.
pub const LOCK_AGE: Duration = Duration::from_secs(2);
/// Clock skew above this fails: ages, staleness and lease expiries mix both clocks.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);
/// A standby whose replay lags more than this fails: a failover to it would lose the
/// writes it has not replayed.
pub const MAX_REPLAY_LAG: Duration = Duration::from_secs(5);
/// How long the push check waits for its own notification.
pub const PUSH_WAIT: Duration = Duration::from_secs(2);

/// The roles of the authority model.
const ROLES: [&str; 4] = [
    "tradepulse_viewer",
    "tradepulse_operator",
    "tradepulse_supervisor",
    "tradepulse_service",
];

/// The controls' state tables, whose locks block every change of a control.
const STATE_TABLES: [&str; 3] = ["kill_switch_state", "symbol_mode_state", "symbol_modes"];

/// One check's outcome: what `--json` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked, e.g. `connection` or `migrations kill_switch`.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do (empty when it passed).
    pub fix: String,
}

impl Check {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// One line for people: `ok    check  detail` or `FAIL  check  detail — fix`.
    pub fn line(&self) -> String {
        if self.ok {
            format!("ok    {:<24} {}", self.check, self.detail)
        } else {
            format!("FAIL  {:<24} {} — {}", self.check, self.detail, self.fix)
        }
    }
}

/// A control as doctor sees it.
struct Control {
    name: &'static str,
    prefix: &'static str,
    set: &'static str,
    migrations: &'static [Migration],
}

fn control<S: PgStore>(name: &'static str) -> Control {
    Control {
        name,
        prefix: S::ENV_PREFIX,
        set: S::MIGRATION_SET,
        migrations: S::MIGRATIONS,
    }
}

fn controls() -> [Control; 3] {
    [
        control::<killswitch::PostgresKillSwitchStore>("kill_switch"),
        control::<symbol_mode::PostgresSymbolModeStore>("symbol_mode"),
        control::<fencing::PostgresLeaseFencer>("fencing"),
    ]
}

/// The database a group of controls shares: their settings and names.
struct Target {
    settings: PgSettings,
    controls: Vec<Control>,
}

/// Runs every check with the settings in the environment.
pub async fn checks() -> Vec<Check> {
    checks_with(|name| std::env::var(name).ok()).await
}

/// Runs every check with the settings `lookup` gives (variable name → value).
pub async fn checks_with(lookup: impl Fn(&str) -> Option<String>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut sources = Vec::new();
    let mut unset = Vec::new();
    for c in controls() {
        let Some(var) = PgSettings::dsn_variable(c.prefix, &lookup) else {
            unset.push(c.name);
            continue;
        };
        match PgSettings::from_lookup(c.prefix, &lookup) {
            Ok(settings) => {
                sources.push(format!("{} from {var}", c.name));
                let key = (settings.redacted_dsn(), settings.tls().clone());
                match targets
                    .iter_mut()
                    .find(|t| (t.settings.redacted_dsn(), t.settings.tls().clone()) == key)
                {
                    Some(t) => t.controls.push(c),
                    None => targets.push(Target {
                        settings,
                        controls: vec![c],
                    }),
                }
            }
            Err(e) => out.push(Check::fail(
                format!("config {}", c.name),
                e.to_string(),
                "correct the variable named",
            )),
        }
    }
    if targets.is_empty() && out.is_empty() {
        out.push(Check::fail(
            "config",
            "no control has a DSN",
            format!("set {SHARED_ENV_PREFIX}_POSTGRES__DSN (every control) or a control's own, e.g. TRADEPULSE_KILL_SWITCH_POSTGRES__DSN"),
        ));
        return out;
    }
    let mut detail = sources.join(", ");
    if !unset.is_empty() {
        detail.push_str(&format!("; not configured (skipped): {}", unset.join(", ")));
    }
    out.insert(0, Check::ok("config", detail));
    let several = targets.len() > 1;
    for target in targets {
        let label = if several {
            format!(
                " [{}]",
                target
                    .controls
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        let mut checks = check_database(&target).await;
        for c in &mut checks {
            c.check.push_str(&label);
        }
        out.extend(checks);
    }
    out
}

/// What the first query found about the server.
struct Server {
    standby: bool,
    read_only: bool,
    encrypted: bool,
    user: String,
    database: String,
    version_num: i32,
    version: String,
}

async fn server(pool: &PgPool) -> Result<Server, DbError> {
    let row = pool
        .query_one(
            "doctor.server",
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', \
             coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
             current_user::text, current_database()::text, \
             current_setting('server_version_num')::int4, current_setting('server_version')",
            &[],
        )
        .await?;
    Ok(Server {
        standby: row.get(0),
        read_only: row.get(1),
        encrypted: row.get(2),
        user: row.get(3),
        database: row.get(4),
        version_num: row.get(5),
        version: row.get(6),
    })
}

async fn check_database(target: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    let settings = &target.settings;
    let tls_mode = settings.tls().mode;
    // The services' own way first: a writable server. Failing that, whatever answers,
    // to say what it is (a standby, say).
    let primary_pool = match PgPool::new("safetyctl_doctor", settings.clone()) {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::fail(
                "connection",
                e.to_string(),
                "correct the variable named",
            ));
            return out;
        }
    };
    let (pool, server) = match server(&primary_pool).await {
        Ok(s) => (primary_pool, s),
        Err(writable) => {
            let any = PgPool::new("safetyctl_doctor", settings.accepting_any_server());
            let reached = match &any {
                Ok(pool) => server(pool).await.ok(),
                Err(_) => None,
            };
            match (any, reached) {
                (Ok(pool), Some(s)) => (pool, s),
                _ => {
                    out.push(Check::fail(
                        "connection",
                        format!("no server answered ({}): {writable}", settings.redacted_dsn()),
                        "check that PostgreSQL runs at the DSN's hosts and ports, that this host may reach them, and the DSN, TLS and password variables",
                    ));
                    return out;
                }
            }
        }
    };
    let host = pool.current_host().unwrap_or_else(|| "?".into());
    out.push(Check::ok(
        "connection",
        format!(
            "{host} answered as {} to database {}; TLS {} (mode {tls_mode}); PostgreSQL {}",
            server.user,
            server.database,
            if server.encrypted { "on" } else { "off" },
            server.version
        ),
    ));
    out.push(if server.standby {
        Check::ok(
            "server",
            format!("{host} is a standby (in recovery, read-only): the services write only through a primary; primary-only checks are skipped"),
        )
    } else if server.read_only {
        Check::fail(
            "server",
            format!("{host} is a primary but read-only (default_transaction_read_only = on)"),
            "the controls cannot write here: ALTER DATABASE … SET default_transaction_read_only = off, or point the DSN at a writable server",
        )
    } else {
        Check::ok(
            "server",
            format!("{host} is a primary (accepts writes)"),
        )
    });
    out.extend(check_migrations(&pool, &target.controls).await);
    out.push(check_roles(&pool, &server).await);
    out.push(if server.standby {
        Check::ok("push", "skipped on a standby (it refuses NOTIFY)")
    } else {
        check_push(&pool).await
    });
    if target.controls.iter().any(|c| c.name == "kill_switch") {
        out.push(check_kill_switch_row(&pool).await);
    }
    out.push(check_replication(&pool, server.standby).await);
    out.push(check_clock(&pool).await);
    out.push(check_headroom(&pool, &server).await);
    out.push(check_locks(&pool).await);
    out
}

async fn table_exists(pool: &PgPool, table: &str) -> Result<bool, DbError> {
    let row = pool
        .query_one(
            "doctor.table_exists",
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&table, Type::TEXT)],
        )
        .await?;
    Ok(row.get(0))
}

async fn check_migrations(pool: &PgPool, controls: &[Control]) -> Vec<Check> {
    let migrate = "run `safetyctl migrate` with the same settings (its login needs CREATE on the database; see the README)";
    // (label, component recorded in failover_core_migrations, embedded migrations)
    let mut sets: Vec<(&str, &str, &[Migration])> =
        vec![("failover_core", "failover_core", CORE_MIGRATIONS)];
    sets.extend(controls.iter().map(|c| (c.name, c.set, c.migrations)));
    let name = |label: &str| format!("migrations {label}");
    let applied: Vec<(String, i64, String)> =
        match table_exists(pool, "failover_core_migrations").await {
            Ok(false) => {
                return sets
                    .iter()
                    .map(|(label, _, _)| {
                        Check::fail(
                            name(label),
                            "not migrated: table failover_core_migrations does not exist",
                            migrate,
                        )
                    })
                    .collect()
            }
            Ok(true) => match pool
                .query(
                    "doctor.migrations",
                    "SELECT component, version, checksum FROM failover_core_migrations",
                    &[],
                )
                .await
            {
                Ok(rows) => rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect(),
                Err(e) => {
                    return vec![Check::fail(
                        "migrations",
                        format!("cannot read failover_core_migrations: {e}"),
                        "grant this login SELECT on failover_core_migrations (tradepulse_viewer), or run doctor as the migrating login",
                    )]
                }
            },
            Err(e) => {
                return vec![Check::fail(
                    "migrations",
                    e.to_string(),
                    "see the connection line",
                )]
            }
        };
    sets.iter()
        .map(|(label, set, migrations)| {
            let mut missing = Vec::new();
            let mut edited = Vec::new();
            for m in *migrations {
                match applied
                    .iter()
                    .find(|(c, v, _)| c == set && *v == m.version)
                {
                    None => missing.push(m.version.to_string()),
                    Some((_, _, sum)) if *sum != m.checksum() => edited.push(m.version.to_string()),
                    Some(_) => {}
                }
            }
            let all: Vec<String> = migrations.iter().map(|m| m.version.to_string()).collect();
            if !missing.is_empty() {
                Check::fail(
                    name(label),
                    format!(
                        "not migrated: version(s) {} of {} missing",
                        missing.join(", "),
                        all.join(", ")
                    ),
                    migrate,
                )
            } else if !edited.is_empty() {
                Check::fail(
                    name(label),
                    format!(
                        "version(s) {} were applied from different SQL than this build embeds",
                        edited.join(", ")
                    ),
                    "a migration was edited after it was applied: find which build migrated this database and reconcile the schema by hand; never edit an applied migration",
                )
            } else {
                Check::ok(name(label), format!("versions {} applied", all.join(", ")))
            }
        })
        .collect()
}

async fn check_roles(pool: &PgPool, server: &Server) -> Check {
    let rows = pool
        .query(
            "doctor.roles",
            "SELECT n, r.oid IS NOT NULL, coalesce(pg_has_role(current_user, r.oid, 'MEMBER'), false) \
             FROM unnest($1::text[]) AS n LEFT JOIN pg_roles r ON r.rolname = n",
            &[(&ROLES.to_vec(), Type::TEXT_ARRAY)],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return Check::fail("roles", e.to_string(), "see the connection line"),
    };
    let mut missing = Vec::new();
    let mut held = Vec::new();
    for r in &rows {
        let (name, exists, has): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        if !exists {
            missing.push(name);
        } else if has {
            held.push(name);
        }
    }
    let holds = if held.is_empty() {
        format!(
            "login {} holds none of them (it may read but change no control: GRANT tradepulse_operator TO {})",
            server.user, server.user
        )
    } else {
        format!("login {} holds {}", server.user, held.join(", "))
    };
    if missing.is_empty() {
        Check::ok("roles", format!("all four present; {holds}"))
    } else {
        Check::fail(
            "roles",
            format!("missing: {}; {holds}", missing.join(", ")),
            "run `safetyctl migrate` as a login with CREATEROLE, or have a DBA run the SQL `safetyctl migrate --print-roles` prints",
        )
    }
}

async fn check_push(pool: &PgPool) -> Check {
    use failover_core::postgres::tokio_postgres::AsyncMessage;
    use futures_util::StreamExt;
    let fix = "push needs LISTEN on the primary itself or a session-mode pool: point …_POSTGRES__LISTEN_DSN there (a transaction pooler cannot pass LISTEN)";
    let started = std::time::Instant::now();
    let (client, mut connection, host) = match pool.connect_dedicated().await {
        Ok(c) => c,
        Err(e) => return Check::fail("push", format!("no LISTEN connection: {e}"), fix),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = connection.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.channel().to_owned());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let channel = format!("safetyctl_doctor_{}", uuid::Uuid::new_v4().simple());
    let result = async {
        tokio::time::timeout(
            PUSH_WAIT,
            client.batch_execute(&format!("LISTEN {channel}")),
        )
        .await
        .map_err(|_| format!("LISTEN on {host} got no answer within {PUSH_WAIT:?}"))?
        .map_err(|e| format!("LISTEN on {host} failed: {e}"))?;
        pool.execute(
            "doctor.notify",
            "SELECT pg_notify($1, 'doctor')",
            &[(&channel, Type::TEXT)],
        )
        .await
        .map_err(|e| format!("NOTIFY failed: {e}"))?;
        let sent = std::time::Instant::now();
        tokio::time::timeout(PUSH_WAIT, async {
            while let Some(got) = rx.recv().await {
                if got == channel {
                    return true;
                }
            }
            false
        })
        .await
        .ok()
        .filter(|got| *got)
        .map(|_| sent.elapsed())
        .ok_or_else(|| {
            format!("a NOTIFY did not reach the LISTEN connection on {host} within {PUSH_WAIT:?}")
        })
    }
    .await;
    driver.abort();
    drop(client);
    match result {
        Ok(took) => Check::ok(
            "push",
            format!(
                "NOTIFY reached LISTEN on {host} in {} ms (round trip {} ms)",
                took.as_millis(),
                started.elapsed().as_millis()
            ),
        ),
        Err(e) => Check::fail("push", e, fix),
    }
}

async fn check_kill_switch_row(pool: &PgPool) -> Check {
    let name = "kill switch row";
    match table_exists(pool, "kill_switch_state").await {
        Ok(true) => {}
        Ok(false) => {
            return Check::fail(
                name,
                "table kill_switch_state does not exist",
                "run `safetyctl migrate`",
            )
        }
        Err(e) => return Check::fail(name, e.to_string(), "see the connection line"),
    }
    let row = pool
        .query_opt(
            "doctor.kill_switch_row",
            "SELECT engaged, reason, updated_at, extract(epoch FROM now() - updated_at)::float8 \
             FROM kill_switch_state WHERE id = 1",
            &[],
        )
        .await;
    match row {
        Ok(Some(r)) => {
            let (engaged, reason, at, age): (bool, String, SystemTime, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            Check::ok(
                name,
                format!(
                    "engaged={engaged} reason={reason:?} updated_at={} ({} ago)",
                    humantime::format_rfc3339_seconds(at),
                    humantime::format_duration(Duration::from_secs(age.max(0.0) as u64))
                ),
            )
        }
        Ok(None) => Check::fail(
            name,
            "kill_switch_state has no row id = 1",
            "run `safetyctl migrate` (it inserts the row); if it stays missing, restore it from the audit trail",
        ),
        Err(e) => Check::fail(name, e.to_string(), "grant this login tradepulse_viewer"),
    }
}

async fn check_replication(pool: &PgPool, standby: bool) -> Check {
    if standby {
        let row = pool
            .query_one(
                "doctor.wal_receiver",
                "SELECT (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                 extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                &[],
            )
            .await;
        return match row {
            Ok(r) => {
                let (status, since): (Option<String>, Option<f64>) = (r.get(0), r.get(1));
                let since = since.map_or("no transaction replayed yet".to_owned(), |s| {
                    format!("last replayed transaction committed {s:.1} s ago")
                });
                match status.as_deref() {
                    Some("streaming") => Check::ok(
                        "replication",
                        format!("standby streaming from its primary; {since}"),
                    ),
                    other => Check::fail(
                        "replication",
                        format!(
                            "standby not streaming (WAL receiver: {}); {since}",
                            other.unwrap_or("none")
                        ),
                        "check primary_conninfo, the primary's reachability and the standby's log",
                    ),
                }
            }
            Err(e) => Check::fail("replication", e.to_string(), "see the connection line"),
        };
    }
    let rows = pool
        .query(
            "doctor.replication",
            "SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local'), \
             state, coalesce(sync_state, ''), extract(epoch FROM replay_lag)::float8 \
             FROM pg_stat_replication",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return Check::fail("replication", e.to_string(), "see the connection line"),
    };
    if rows.is_empty() {
        return Check::ok(
            "replication",
            "no standbys (a failover would have no replica to promote)",
        );
    }
    let mut parts = Vec::new();
    let mut bad = false;
    for r in &rows {
        let (name, addr, state, sync, lag): (String, String, Option<String>, String, Option<f64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some(state) = state else {
            parts.push(format!("{name}@{addr}: details hidden (grant pg_monitor)"));
            continue;
        };
        let lag_text = lag.map_or("replay_lag idle (caught up)".to_owned(), |l| {
            format!("replay_lag {:.0} ms", l * 1000.0)
        });
        if state != "streaming" || lag.is_some_and(|l| l > MAX_REPLAY_LAG.as_secs_f64()) {
            bad = true;
        }
        parts.push(format!("{name}@{addr} {state} {sync}, {lag_text}"));
    }
    if bad {
        Check::fail(
            "replication",
            parts.join("; "),
            format!("a standby is not streaming or lags more than {MAX_REPLAY_LAG:?}: a failover to it loses what it has not replayed; check its log, network and disk"),
        )
    } else {
        Check::ok("replication", parts.join("; "))
    }
}

async fn check_clock(pool: &PgPool) -> Check {
    let before = SystemTime::now();
    let row = pool
        .query_one(
            "doctor.clock",
            "SELECT extract(epoch FROM clock_timestamp())::float8",
            &[],
        )
        .await;
    let after = SystemTime::now();
    let server: f64 = match row {
        Ok(r) => r.get(0),
        Err(e) => return Check::fail("clock", e.to_string(), "see the connection line"),
    };
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let local = (secs(before) + secs(after)) / 2.0;
    let skew = server - local;
    let detail = format!(
        "server clock {} this host's by {:.0} ms (query round trip {} ms)",
        if skew >= 0.0 { "ahead of" } else { "behind" },
        skew.abs() * 1000.0,
        after.duration_since(before).unwrap_or_default().as_millis()
    );
    if skew.abs() > MAX_CLOCK_SKEW.as_secs_f64() {
        Check::fail(
            "clock",
            detail,
            format!("keep both clocks within {MAX_CLOCK_SKEW:?} (chrony or another NTP client on this host and the database server): ages and lease expiries mix them"),
        )
    } else {
        Check::ok("clock", detail)
    }
}

async fn check_headroom(pool: &PgPool, server: &Server) -> Check {
    let row = pool
        .query_one(
            "doctor.connections",
            "SELECT current_setting('max_connections')::int8, \
             current_setting('superuser_reserved_connections')::int8, \
             coalesce(current_setting('reserved_connections', true), '0')::int8, \
             (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await;
    let (max, su_reserved, reserved, used, superuser): (i64, i64, i64, i64, Option<bool>) =
        match row {
            Ok(r) => (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)),
            Err(e) => return Check::fail("connections", e.to_string(), "see the connection line"),
        };
    let superuser = superuser.unwrap_or(false);
    let mut detail = format!(
        "{used} of max_connections {max} in use; {} free for ordinary logins",
        (max - su_reserved - reserved - used).max(0)
    );
    let may_use_reserved = if server.version_num >= 160_000 {
        let held = pool
            .query_one(
                "doctor.reserved_connections",
                "SELECT pg_has_role(current_user, 'pg_use_reserved_connections', 'MEMBER')",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        detail.push_str(&format!(
            "; reserved_connections {reserved}: login {} {}",
            server.user,
            if held {
                "may use them"
            } else {
                "may not use them"
            }
        ));
        held
    } else {
        false
    };
    if superuser {
        detail.push_str(&format!(
            "; login is a superuser (may use the {su_reserved} superuser slots)"
        ));
    }
    let mut free = max - su_reserved - reserved - used;
    if may_use_reserved {
        free += reserved;
    }
    if superuser {
        free += su_reserved + reserved;
    }
    let floor = (max / 20).max(2);
    if free < floor {
        Check::fail(
            "connections",
            detail,
            "the controls may not get a connection when they need one: end idle sessions, lower other clients' pool sizes or raise max_connections; on PostgreSQL 16+ set reserved_connections and GRANT pg_use_reserved_connections to the controls' logins",
        )
    } else {
        Check::ok("connections", detail)
    }
}

async fn check_locks(pool: &PgPool) -> Check {
    let rows = pool
        .query(
            "doctor.locks",
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
             coalesce(a.state, ''), \
             extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8, \
             string_agg(DISTINCT c.relname || ' (' || l.mode || ')', ', ') \
             FROM pg_locks l \
             JOIN pg_class c ON c.oid = l.relation \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.mode <> 'AccessShareLock' \
               AND c.relname = ANY($1::text[]) \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND a.pid <> pg_backend_pid() \
               AND now() - coalesce(a.xact_start, a.query_start) > make_interval(secs => $2) \
             GROUP BY a.pid, a.application_name, a.usename, a.state, a.xact_start, a.query_start \
             ORDER BY 5 DESC",
            &[
                (&STATE_TABLES.to_vec(), Type::TEXT_ARRAY),
                (&LOCK_AGE.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return Check::fail("locks", e.to_string(), "see the connection line"),
    };
    if rows.is_empty() {
        return Check::ok(
            "locks",
            format!("no session has held a lock on the controls' state tables for more than {LOCK_AGE:?}"),
        );
    }
    let mut sessions = Vec::new();
    let mut fixes = Vec::new();
    for r in &rows {
        let (pid, app, user, state, age, locks): (i32, String, String, String, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        sessions.push(format!(
            "pid {pid} (application {app:?}, user {user}, {state}, for {age:.1} s) holds {locks}"
        ));
        fixes.push(format!("SELECT pg_terminate_backend({pid});"));
    }
    Check::fail(
        "locks",
        sessions.join("; "),
        format!(
            "a change of a control waits behind these sessions: find out what they are doing; if they are stuck, end them: {}",
            fixes.join(" ")
        ),
    )
}

/// `safetyctl doctor`: prints every check, exits 0 only when every check passed.
pub async fn run(json: bool) -> Result<(), Failure> {
    let checks = checks().await;
    if json {
        println!(
            "{}",
            serde_json::to_value(&checks).unwrap_or(serde_json::Value::Null)
        );
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: format!(
                "{failed} of {} checks failed; each FAIL line says what to do",
                checks.len()
            ),
        })
    }
}
