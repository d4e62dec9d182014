//! The registry of controls, against a real PostgreSQL: the generic encoding writes
//! the same bytes as the builtin one for every control core registers, and a control
//! written only in SQL joins the audit log and the approvals by registering itself —
//! its entries verify with the Rust verifier, its approval requests are accepted, and
//! a control that did not register is refused saying how to register.
#![cfg(feature = "postgres")]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tradepulse_failover_core::audit_log::{verify_export, write_log, AuditRecord};
use tradepulse_failover_core::postgres::{migrate, Migration, PgPool, CORE_MIGRATIONS};
use tradepulse_testkit::{fast_settings, shared_primary};

/// A session of its own, with the connection driven in the background.
async fn session(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(dsn, tokio_postgres::NoTls),
    )
    .await
    .expect("connect within 5 s")
    .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute("SET statement_timeout = '10s'")
        .await
        .unwrap();
    client
}

/// A fresh database on the shared primary with failover-core's migrations applied.
async fn migrated() -> (std::sync::Arc<tradepulse_testkit::Cluster>, String, PgPool) {
    static NONE: &[Migration] = &[];
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let pool = PgPool::new("control-registry", fast_settings(&dsn).build().unwrap()).unwrap();
    migrate(&pool, "control_registry_test", NONE)
        .await
        .expect("core migrations apply");
    (cluster, dsn, pool)
}

/// A reason no encoding may mangle: quotes, backslash, every kind of control
/// character, DEL, non-ASCII and a character outside the BMP.
const HOSTILE: &str =
    "runaway \"algo\" \\ on Zürich\n\ttab\r\u{1}\u{8}\u{c}\u{1f}\u{7f} ✓ 🚨 '; DROP TABLE x; --";

/// Sample event rows of `control` as `to_jsonb` writes them: a full row, one with
/// every nullable field null, one written before `break_glass` existed, one that broke
/// the glass, one with hostile text everywhere text goes, and one with keys the
/// encoding ignores.
fn samples(control: &str, base: Value) -> Vec<(String, Value)> {
    let mut out = vec![(format!("{control}: full row"), base.clone())];
    let mut nulls = base.clone();
    for (k, v) in nulls.as_object_mut().unwrap() {
        if !matches!(k.as_str(), "position" | "at") {
            *v = Value::Null;
        }
    }
    out.push((format!("{control}: nulls"), nulls));
    let mut old = base.clone();
    old.as_object_mut().unwrap().remove("break_glass");
    old.as_object_mut().unwrap().remove("approval_id");
    out.push((format!("{control}: break_glass absent"), old));
    let mut glass = base.clone();
    glass["break_glass"] = json!(true);
    glass["position"] = json!(9_007_199_254_740_993_i64);
    glass["at"] = json!("2031-12-31T23:59:59.999999-05:30");
    out.push((
        format!("{control}: break glass, big position, offset"),
        glass,
    ));
    let mut hostile = base.clone();
    for (k, v) in hostile.as_object_mut().unwrap() {
        if v.is_string() && !matches!(k.as_str(), "at" | "request_id" | "approval_id") {
            *v = json!(HOSTILE);
        }
    }
    out.push((format!("{control}: hostile text"), hostile));
    let mut extra = base;
    extra["not_encoded"] = json!("ignored");
    extra["zzz"] = json!({"nested": [1, 2]});
    extra.as_object_mut().unwrap().remove("ticket");
    out.push((format!("{control}: extra and missing keys"), extra));
    out
}

