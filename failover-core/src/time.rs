//! Wall-clock helpers shared by every store, so the in-memory stores return exactly
//! what PostgreSQL returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, truncated to microseconds: PostgreSQL's `timestamptz` keeps microseconds, so
/// an in-memory store using this returns values equal to the Postgres store's.
pub fn now_micros() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64)
}

/// `#[serde(with = "tradepulse_failover_core::time::rfc3339")]` for a `SystemTime`: RFC 3339
/// text with microseconds, e.g. `2026-11-22T07:38:15.123456Z`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Serialises as RFC 3339 with microseconds.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    /// Parses RFC 3339 text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "tradepulse_failover_core::time::humantime")]` for a `Duration`:
/// `humantime` text such as `"500ms"`, `"2s"`, `"1m 30s"`.
pub mod humantime {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialises as `humantime` text (`"1m 30s"`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&::humantime::format_duration(*d))
    }

    /// Parses `humantime` text; the error says how to write a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(text: &str) -> Result<Duration, String> {
        ::humantime::parse_duration(text.trim())
            .map_err(|e| format!("'{text}' is not a duration ({e}); write e.g. 500ms, 2s or 1m"))
    }
}

/// Like [`humantime`](mod@humantime), for an `Option<Duration>` (absent or `null`: `None`).
pub mod humantime_option {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialises `Some` as `humantime` text and `None` as none.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&::humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Parses optional `humantime` text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::humantime::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_whole_microseconds_and_round_trips_through_rfc3339() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T(#[serde(with = "rfc3339")] SystemTime);
        let t = now_micros();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().subsec_nanos() % 1_000,
            0
        );
        let json = serde_json::to_string(&T(t)).unwrap();
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), T(t));
    }

    #[test]
    fn durations_round_trip_as_humantime_text() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T(#[serde(with = "humantime")] Duration);
        for (text, d) in [
            ("\"500ms\"", Duration::from_millis(500)),
            ("\"1m 30s\"", Duration::from_secs(90)),
            ("\"2s\"", Duration::from_secs(2)),
        ] {
            assert_eq!(serde_json::from_str::<T>(text).unwrap(), T(d), "{text}");
            assert_eq!(serde_json::to_string(&T(d)).unwrap(), text);
        }
        let err = serde_json::from_str::<T>("\"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'soon' is not a duration"), "{err}");
    }
}
