//! Serving the admin routes over TLS with client certificates (mTLS).
//!
//! [`server_config`] builds a rustls server configuration from PEM files; with a client
//! CA, a client certificate is verified against it (required or optional).
//! [`serve_tls`] accepts connections (through the same server loop and
//! [`ServeLimits`] as [`serve`](super::serve)), completes the handshake (a client whose
//! certificate another CA signed is refused there, before any HTTP), reads the
//! verified certificate's subject common name and hands it to the routes as a
//! [`PeerCertificate`](super::PeerCertificate) — the [`Authenticator`](super::Authenticator) maps it to an
//! identity through a `cn:` line of the principals file.

use super::ServeLimits;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

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

/// Serves `app` over TLS (HTTP/1.1) on `listener` until the task is dropped, with the
/// default [`ServeLimits`]. Each request of a connection with a verified client
/// certificate carries its [`PeerCertificate`](super::PeerCertificate), and every request its client's
/// address as axum's `ConnectInfo<SocketAddr>`. A failed handshake (unknown CA, no
/// certificate when one is required) closes the connection and is logged at debug
/// level.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    serve_tls_with_shutdown(
        listener,
        config,
        app,
        ServeLimits::default(),
        std::future::pending(),
    )
    .await
}

/// [`serve_tls`] with `limits`, until `shutdown` completes: then no new connection
/// is accepted and open ones finish their requests, for at most
/// [`ServeLimits::shutdown_grace`].
pub async fn serve_tls_with_shutdown(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    super::serve::run(listener, app, limits, Some(acceptor), shutdown).await
}
