//! The settings a service keeps in its configuration file (figment, config-rs, serde
//! formats) deserialize with durations as humantime strings, take their defaults when
//! absent, and refuse unknown fields.

use std::time::Duration;
use tradepulse_failover_core::{RetryPolicy, WatchConfig};

#[test]
fn watch_config_deserializes_from_humantime_strings() {
    let config: WatchConfig =
        serde_json::from_str(r#"{"staleness_window": "2m", "poll_interval": "250ms"}"#).unwrap();
    assert_eq!(
        config,
        WatchConfig::default()
            .with_staleness_window(Duration::from_secs(120))
            .with_poll_interval(Duration::from_millis(250))
    );
    let defaults: WatchConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, WatchConfig::default());
    let round_trip: WatchConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(round_trip, config);
    let err = serde_json::from_str::<WatchConfig>(r#"{"staleness": "5m"}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `staleness`"),
        "{err}"
    );
    let err = serde_json::from_str::<WatchConfig>(r#"{"poll_interval": "often"}"#).unwrap_err();
    assert!(
        err.to_string().contains("'often' is not a duration"),
        "{err}"
    );
}

#[test]
fn retry_policy_deserializes_from_humantime_strings() {
    let policy: RetryPolicy = serde_json::from_str(
        r#"{"initial_interval": "10ms", "max_interval": "1s", "multiplier": 1.5,
            "jitter": 0.1, "budget": "30s", "attempt_timeout": "3s"}"#,
    )
    .unwrap();
    assert_eq!(
        policy,
        RetryPolicy {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_secs(1),
            multiplier: 1.5,
            jitter: 0.1,
            budget: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(3),
        }
    );
    let partial: RetryPolicy = serde_json::from_str(r#"{"budget": "1m"}"#).unwrap();
    assert_eq!(
        partial,
        RetryPolicy {
            budget: Duration::from_secs(60),
            ..RetryPolicy::default()
        }
    );
    let round_trip: RetryPolicy =
        serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(round_trip, policy);
    assert!(serde_json::from_str::<RetryPolicy>(r#"{"retries": 3}"#).is_err());
}
