//! The SQL every control shares lives once, in failover-core's migrations: one
//! append-only rule for every audit trail and one WAL-timeline function. Checked on a
//! database migrated by every control.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_trail_is_append_only_by_the_one_shared_rule() {
    let db = db().await;
    // One event in each trail (a row trigger fires only for rows).
    for args in [
        &["kill-switch", "engage", "--reason", "drill"][..],
        &["symbols", "add", "BTC-USD", "--reason", "listing"][..],
        &[
            "approvals",
            "require",
            "kill-switch.disengage",
            "--reason",
            "four eyes",
        ][..],
    ] {
        let o = safetyctl(&db.dsn, args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let lookup = |k: &str| k.ends_with("__DSN").then(|| db.dsn.clone());
    let fencer = fencing::PostgresLeaseFencer::from_lookup(lookup).unwrap();
    fencing::LeaseFencer::acquire(&fencer, "book", "node-a", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let admin = session(&db.dsn).await;
    let copies: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE '%append_only' \
             AND proname NOT IN ('tradepulse_append_only', 'tradepulse_make_append_only')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 0, "no control keeps its own copy of the rule");
    for table in [
        "kill_switch_events",
        "symbol_mode_events",
        "fencing_lease_events",
    ] {
        let triggers: Vec<String> = admin
            .query(
                "SELECT t.tgname || ' ' || p.proname FROM pg_trigger t \
                 JOIN pg_proc p ON p.oid = t.tgfoid \
                 WHERE t.tgrelid = $1::text::regclass AND NOT t.tgisinternal \
                   AND t.tgname LIKE '%no_%' ORDER BY 1",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            triggers,
            [
                format!("{table}_no_truncate tradepulse_append_only"),
                format!("{table}_no_update tradepulse_append_only"),
            ]
        );
        for (sql, op) in [
            (format!("UPDATE {table} SET at = at"), "UPDATE"),
            (format!("DELETE FROM {table}"), "DELETE"),
            (format!("TRUNCATE {table}"), "TRUNCATE"),
        ] {
            let err = admin.batch_execute(&sql).await.unwrap_err();
            let message = err
                .as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_default();
            assert_eq!(
                message,
                format!("{table} is append-only: {op} is not allowed")
            );
        }
    }
    let same: bool = admin
        .query_one("SELECT fencing_timeline() = failover_timeline()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(same);
    let body: String = admin
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = 'fencing_timeline'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        body.contains("failover_timeline()"),
        "one copy of the timeline rule: {body}"
    );
}
