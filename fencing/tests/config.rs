//! `ElectorConfig` from a configuration file: required names and ttl, the other
//! intervals derived from the ttl unless given, durations as humantime strings.

use std::sync::Arc;
use tradepulse_fencing::{ElectorConfig, LeaderElector, MemoryLeaseFencer};

#[test]
fn elector_config_deserializes_and_derives_the_intervals_from_the_ttl() {
    let config: ElectorConfig = serde_json::from_str(
        r#"{"resource": "matching-engine", "holder": "host-a:4711", "ttl": "3s"}"#,
    )
    .unwrap();
    assert_eq!(config.resource(), "matching-engine");
    assert_eq!(config.holder(), "host-a:4711");
    let written = serde_json::to_value(&config).unwrap();
    assert_eq!(
        written,
        serde_json::json!({
            "resource": "matching-engine", "holder": "host-a:4711", "ttl": "3s",
            "renew_interval": "1s", "retry_interval": "1s 500ms", "jitter": 0.2,
        })
    );
    let explicit: ElectorConfig = serde_json::from_str(
        r#"{"resource": "r", "holder": "h", "ttl": "9s", "renew_interval": "2s",
            "retry_interval": "4s", "jitter": 0.0}"#,
    )
    .unwrap();
    let written = serde_json::to_value(&explicit).unwrap();
    assert_eq!(written["renew_interval"], "2s");
    assert_eq!(written["retry_interval"], "4s");
    assert_eq!(written["jitter"], 0.0);
}

#[test]
fn bad_elector_configs_are_refused() {
    for (json, expected) in [
        (
            r#"{"resource": "r", "ttl": "3s"}"#,
            "missing field `holder`",
        ),
        (
            r#"{"resource": "r", "holder": "h", "ttl": "3 fortnights"}"#,
            "is not a duration",
        ),
        (
            r#"{"resource": "r", "holder": "h", "ttl": "3s", "tll": "3s"}"#,
            "unknown field `tll`",
        ),
    ] {
        let err = serde_json::from_str::<ElectorConfig>(json).unwrap_err();
        assert!(err.to_string().contains(expected), "{json}: {err}");
    }
}

#[tokio::test]
async fn a_deserialized_config_is_validated_when_the_elector_starts() {
    let config: ElectorConfig = serde_json::from_str(
        r#"{"resource": "r", "holder": "h", "ttl": "3s", "renew_interval": "5s"}"#,
    )
    .unwrap();
    let Err(err) = LeaderElector::try_spawn(Arc::new(MemoryLeaseFencer::new()), config) else {
        panic!("a renew interval above the ttl is refused");
    };
    assert!(err.to_string().contains("renew interval"), "{err}");
}
