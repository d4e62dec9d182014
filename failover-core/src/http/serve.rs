//! The one server loop of the admin routes, plain TCP or TLS: every connection is
//! served by hyper's HTTP/1.1 with the bounds of [`ServeLimits`], and every request
//! carries the client's address as axum's [`ConnectInfo<SocketAddr>`] (what the
//! failed-authentication throttle keys on).
//!
//! | bound | default | what happens |
//! |---|---|---|
//! | request line and headers | 10 s | the connection is closed |
//! | request body | 30 s | 408 `request_timeout`, connection closed |
//! | TLS handshake | 10 s | the connection is closed |
//! | shutdown | 10 s | connections still open are dropped |

use super::tls::common_name;
use super::PeerCertificate;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take over each part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeLimits {
    /// From the connection's first read (or the end of the previous response) to the
    /// end of the request headers; a client still trickling headers then is
    /// disconnected. Default 10 s.
    pub header_read: Duration,
    /// To receive a request body, in total; a body still incomplete then is answered
    /// 408 `request_timeout` and the connection is closed. Default 30 s.
    pub body: Duration,
    /// To complete the TLS handshake ([`serve_tls`](super::tls::serve_tls) only).
    /// Default 10 s.
    pub handshake: Duration,
    /// After the shutdown signal, how long open connections may finish their
    /// requests before they are dropped. Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body: Duration::from_secs(30),
            handshake: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServeLimits {
    /// Sets [`header_read`](Self::header_read).
    #[must_use]
    pub fn with_header_read(mut self, timeout: Duration) -> Self {
        self.header_read = timeout;
        self
    }

    /// Sets [`body`](Self::body).
    #[must_use]
    pub fn with_body(mut self, timeout: Duration) -> Self {
        self.body = timeout;
        self
    }

    /// Sets [`handshake`](Self::handshake).
    #[must_use]
    pub fn with_handshake(mut self, timeout: Duration) -> Self {
        self.handshake = timeout;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// The body deadline of a request, left in its extensions for [`JsonBody`](super::JsonBody).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline(pub(crate) Duration);

/// Serves `app` (HTTP/1.1, plain TCP) on `listener` until the task is dropped, with
/// `limits`. Each request carries its client's [`ConnectInfo<SocketAddr>`].
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits) -> std::io::Result<()> {
    run(listener, app, limits, None, std::future::pending()).await
}

/// [`serve`] until `shutdown` completes: then no new connection is accepted and open
/// ones finish their requests, for at most [`ServeLimits::shutdown_grace`].
pub async fn serve_with_shutdown(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    run(listener, app, limits, None, shutdown).await
}

/// The accept loop shared by the plain and the TLS server.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    // Also bounds the gap between body frames for routes that read a body without
    // `JsonBody` (which bounds the body as a whole).
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body,
    ));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tls {
                None => connection(tcp, remote, None, app, limits, watcher).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "admin TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "admin TLS handshake timed out");
                                return;
                            }
                        };
                    let peer = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| common_name(c.as_ref()))
                        .map(|common_name| PeerCertificate { common_name });
                    connection(stream, remote, peer, app, limits, watcher).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "admin server shut down with connections still open; they were dropped");
    }
    Ok(())
}

async fn connection<I>(
    io: I,
    remote: SocketAddr,
    peer: Option<PeerCertificate>,
    app: Router,
    limits: ServeLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        let extensions = req.extensions_mut();
        extensions.insert(ConnectInfo(remote));
        extensions.insert(BodyDeadline(limits.body));
        if let Some(peer) = &peer {
            extensions.insert(peer.clone());
        }
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %e, "admin connection ended with an error");
    }
}
