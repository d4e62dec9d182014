//! A dedicated connection outside the pool, for LISTEN: it follows the listen DSN
//! when one is set, and its outcome counts for reachability like any attempt.

use super::PgPool;
use crate::errors::{DbError, DbErrorKind, Reach};
use crate::postgres::connect::DedicatedConnection;
use crate::postgres::error::NO_PRIMARY;

impl PgPool {
    /// A dedicated connection outside the pool (for LISTEN), to the first writable
    /// host, bounded by the connect timeout per host, with the host (`host:port`) it
    /// reached. The returned stream carries the connection's asynchronous messages
    /// (notifications).
    pub async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, DedicatedConnection, String), DbError> {
        let generation = self.inner.current.load_full();
        let connect = generation.listen.as_ref().unwrap_or(&generation.connect);
        match connect.connect_raw().await {
            Ok(connected) => {
                self.reached();
                Ok(connected)
            }
            Err(e) => {
                let no_primary = e.starts_with(NO_PRIMARY);
                let text = if no_primary {
                    e
                } else {
                    format!("no writable host: {e}")
                };
                self.not_reached(&text);
                let err = DbError::new(
                    DbErrorKind::Unavailable,
                    "pool.connect_dedicated",
                    None,
                    text,
                )
                .with_reach(Reach::NotConnected);
                Err(if no_primary {
                    err.with_no_primary()
                } else {
                    err
                })
            }
        }
    }
}
