//! Serving the admin routes over TLS with client certificates (mTLS).
//!
//! [`server_config`] builds a rustls server configuration from PEM files; with a client
//! CA, a client certificate is verified against it (required or optional).
//! [`serve_tls`] accepts connections, completes the handshake (a client whose
//! certificate another CA signed is refused there, before any HTTP), reads the
//! verified certificate's subject common name and hands it to the routes as a
//! [`PeerCertificate`] — the [`Authenticator`](super::Authenticator) maps it to an
//! identity through a `cn:` line of the principals file.

use super::auth::PeerCertificate;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A TLS setting that cannot be used. Says which file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsServerError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}; give a readable PEM file")]
    Pem {
        /// `certificate`, `private key` or `client CA`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

fn pem_err(what: &'static str, path: &Path, message: impl ToString) -> TlsServerError {
    TlsServerError::Pem {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(what, path, "no certificate found"));
    }
    Ok(certs)
}

/// Client certificate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (bearer tokens only).
    None,
    /// A certificate is verified when sent; callers without one may use a token.
    Optional,
    /// Every connection must present a certificate the CA signed.
    Required,
}

/// A rustls server configuration from PEM files: the server's chain and key, and
/// the CA that signs client certificates (unless `client_auth` is `None`).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certificate", cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_err("private key", key_file, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsServerError::Config(e.to_string()))?;
    let builder = match (client_auth, client_ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsServerError::Config(
                "client certificates need a client CA file".into(),
            ))
        }
        (policy, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs("client CA", ca)? {
                roots.add(cert).map_err(|e| pem_err("client CA", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if policy == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsServerError::Config(e.to_string()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsServerError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` over TLS (HTTP/1.1) on `listener` until the task is dropped. Each
/// request of a connection with a verified client certificate carries its
/// [`PeerCertificate`]. A failed handshake (unknown CA, no certificate when one is
/// required) closes the connection and is logged at debug level.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "admin TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c.as_ref()))
                .map(|common_name| PeerCertificate { common_name });
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    if let Some(peer) = &peer {
                        req.extensions_mut().insert(peer.clone());
                    }
                    app.clone().oneshot(req)
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "admin TLS connection ended with an error");
            }
        });
    }
}