fn all_samples() -> Vec<(String, String, Value)> {
    let common = json!({
        "position": 42,
        "request_id": "5f0c2a1e-8d4b-4b8e-9a55-0c6f3e1d2b7a",
        "actor": "ops:alice",
        "reason": "runaway algo",
        "ticket": "INC-1",
        "at": "2026-01-02T03:04:05.123456+00:00",
        "login": "alice",
        "approval_id": "0b1e0c9d-3c1f-4f6b-8a77-5d2c9e8f1a22",
        "authority": "supervisor",
        "break_glass": false,
        "version": 7
    });
    let with = |extra: Value| {
        let mut v = common.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let mut out = Vec::new();
    let mut add = |control: &str, base: Value| {
        for (name, row) in samples(control, base) {
            out.push((name, control.to_owned(), row));
        }
    };
    add(
        "kill_switch",
        with(json!({"action": "engage", "engaged": true})),
    );
    add(
        "symbol_mode",
        with(json!({
            "command": "SetSymbolMode", "symbol": "BTC-ÜSD", "from_mode": "open",
            "to_mode": "throttled", "relaxes": false, "withdrawals_halted": null,
            "from_rate": null, "from_burst": null, "to_rate": 50, "to_burst": 100
        })),
    );
    add(
        "scope",
        with(json!({
            "action": "set", "path": "venue/eu/btc", "from_mode": "open", "to_mode": "halted"
        })),
    );
    let mut approvals = common.clone();
    for k in ["approval_id", "authority", "break_glass", "version"] {
        approvals.as_object_mut().unwrap().remove(k);
    }
    approvals.as_object_mut().unwrap().extend(
        json!({
            "event": "requested", "action": "kill-switch.disengage", "what": "disengage",
            "detail": "against position 3, expires 2026-01-02 03:19:05+00"
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    add("approvals", approvals);
    out
}

#[tokio::test]
async fn every_registered_control_encodes_byte_for_byte_as_the_builtin_did() {
    let (_cluster, dsn, _pool) = migrated().await;
    let client = session(&dsn).await;
    // The entry's time is UTC whatever the session's zone.
    client
        .batch_execute("SET TimeZone = 'Asia/Kathmandu'")
        .await
        .unwrap();
    let served: Vec<String> = client
        .query(
            "SELECT control FROM tradepulse_controls WHERE events_table IS NOT NULL \
             ORDER BY control",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        served,
        ["approvals", "kill_switch", "scope", "symbol_mode"],
        "core registers the controls it knows, and leases stay on the builtin"
    );
    let samples = all_samples();
    assert_eq!(samples.len(), 4 * 6);
    for (name, control, row) in &samples {
        let r = client
            .query_one(
                "SELECT tradepulse_audit_entry_builtin($1, $2::TEXT::JSONB), \
                        tradepulse_audit_entry($1, $2::TEXT::JSONB)",
                &[control, &row.to_string()],
            )
            .await
            .unwrap();
        let builtin: Option<String> = r.get(0);
        let generic: Option<String> = r.get(1);
        let builtin = builtin.unwrap_or_else(|| panic!("{name}: the builtin wrote no entry"));
        // Strings are equal exactly when their bytes are.
        assert_eq!(
            generic.as_deref(),
            Some(builtin.as_str()),
            "{name}: the registry's entry differs from the builtin's"
        );
    }
    // And they are the bytes the Rust verifier re-derives (the full kill-switch row).
    let (_, _, row) = &samples[0];
    let entry: String = client
        .query_one(
            "SELECT tradepulse_audit_entry('kill_switch', $1::TEXT::JSONB)",
            &[&row.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        entry,
        "tp-audit-v1 {\"action\":\"engage\",\"actor\":\"ops:alice\",\"at\":\"2026-01-02T03:04:05.123456Z\",\
         \"control\":\"kill_switch\",\"details\":{\"approval_id\":\"0b1e0c9d-3c1f-4f6b-8a77-5d2c9e8f1a22\",\
         \"authority\":\"supervisor\",\"break_glass\":false,\"engaged\":true,\"login\":\"alice\",\"version\":7},\
         \"position\":42,\"reason\":\"runaway algo\",\"request_id\":\"5f0c2a1e-8d4b-4b8e-9a55-0c6f3e1d2b7a\",\
         \"ticket\":\"INC-1\"}"
    );
    // Leases keep the builtin encoding (the ttl in microseconds).
    let lease = json!({"id": 3, "event": "acquire", "holder": "node-a", "resource": "primary",
                       "token": 12, "ttl": "00:00:05.5", "at": "2026-01-02T03:04:05+00:00"});
    let r = client
        .query_one(
            "SELECT tradepulse_audit_entry('lease', $1::TEXT::JSONB), \
                    tradepulse_audit_entry_builtin('lease', $1::TEXT::JSONB)",
            &[&lease.to_string()],
        )
        .await
        .unwrap();
    let (dispatched, builtin): (String, String) = (r.get(0), r.get(1));
    assert_eq!(dispatched, builtin);
    assert!(dispatched.contains("\"ttl_us\":5500000"), "{dispatched}");
}

/// The toy control's events table, made append-only, registered and attached: the
/// three calls a control's migration makes.
const WIDGET: &str = "
CREATE TABLE widget_events (
    position   BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id UUID,
    action     TEXT        NOT NULL,
    actor      TEXT        NOT NULL,
    reason     TEXT,
    ticket     TEXT,
    login      TEXT        NOT NULL DEFAULT session_user,
    size       INT,
    at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO widget_events (request_id, action, actor, reason, ticket, size, at)
VALUES ('5f0c2a1e-8d4b-4b8e-9a55-0c6f3e1d2b7a', 'resize', 'ops:alice', 'before attach', NULL, 3,
        '2026-01-02 03:04:05.123456+00');
SELECT tradepulse_make_append_only('widget_events');
SELECT tradepulse_register_control('widget', 'widget_events', 'position', 'action', 'actor',
    TRUE, TRUE, TRUE, ARRAY['size', 'login', 'dry_run'], '{\"dry_run\": false}');
SELECT tradepulse_audit_attach('widget_events', 'widget', 'position');
";

#[tokio::test]
async fn a_control_written_only_in_sql_joins_the_log_and_the_approvals_by_registering() {
    let (_cluster, dsn, pool) = migrated().await;
    let client = session(&dsn).await;
    client.batch_execute(WIDGET).await.unwrap();
    client
        .execute(
            "INSERT INTO widget_events (action, actor, reason, ticket, size, at) \
             VALUES ('resize', 'ops:bob', $1, 'INC-7', NULL, '2026-01-02 03:04:06+00')",
            &[&HOSTILE],
        )
        .await
        .unwrap();
    // Registering the same definition again (a migration run twice) changes nothing.
    client
        .batch_execute(
            "SELECT tradepulse_register_control('widget', 'widget_events', 'position', 'action', \
             'actor', TRUE, TRUE, TRUE, ARRAY['dry_run', 'login', 'size', 'size'], \
             '{\"dry_run\": false}')",
        )
        .await
        .expect("the same definition registers again");

    // Both events (the back-filled one and the triggered one) are entries of the log,
    // with the canonical text the Rust encoder writes.
    let login: String = client
        .query_one("SELECT session_user::TEXT", &[])
        .await
        .unwrap()
        .get(0);
    let rows = client
        .query(
            "SELECT idx, position, convert_from(entry, 'UTF8') FROM audit_log \
             WHERE control = 'widget' ORDER BY idx",
            &[],
        )
        .await
        .unwrap();
    let entries: Vec<(i64, String)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    let expected = |position: u64,
                    request: Option<&str>,
                    actor: &str,
                    reason: &str,
                    ticket: Option<&str>,
                    size: Value,
                    at: &str| {
        AuditRecord {
            control: "widget".into(),
            position,
            request_id: request.map(str::to_owned),
            action: "resize".into(),
            actor: actor.into(),
            reason: Some(reason.into()),
            ticket: ticket.map(str::to_owned),
            at: at.into(),
            details: BTreeMap::from([
                ("dry_run".to_owned(), json!(false)),
                ("login".to_owned(), json!(login)),
                ("size".to_owned(), size),
            ]),
        }
        .canonical()
    };
    assert_eq!(
        entries,
        vec![
            (
                1,
                expected(
                    1,
                    Some("5f0c2a1e-8d4b-4b8e-9a55-0c6f3e1d2b7a"),
                    "ops:alice",
                    "before attach",
                    None,
                    json!(3),
                    "2026-01-02T03:04:05.123456Z"
                )
            ),
            (
                2,
                expected(
                    2,
                    None,
                    "ops:bob",
                    HOSTILE,
                    Some("INC-7"),
                    Value::Null,
                    "2026-01-02T03:04:06.000000Z"
                )
            ),
        ]
    );
    assert!(
        entries[0]
            .1
            .contains("\"details\":{\"dry_run\":false,\"login\":"),
        "{}",
        entries[0].1
    );

    // An approval request may name the new control, with no change to core's tables;
    // its approval event is an entry of the log too.
    let gate = client
        .query_one(
            "SELECT o_gate FROM tradepulse_approval_gate(gen_random_uuid(), 'widget.relax', \
             'widget', 'w1', 'relax w1', '{}', 'needs a second pair of eyes', NULL, 'ops:alice', \
             2, FALSE, TRUE)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gate.get::<_, String>(0), "pending");
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM approval_requests WHERE control = 'widget' AND status = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
    // A control nobody registered is no approval control.
    let err = client
        .query_one(
            "SELECT o_gate FROM tradepulse_approval_gate(gen_random_uuid(), 'gadget.relax', \
             'gadget', 'g1', 'relax g1', '{}', 'why', NULL, 'ops:alice', 1, FALSE, TRUE)",
            &[],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "23503", "{db}");
    assert_eq!(db.constraint(), Some("approval_requests_control_fkey"));
    assert!(db.detail().unwrap_or("").contains("gadget"), "{db:?}");

    // The whole log, exported and verified by the Rust verifier, re-derives every entry.
    let mut export = Vec::new();
    let head = write_log(&pool, &mut export, |_, _| {}).await.unwrap();
    assert_eq!(head.size, 3, "two widget events and one approval event");
    let text = String::from_utf8(export.clone()).unwrap();
    assert!(
        !text.contains("\"entry\":null"),
        "every event's row is found:\n{text}"
    );
    let verified = verify_export(export.as_slice(), |_| {})
        .unwrap_or_else(|f| panic!("the log verifies: {f}\n{text}"));
    assert_eq!(verified.head, head);

    // A different definition for a registered control is refused: its entries would
    // no longer verify.
    let err = client
        .batch_execute(
            "SELECT tradepulse_register_control('widget', 'widget_events', 'position', 'action', \
             'actor', TRUE, TRUE, TRUE, ARRAY['size', 'login'], '{}')",
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42710", "{db}");
    assert!(db.message().contains("already registered"), "{db}");

    // A control that did not register is refused, saying how to register, and its
    // event is not written without its entry.
    client
        .batch_execute(
            "CREATE TABLE gadget_events (position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             action TEXT NOT NULL, actor TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             SELECT tradepulse_make_append_only('gadget_events'); \
             SELECT tradepulse_audit_attach('gadget_events', 'gadget', 'position');",
        )
        .await
        .unwrap();
    let err = client
        .batch_execute("INSERT INTO gadget_events (action, actor) VALUES ('poke', 'ops:alice')")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db}");
    assert!(db.message().contains("gadget is not registered"), "{db}");
    assert!(
        db.hint()
            .unwrap_or("")
            .contains("tradepulse_register_control"),
        "{db:?}"
    );
    let gadgets: i64 = client
        .query_one("SELECT count(*) FROM gadget_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gadgets, 0);
    let size: i64 = client
        .query_one("SELECT size FROM audit_log_head", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 3);
}

#[tokio::test]
async fn a_registration_states_its_whole_encoding_or_none() {
    let (_cluster, dsn, pool) = migrated().await;
    let client = session(&dsn).await;
    for (sql, says) in [
        (
            "SELECT tradepulse_register_control('half', 'half_events', 'position')",
            "needs its whole encoding",
        ),
        (
            "SELECT tradepulse_register_control('odd', 'odd_events', 'position', 'action', \
             'actor', TRUE, TRUE, TRUE, ARRAY['size'], '{\"colour\": \"red\"}')",
            "not a detail key",
        ),
        (
            "SELECT tradepulse_register_control('odd', NULL, 'position')",
            "without an events table",
        ),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "22023", "{sql}: {db}");
        assert!(db.message().contains(says), "{sql}: {db}");
    }
    // A control whose rows are identified by `id`, with no reason, request id or
    // ticket and no details: the log records its entries under the id.
    client
        .batch_execute(
            "CREATE TABLE gizmo_events (id BIGINT PRIMARY KEY, event TEXT NOT NULL, \
             holder TEXT NOT NULL, reason TEXT, at TIMESTAMPTZ NOT NULL); \
             SELECT tradepulse_make_append_only('gizmo_events'); \
             SELECT tradepulse_register_control('gizmo', 'gizmo_events', 'id', 'event', 'holder', \
                 FALSE, FALSE, FALSE, ARRAY[]::TEXT[]); \
             SELECT tradepulse_audit_attach('gizmo_events', 'gizmo', 'id'); \
             INSERT INTO gizmo_events VALUES (70, 'spin', 'node-a', 'ignored', \
                 '2026-01-02 03:04:05+00')",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT position, convert_from(entry, 'UTF8') FROM audit_log WHERE control = 'gizmo'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 70);
    assert_eq!(
        row.get::<_, String>(1),
        "tp-audit-v1 {\"action\":\"spin\",\"actor\":\"node-a\",\"at\":\"2026-01-02T03:04:05.000000Z\",\
         \"control\":\"gizmo\",\"details\":{},\"position\":70,\"reason\":null,\"request_id\":null,\
         \"ticket\":null}"
    );
    let mut export = Vec::new();
    write_log(&pool, &mut export, |_, _| {}).await.unwrap();
    let text = String::from_utf8_lossy(&export).into_owned();
    assert!(text.contains("\"control\":\"gizmo\""), "{text}");
    verify_export(export.as_slice(), |_| {}).unwrap_or_else(|f| panic!("{f}\n{text}"));

    // The registry is append-only: a registration cannot be edited behind the log.
    let err = client
        .batch_execute("UPDATE tradepulse_controls SET action_key = 'verb' WHERE control = 'scope'")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert!(db.message().contains("append-only"), "{db}");
}

/// Asks to disengage the kill switch, required so that it waits for a second
/// supervisor: its `requested` event is an entry of the log.
const REQUEST: &str = "SELECT o_gate FROM tradepulse_approval_gate(gen_random_uuid(), \
    'kill-switch.disengage', 'kill_switch', 'global', 'disengage', '{}', $1, 'INC-9', \
    'ops:alice', 1, FALSE, TRUE)";

#[tokio::test]
async fn entries_written_before_the_registry_still_verify_after_it() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let client = session(&dsn).await;
    // A database as it was before migration 9: the builtin encoding writes the entries.
    let (before, registry) = CORE_MIGRATIONS.split_at(CORE_MIGRATIONS.len() - 1);
    assert_eq!(registry[0].name, "control_registry");
    for m in before {
        client.batch_execute(m.sql).await.unwrap();
    }
    for reason in ["before the registry", HOSTILE] {
        let gate: String = client.query_one(REQUEST, &[&reason]).await.unwrap().get(0);
        assert_eq!(gate, "pending");
    }
    // The export reads a database without the registry too.
    let pool = PgPool::new("control-registry", fast_settings(&dsn).build().unwrap()).unwrap();
    let mut export = Vec::new();
    let head = write_log(&pool, &mut export, |_, _| {}).await.unwrap();
    assert_eq!(head.size, 2);
    verify_export(export.as_slice(), |_| {}).expect("the log verifies before the registry");

    client.batch_execute(registry[0].sql).await.unwrap();
    let gate: String = client
        .query_one(REQUEST, &[&"after the registry"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gate, "pending");

    // Every stored entry, old or new, is what the registry's encoding derives from its
    // row now, and the export of the whole log verifies.
    let differ: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_log l JOIN approval_events e \
               ON l.control = 'approvals' AND l.position = e.position \
             WHERE convert_from(l.entry, 'UTF8') \
                   IS DISTINCT FROM tradepulse_audit_entry('approvals', to_jsonb(e))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(differ, 0);
    let mut export = Vec::new();
    let head = write_log(&pool, &mut export, |_, _| {}).await.unwrap();
    assert_eq!(head.size, 3);
    let verified = verify_export(export.as_slice(), |_| {}).unwrap_or_else(|f| {
        panic!(
            "the log verifies: {f}\n{}",
            String::from_utf8_lossy(&export)
        )
    });
    assert_eq!(verified.head, head);
}
