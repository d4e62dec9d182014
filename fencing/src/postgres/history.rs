//! The lease trail (`fencing_lease_events`): who held which token, for the admin
//! routes, the audit export and split-brain evidence.

use super::PostgresLeaseFencer;
use crate::Error;
use failover_core::postgres::tokio_postgres::types::Type;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// One row of `fencing_lease_events` (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseEvent {
    /// The row id: strictly increasing on one server.
    pub id: u64,
    /// The resource.
    pub resource: String,
    /// The fencing token granted or released.
    pub token: u64,
    /// The holder.
    pub holder: String,
    /// `acquire` or `release`.
    pub event: String,
    /// The lease's ttl.
    #[serde(with = "humantime_serde_ms")]
    pub ttl: Duration,
    /// When (database clock).
    #[serde(with = "failover_core::time::rfc3339")]
    pub at: SystemTime,
}

mod humantime_serde_ms {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

const EVENTS: &str = "SELECT id, resource, token, holder, event, \
     (extract(epoch FROM ttl) * 1000)::BIGINT AS ttl_ms, at FROM fencing_lease_events \
     WHERE ($1::TEXT IS NULL OR resource = $1) ORDER BY id DESC LIMIT $2";

impl PostgresLeaseFencer {
    /// Lease events newest first, of one resource or (with `None`) of all.
    pub async fn lease_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LeaseEvent>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool()
            .query(
                "fencing.history",
                EVENTS,
                &[(&resource, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LeaseEvent {
                id: r.get::<_, i64>("id") as u64,
                resource: r.get("resource"),
                token: r.get::<_, i64>("token") as u64,
                holder: r.get("holder"),
                event: r.get("event"),
                ttl: Duration::from_millis(r.get::<_, i64>("ttl_ms").max(0) as u64),
                at: r.get("at"),
            })
            .collect())
    }
}
