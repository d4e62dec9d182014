//! The tamper-evident audit log through the real binary against a real PostgreSQL:
//! exports verify offline, any change to an exported event (or to the database behind
//! disabled triggers) is named by index, and signed checkpoints pin the history.

mod support;

use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use failover_core::audit_log::ExportLine;
use std::path::{Path, PathBuf};
use support::{db, safetyctl, text, Db};

/// A reason with what the canonical encoding must escape, and what it must not (the
/// controls refuse control characters in reasons; a lease holder below carries them).
const AWKWARD: &str = "quote \" back\\slash é ✓ / end";

async fn events(d: &Db, tag: &str) {
    let steps: Vec<Vec<String>> = vec![
        vec!["kill-switch", "engage", "--reason", AWKWARD],
        vec![
            "kill-switch",
            "disengage",
            "--reason",
            "resolved",
            "--ticket",
            "T-1",
        ],
        vec!["symbols", "add", "BTC-USD", "--reason", "listing"],
        vec!["mode", "set", "BTC-USD", "SOFT_HALT", "--reason", tag],
        vec!["global-mode", "set", "CANCEL_ONLY", "--reason", "widen"],
        vec!["withdrawals", "halt", "--reason", "wallet"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_owned).collect())
    .collect();
    for step in steps {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        let out = safetyctl(&d.dsn, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    d.cluster
        .primary()
        .execute(
            &d.db,
            "SELECT * FROM fencing_acquire('orders', 'engine-a', 5000000)",
        )
        .await
        .unwrap();
}

fn export(d: &Db, path: &Path) {
    let out = safetyctl(
        &d.dsn,
        &[
            "audit",
            "export",
            "--out",
            path.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn verify(dsn: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = safetyctl(dsn, &all);
    (out.status.code(), text(&out))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_verifies_and_every_tampering_is_named_by_index() {
    let d = db().await;
    // Sessions in a zone far from UTC: the encoding must not depend on it.
    d.cluster
        .primary()
        .execute(
            "postgres",
            &format!(
                "ALTER DATABASE \"{}\" SET timezone = 'Pacific/Chatham'",
                d.db
            ),
        )
        .await
        .unwrap();
    events(&d, "lag").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    export(&d, &file);
    let all = lines(&file);
    assert_eq!(
        all[0], "{\"audit_export\":2}",
        "the header names the format"
    );
    let n = all.len() - 2;
    assert_eq!(n, 7, "2 kill switch + 4 symbol mode + 1 lease events");

    let (code, out) = verify("", &[p(&file)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("ok: {n} entries, root ")), "{out}");

    // One event's reason edited in the file (line 5 holds index 3).
    let mut edited = all.clone();
    edited[4] = edited[4].replace("\"reason\":\"lag\"", "\"reason\":\"lab\"");
    assert_ne!(edited[4], all[4]);
    let (code, out) = verify("", &[p(&write(dir.path(), "edited.jsonl", &edited))]);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains("edited: index 3 (symbol_mode position"),
        "{out}"
    );

    // One line deleted.
    let mut missing = all.clone();
    missing.remove(5);
    let (code, out) = verify("", &[p(&write(dir.path(), "missing.jsonl", &missing))]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("missing: index 4"), "{out}");

    // Two adjacent lines swapped.
    let mut swapped = all.clone();
    swapped.swap(3, 4);
    let (code, out) = verify("", &[p(&write(dir.path(), "swapped.jsonl", &swapped))]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("reordered: index 2"), "{out}");

    // The head's root changed.
    let mut head = all.clone();
    let last = head.len() - 1;
    let root = head[last].split("\"root\":\"").nth(1).unwrap()[..64].to_owned();
    let other = format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    );
    head[last] = head[last].replace(&root, &other);
    let (code, out) = verify("", &[p(&write(dir.path(), "head.jsonl", &head))]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("wrong root"), "{out}");

    // A row rewritten in the database behind disabled triggers: the next export no
    // longer verifies, naming that event's index.
    let idx = d
        .cluster
        .primary()
        .query(
            &d.db,
            "SELECT l.idx FROM audit_log l JOIN kill_switch_events e ON l.control = 'kill_switch' \
             AND l.position = e.position WHERE e.action = 'disengage'",
        )
        .await
        .unwrap()[0][0]
        .clone()
        .unwrap();
    d.cluster
        .primary()
        .execute(
            &d.db,
            "ALTER TABLE kill_switch_events DISABLE TRIGGER USER; \
             UPDATE kill_switch_events SET reason = 'nothing to see' WHERE action = 'disengage'; \
             ALTER TABLE kill_switch_events ENABLE TRIGGER USER;",
        )
        .await
        .unwrap();
    let again = dir.path().join("again.jsonl");
    export(&d, &again);
    let (code, out) = verify("", &[p(&again)]);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains(&format!("edited: index {idx} (kill_switch position")),
        "{out}"
    );
}

/// Events of the throttle and of four eyes (a requirement, a break-glass relaxation),
/// beside what `events` writes.
fn throttle_and_approval_events(d: &Db) {
    let steps: Vec<Vec<&str>> = vec![
        vec!["throttle", "set", "BTC-USD", "5/s", "--reason", "lag"],
        vec![
            "throttle", "clear", "BTC-USD", "--reason", "lag gone", "--ticket", "T-2",
        ],
        vec![
            "approvals",
            "require",
            "mode.relax",
            "--reason",
            "four eyes",
        ],
        vec![
            "mode",
            "set",
            "BTC-USD",
            "CANCEL_ONLY",
            "--reason",
            "no second supervisor at 3 a.m.",
            "--ticket",
            "T-3",
            "--break-glass",
        ],
    ];
    for args in steps {
        let out = safetyctl(&d.dsn, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_encoding_is_the_rust_encoding_of_every_controls_rows() {
    let d = db().await;
    d.cluster
        .primary()
        .execute(
            "postgres",
            &format!(
                "ALTER DATABASE \"{}\" SET timezone = 'America/St_Johns'",
                d.db
            ),
        )
        .await
        .unwrap();
    events(&d, "encoding").await;
    throttle_and_approval_events(&d);
    d.cluster
        .primary()
        .execute(
            &d.db,
            "SELECT * FROM fencing_acquire('desk', E'tab\\there\\nnew line\\x01', 1500)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    export(&d, &file);
    let all = lines(&file);
    let stored = d
        .cluster
        .primary()
        .query(
            &d.db,
            "SELECT idx, convert_from(entry, 'UTF8') FROM audit_log ORDER BY idx",
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), all.len() - 2);
    let mut controls = std::collections::BTreeSet::new();
    for (line, row) in all[1..].iter().zip(&stored) {
        let l = ExportLine::parse(line).unwrap();
        assert_eq!(Some(l.index.to_string()), row[0]);
        // Built by Rust from the live row's fields, and by SQL at insert time; the
        // line carries it verbatim after its tag.
        let stored = row[1].clone().unwrap();
        let record = l.record.unwrap();
        assert_eq!(record.canonical(), stored, "index {}", l.index);
        let (tag, object) = stored.split_once(' ').unwrap();
        assert_eq!(
            *line,
            format!(
                "{{\"index\":{},\"leaf\":\"{}\",\"encoding\":\"{tag}\",\"entry\":{object}}}",
                l.index, l.leaf
            )
        );
        controls.insert(record.control.clone());
    }
    assert_eq!(
        controls.into_iter().collect::<Vec<_>>(),
        ["approvals", "kill_switch", "lease", "symbol_mode"]
    );
    // The throttle's limits and the break-glass mark are part of what is hashed.
    assert!(
        all.iter().any(
            |l| l.contains("SetThrottle") && l.contains(r#""to_rate\":5"#)
                || l.contains(r#""to_rate":5"#)
        ),
        "a SetThrottle entry carries its limit"
    );
    assert!(
        all.iter()
            .any(|l| l.contains(r#""break_glass":true"#) || l.contains(r#"\"break_glass\":true"#)),
        "the break-glass relaxation is marked in its entry"
    );
    assert!(all[1].contains("back\\\\slash é ✓ / end"), "{}", all[1]);
    assert!(
        all[all.len() - 2].contains("tab\\there\\nnew line\\u0001"),
        "{}",
        all[all.len() - 2]
    );
    // The root SQL derives from the right edge is the export's.
    let root = d
        .cluster
        .primary()
        .query(
            &d.db,
            "SELECT encode(tradepulse_audit_root(edge), 'hex') FROM audit_log_head",
        )
        .await
        .unwrap()[0][0]
        .clone()
        .unwrap();
    assert!(all.last().unwrap().contains(&root), "{root}");
}

fn keys(dir: &Path, seed: u8) -> (PathBuf, PathBuf) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let private = dir.join(format!("key{seed}.pem"));
    let public = dir.join(format!("pub{seed}.pem"));
    std::fs::write(
        &private,
        key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    (private, public)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_checkpoint_pins_the_history_a_later_export_must_extend() {
    let d = db().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path(), 1);
    let (_, other_public) = keys(dir.path(), 2);
    events(&d, "first").await;
    let note = dir.path().join("checkpoint.note");
    let out = safetyctl(
        &d.dsn,
        &[
            "audit",
            "checkpoint",
            "--key",
            p(&key),
            "--out",
            p(&note),
            "--origin",
            "tradepulse/test/a",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let old = dir.path().join("old.jsonl");
    export(&d, &old);

    // More events: the later export extends the checkpoint.
    let out = safetyctl(&d.dsn, &["cancel-all", "BTC-USD", "--reason", "sweep"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let new = dir.path().join("new.jsonl");
    export(&d, &new);
    let (code, out) = verify(
        "",
        &[
            p(&new),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&public),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok: 8 entries"), "{out}");
    assert!(
        out.contains("extends checkpoint tradepulse/test/a of 7 entries"),
        "{out}"
    );

    // Another key's public half is refused, naming why.
    let (code, out) = verify(
        "",
        &[
            p(&new),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&other_public),
        ],
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("not signed by the given public key"), "{out}");

    // Another history of the same size (a database that lost the checkpointed entries
    // and wrote others) does not extend it: the first differing index and the entries
    // lost are named.
    let e = db().await;
    let out = safetyctl(
        &e.dsn,
        &["kill-switch", "engage", "--reason", "another history"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    events(&e, "second").await;
    let forked = dir.path().join("forked.jsonl");
    export(&e, &forked);
    let (code, out) = verify(
        "",
        &[
            p(&forked),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&public),
        ],
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("does not extend the checkpoint"), "{out}");
    let (code, out) = verify(
        "",
        &[
            p(&forked),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&public),
            "--previous",
            p(&old),
        ],
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("first differing index 0"), "{out}");
    assert!(
        out.contains("index 0 kill_switch engage by "),
        "the lost entries are listed: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_append_fails_within_the_lock_bound_naming_the_holder() {
    let d = db().await;
    // A session left open holding the log's head row (a psql left in a transaction).
    let held = tradepulse_testkit::Held::begin(
        &format!("{} application_name=psql", d.dsn),
        "SELECT * FROM audit_log_head FOR UPDATE",
    )
    .await;
    let start = std::time::Instant::now();
    let out = safetyctl(&d.dsn, &["kill-switch", "engage", "--reason", "blocked"]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "audit_log_head is locked by pid {} (psql",
            held.pid()
        )),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    held.rollback().await;
    // Nothing was written: the engage rolled back with its append.
    let rows = d
        .cluster
        .primary()
        .query(&d.db, "SELECT count(*) FROM kill_switch_events")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_read_the_log_and_only_the_trigger_writes_it() {
    let d = db().await;
    events(&d, "roles").await;
    let primary = d.cluster.primary();
    primary
        .execute(
            &d.db,
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_reader') \
             THEN CREATE ROLE audit_reader LOGIN; END IF; END $$; \
             GRANT tradepulse_viewer TO audit_reader;",
        )
        .await
        .unwrap();
    let as_viewer = |sql: &str| format!("SET ROLE audit_reader; {sql}");
    let rows = primary
        .query(&d.db, &as_viewer("SELECT count(*) FROM audit_log"))
        .await
        .unwrap();
    assert_eq!(rows.last().unwrap()[0].as_deref(), Some("7"));
    // Every control's trail, the leases' included.
    for table in [
        "kill_switch_events",
        "symbol_mode_events",
        "fencing_lease_events",
        "scope_events",
    ] {
        let read = primary
            .query(&d.db, &as_viewer(&format!("SELECT count(*) FROM {table}")))
            .await;
        assert!(read.is_ok(), "a viewer reads {table}: {read:?}");
    }
    for sql in [
        "INSERT INTO audit_log (idx, control, position, entry, leaf_hash) VALUES (99, 'x', 1, '', sha256(''))",
        "UPDATE audit_log_head SET size = 0",
        "SELECT tradepulse_audit_append_row('kill_switch', '{}')",
    ] {
        let err = primary.execute(&d.db, &as_viewer(sql)).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    // Not even the owner rewrites the log while its triggers stand.
    let err = primary
        .execute(&d.db, "UPDATE audit_log SET control = 'x' WHERE idx = 0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

/// An asynchronous failover that lost events (a real primary and streaming replica):
/// a checkpoint signed on the old primary is not extended by the new primary's log,
/// and `verify --previous` names the checkpointed entries the new primary lacks.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_lossy_failover_verify_names_the_entries_the_new_primary_lacks() {
    let cluster = tradepulse_testkit::Cluster::start_with_replica()
        .await
        .expect("primary + replica");
    let name = cluster.create_database().await.expect("database");
    let dsn = cluster.multi_host_dsn(&name);
    let run = |args: &[&str]| {
        let out = safetyctl(&dsn, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    };
    run(&["migrate"]);
    run(&["kill-switch", "engage", "--reason", "replicated"]);
    run(&["symbols", "add", "BTC-USD", "--reason", "listing"]);
    cluster
        .wait_replica_caught_up(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    // The replica stops receiving: what follows exists on the old primary only.
    cluster.replica().unwrap().stop().await.unwrap();
    run(&[
        "kill-switch",
        "disengage",
        "--reason",
        "lost resume",
        "--ticket",
        "T-9",
    ]);
    run(&[
        "mode",
        "set",
        "BTC-USD",
        "HARD_HALT",
        "--reason",
        "lost halt",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path(), 3);
    let note = dir.path().join("old-primary.note");
    run(&[
        "audit",
        "checkpoint",
        "--key",
        p(&key),
        "--out",
        p(&note),
        "--origin",
        "tradepulse/test/failover",
    ]);
    let old = dir.path().join("old-primary.jsonl");
    run(&["audit", "export", "--out", p(&old)]);

    cluster.primary().kill9().await.unwrap();
    let replica = cluster.replica().unwrap();
    replica.start().await.unwrap();
    replica.promote().await.unwrap();
    // The new primary goes on with its own history.
    run(&["kill-switch", "engage", "--reason", "after the failover"]);
    let new = dir.path().join("new-primary.jsonl");
    run(&["audit", "export", "--out", p(&new)]);

    let (code, out) = verify(
        "",
        &[
            p(&new),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&public),
        ],
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("does not extend the checkpoint"), "{out}");
    let (code, out) = verify(
        "",
        &[
            p(&new),
            "--checkpoint",
            p(&note),
            "--public-key",
            p(&public),
            "--previous",
            p(&old),
        ],
    );
    assert_eq!(code, Some(5), "{out}");
    eprintln!("{out}");
    // The two events written after the replica stopped are named; the replicated
    // ones are not.
    assert!(out.contains("kill_switch disengage by "), "{out}");
    assert!(out.contains("symbol_mode SetSymbolMode by "), "{out}");
    assert!(!out.contains("kill_switch engage by "), "{out}");
    assert!(!out.contains("RegisterSymbol"), "{out}");
}

/// An export longer than one batch is read page by page and still verifies as one
/// log: every index once, in order, the head's root; a row rewritten in a later page
/// is named.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_of_several_batches_verifies_and_names_an_edit_in_a_later_batch() {
    let d = db().await;
    let n = 2 * failover_core::audit_log::EXPORT_BATCH + 17;
    d.cluster
        .primary()
        .execute(
            &d.db,
            &format!(
                "SELECT count(*) FROM generate_series(1, {n}) g, \
                 LATERAL fencing_acquire('r' || g, 'engine-a', 5000000)"
            ),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    export(&d, &file);
    let all = lines(&file);
    assert_eq!(all.len() as u64, n + 2);
    for (i, line) in all[1..all.len() - 1].iter().enumerate() {
        assert!(line.starts_with(&format!("{{\"index\":{i},")), "{line}");
    }
    let (code, out) = verify("", &[p(&file)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("ok: {n} entries, root ")), "{out}");
    assert!(
        !dir.path().join(".audit.jsonl.partial").exists(),
        "the partial file is renamed"
    );

    // A row of the third page rewritten behind disabled triggers.
    let late = n - 3;
    d.cluster
        .primary()
        .execute(
            &d.db,
            &format!(
                "ALTER TABLE fencing_lease_events DISABLE TRIGGER USER; \
                 UPDATE fencing_lease_events SET holder = 'engine-b' \
                 WHERE id = (SELECT position FROM audit_log WHERE idx = {late}); \
                 ALTER TABLE fencing_lease_events ENABLE TRIGGER USER;"
            ),
        )
        .await
        .unwrap();
    let again = dir.path().join("again.jsonl");
    export(&d, &again);
    let (code, out) = verify("", &[p(&again)]);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains(&format!("edited: index {late} (lease position")),
        "{out}"
    );
}

/// Runs a CSV export to stdout and reads it as it comes, sampling the process's peak
/// resident memory (`VmHWM`) after every read: while output is still unread the
/// process is alive, so the last sample covers all but the final write. Returns the
/// output and the last sample (kB).
fn csv_export_and_its_peak_memory(d: &Db) -> (Vec<u8>, u64) {
    use std::io::Read;
    let mut child = support::command(&d.dsn, &["audit", "export", "--format", "csv", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut stdout = child.stdout.take().unwrap();
    let (mut csv, mut buf, mut peak) = (Vec::new(), vec![0u8; 1 << 16], None);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        csv.extend_from_slice(&buf[..n]);
        let sample = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = sample.or(peak);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let peak = peak.expect("the export's memory was sampled while it ran");
    (csv, peak)
}

/// Inserts lease events (log entries) `from..to`, each with a 1000-byte resource
/// name, a range of the export a statement.
async fn leases(d: &Db, from: u64, to: u64) {
    let batch = failover_core::audit_log::EXPORT_BATCH;
    for start in (from..to).step_by(batch as usize) {
        d.cluster
            .primary()
            .execute(
                &d.db,
                &format!(
                    "SELECT count(*) FROM generate_series({start}, {}) g, \
                     LATERAL fencing_acquire('r' || g || repeat('x', 1000), 'engine-a', 5000000)",
                    (start + batch).min(to) - 1
                ),
            )
            .await
            .unwrap();
    }
}

/// A CSV export is read and written range by range: one row per log entry, each
/// entry once, and its peak memory does not grow with the log. Doubling the log
/// (from two ranges and a bit to four) must grow the peak by less than half the bytes
/// the export grew by; an export that held the events or their rendering whole would
/// grow by more than the export itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_export_of_many_ranges_has_a_row_per_entry_in_bounded_memory() {
    let d = db().await;
    let batch = failover_core::audit_log::EXPORT_BATCH;
    let small = 2 * batch + 17;
    let large = 4 * batch + 17;
    leases(&d, 0, small).await;
    let (csv, peak_small) = csv_export_and_its_peak_memory(&d);
    leases(&d, small, large).await;
    let (big, peak_large) = csv_export_and_its_peak_memory(&d);

    for (csv, n) in [(&csv, small), (&big, large)] {
        let text = std::str::from_utf8(csv).unwrap();
        let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(
            rows[0],
            "control,position,request_id,action,actor,reason,ticket,at,details"
        );
        assert_eq!(rows.len() as u64, n + 1, "a header and a row per entry");
        let positions: std::collections::HashSet<&str> = rows[1..]
            .iter()
            .map(|r| {
                assert!(r.starts_with("lease,"), "{r}");
                r.split(',').nth(1).unwrap()
            })
            .collect();
        assert_eq!(positions.len() as u64, n, "each entry once");
    }
    let grown_kb = (big.len() - csv.len()) as u64 / 1024;
    assert!(
        peak_large < peak_small + grown_kb / 2,
        "peak memory {peak_small} kB for {small} entries, {peak_large} kB for {large}: \
         it grew by more than half the {grown_kb} kB the export grew by"
    );
    eprintln!(
        "peak memory {peak_small} kB for {small} entries ({} kB), {peak_large} kB for {large} ({} kB)",
        csv.len() / 1024,
        big.len() / 1024
    );
}
