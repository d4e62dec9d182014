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
