//! The failover drill on real servers: with synchronous replication no acknowledged
//! write of any control is lost across kill -9 + promotion (RPO 0); with asynchronous
//! replication and replication cut before the kill, the loss is measured and reported.

use std::time::Duration;
use tradepulse_examples::drill::{run, DrillConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_replication_loses_no_acknowledged_write() {
    let report = run(
        DrillConfig {
            synchronous: true,
            warm_up: Duration::from_millis(1500),
            cut_replication: None,
        },
        |l| eprintln!("{l}"),
    )
    .await
    .expect("drill");
    eprintln!("{}", report.table());
    for c in &report.controls {
        assert!(c.acked_before_kill > 10, "{c:?}");
        assert_eq!(
            c.lost, 0,
            "synchronous replication lost an acknowledged write: {c:?}"
        );
    }
    assert!(report.objectives_met());

    // The evidence files: JSON and Markdown with RTO, RPO, first write per control,
    // writes lost and the timeline, and their SHA-256 beside them.
    let dir = tempfile::tempdir().unwrap();
    let evidence = report.write_evidence(dir.path()).unwrap();
    let name = evidence
        .json
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        name.ends_with("-failover-sync.json")
            && name.len() == "YYYY-MM-DD-failover-sync.json".len(),
        "{name}"
    );
    let json_text = std::fs::read_to_string(&evidence.json).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json["rpo_ms"], 0.0, "{json}");
    assert!(json["rto_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["controls"].as_array().unwrap().len(), 3);
    for c in json["controls"].as_array().unwrap() {
        assert_eq!(c["writes_lost"], 0);
        assert!(c["first_write_after_promotion_ms"].is_number(), "{c}");
    }
    let timeline: Vec<&str> = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        timeline.iter().any(|e| e.contains("kill -9"))
            && timeline.iter().any(|e| e.starts_with("promoted")),
        "{timeline:?}"
    );
    let md = std::fs::read_to_string(&evidence.markdown).unwrap();
    for needle in [
        "| RPO | 0 ms |",
        "| RTO |",
        "first write after promotion",
        "## Timeline",
        "kill switch",
    ] {
        assert!(md.contains(needle), "{needle} missing in:\n{md}");
    }
    let sums = std::fs::read_to_string(&evidence.checksums).unwrap();
    assert!(
        sums.contains(&format!(
            "{}  {name}",
            safetyctl::evidence::sha256_hex(json_text.as_bytes())
        )),
        "{sums}"
    );
    assert!(
        sums.contains(&safetyctl::evidence::sha256_hex(md.as_bytes())),
        "{sums}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_loss_is_measured_and_reported_never_silent() {
    let report = run(
        DrillConfig {
            synchronous: false,
            warm_up: Duration::from_millis(1000),
            cut_replication: Some(Duration::from_millis(400)),
        },
        |l| eprintln!("{l}"),
    )
    .await
    .expect("drill");
    let table = report.table();
    eprintln!("{table}");
    for c in &report.controls {
        assert!(
            c.lost > 0,
            "writes acknowledged while replication was cut must show as lost: {c:?}"
        );
        assert!(c.loss_window >= Duration::from_millis(300), "{c:?}");
        assert!(
            table.contains(&format!("{:>6} {:>5}", c.acked_before_kill, c.lost)),
            "{table}"
        );
    }
    assert!(report.rpo() >= Duration::from_millis(300));
}
