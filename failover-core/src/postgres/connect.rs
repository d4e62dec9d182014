//! Multi-host connect: every host of the DSN tried in order, each bounded by the
//! connect timeout, only a writable server accepted (any server for a pool that reads
//! from standbys); the last failure of each host remembered for error messages and
//! health. When every host answered but each refused writes, the failure says there is
//! no primary yet. Pooled connections get the session settings (`lock_timeout`) right
//! after connecting.

use super::error::{describe, NO_PRIMARY};
use super::tls::Connector;
use crate::handle::lock;
use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The connection task of a dedicated connection; forwards asynchronous messages.
pub type DedicatedConnection = futures_util::stream::BoxStream<
    'static,
    Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
>;

pub(super) struct FailoverConnect {
    pub(super) component: &'static str,
    pub(super) hosts: Vec<(String, tokio_postgres::Config)>,
    pub(super) tls: Connector,
    pub(super) timeout: Duration,
    pub(super) last_connect: Arc<Mutex<Option<String>>>,
    pub(super) last_host: Arc<Mutex<Option<String>>>,
}

/// The pool's connector: a multi-host connect, then `session` (e.g. `SET lock_timeout
/// = '500ms'`) on the new connection, bounded by the connect timeout.
pub(super) struct SharedConnect(pub(super) Arc<FailoverConnect>, pub(super) Option<String>);

/// The message tokio-postgres gives when `target_session_attrs=read-write` refuses a
/// standby or a read-only primary.
const REFUSES_WRITES: &str = "does not allow writes";

enum AnyConnection {
    Plain(
        Box<tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>>,
    ),
    Tls(
        Box<
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        >,
    ),
}

impl AnyConnection {
    fn into_stream(self) -> DedicatedConnection {
        use futures_util::StreamExt;
        match self {
            Self::Plain(mut c) => {
                futures_util::stream::poll_fn(move |cx| c.poll_message(cx)).boxed()
            }
            Self::Tls(mut c) => futures_util::stream::poll_fn(move |cx| c.poll_message(cx)).boxed(),
        }
    }
}

impl FailoverConnect {
    /// Tries each host in order, each bounded by the connect timeout. Returns the
    /// first connection a writable server accepted, or the last error as text.
    async fn connect_any(
        &self,
    ) -> Result<
        (tokio_postgres::Client, AnyConnection, String),
        (Option<tokio_postgres::Error>, String),
    > {
        let mut last_error = None;
        let mut failures: Vec<String> = Vec::new();
        let mut last_text = String::from("no host configured");
        let mut read_only = 0;
        for (label, config) in &self.hosts {
            let attempt = async {
                match &self.tls {
                    Connector::Plain => config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map(|(c, conn)| (c, AnyConnection::Plain(Box::new(conn)))),
                    Connector::Tls(tls) => config
                        .connect(tls.clone())
                        .await
                        .map(|(c, conn)| (c, AnyConnection::Tls(Box::new(conn)))),
                }
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok((client, conn))) => {
                    metrics::counter!("failover_pg_connects_total", "component" => self.component, "outcome" => "ok").increment(1);
                    let mut last_host = lock(&self.last_host);
                    if last_host.as_deref().is_some_and(|h| h != label) {
                        tracing::warn!(component = self.component, from = ?*last_host, to = %label, "connected to a different primary");
                        metrics::counter!("failover_pg_failovers_total", "component" => self.component, "cause" => "host_change").increment(1);
                    }
                    *last_host = Some(label.clone());
                    *lock(&self.last_connect) = None;
                    return Ok((client, conn, label.clone()));
                }
                Ok(Err(e)) => {
                    let text = describe(&e);
                    if text.contains(REFUSES_WRITES) {
                        read_only += 1;
                    }
                    failures.push(format!("{label}: {text}"));
                    last_error = Some(e);
                }
                Err(_) => {
                    failures.push(format!(
                        "{label}: no answer within {:?} (server hung?)",
                        self.timeout
                    ));
                }
            }
            // Every host's reason: the first host's "connection refused" matters as
            // much as the standby's "does not allow writes".
            last_text = failures.join("; ");
            if read_only == self.hosts.len() {
                // Every host answered, and every one refused writes.
                last_text = format!("{NO_PRIMARY}: {last_text}");
            }
            metrics::counter!("failover_pg_connects_total", "component" => self.component, "outcome" => "error").increment(1);
            tracing::debug!(component = self.component, error = %last_text, "connect failed");
            *lock(&self.last_connect) = Some(last_text.clone());
        }
        Err((last_error, last_text))
    }

    pub(super) async fn connect_raw(
        &self,
    ) -> Result<(tokio_postgres::Client, DedicatedConnection, String), String> {
        match self.connect_any().await {
            Ok((client, conn, host)) => Ok((client, conn.into_stream(), host)),
            Err((_, text)) => Err(text),
        }
    }
}

impl Connect for SharedConnect {
    fn connect(
        &self,
        _pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        Box::pin(async move {
            match self.0.connect_any().await {
                Ok((client, conn, _)) => {
                    let component = self.0.component;
                    let task = tokio::spawn(async move {
                        let result = match conn {
                            AnyConnection::Plain(c) => (*c).await,
                            AnyConnection::Tls(c) => (*c).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!(component, error = %e, "postgres connection ended");
                        }
                    });
                    if let Some(session) = &self.1 {
                        match tokio::time::timeout(self.0.timeout, client.batch_execute(session))
                            .await
                        {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                task.abort();
                                return Err(e);
                            }
                            // No tokio-postgres error to return: the pool's create
                            // timeout reports it (retryable).
                            Err(_) => {
                                task.abort();
                                return std::future::pending().await;
                            }
                        }
                    }
                    Ok((client, task))
                }
                Err((Some(e), _)) => Err(e),
                // Every host hung: there is no tokio-postgres error to return, so wait
                // for the pool's create timeout, which reports a timeout (retryable).
                Err((None, _)) => std::future::pending().await,
            }
        })
    }
}
