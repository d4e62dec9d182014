//! TLS connectors (rustls with the `ring` provider) built from [`TlsSettings`].

use super::settings::{TlsMode, TlsSettings, VarNames};
use crate::errors::ConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the pool connects with.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    Tls(MakeRustlsConnect),
}

pub(crate) fn connector(names: &VarNames, tls: &TlsSettings) -> Result<Connector, ConfigError> {
    if tls.mode == TlsMode::Disable {
        return Ok(Connector::Plain);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            var: names.name("TLS__MODE"),
            reason: format!("TLS setup failed: {e}"),
        })?;
    let builder = match tls.mode {
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let var = names.name("TLS__CA_FILE");
            let path = tls.ca_file.as_ref().ok_or_else(|| ConfigError::Invalid {
                var: var.clone(),
                reason: format!("is required when TLS mode is {}", tls.mode),
            })?;
            let file_err = |reason: String| ConfigError::TlsFile {
                var: var.clone(),
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(file_err("contains no PEM certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| file_err(format!("not a usable CA certificate: {e}")))?;
            }
            if tls.mode == TlsMode::VerifyFull {
                builder.with_root_certificates(roots)
            } else {
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| file_err(format!("not a usable CA set: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(VerifyCa(chain)))
            }
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let cert_var = names.name("TLS__CERT_FILE");
            let key_var = names.name("TLS__KEY_FILE");
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ConfigError::TlsFile {
                    var: cert_var.clone(),
                    path: cert.clone(),
                    reason: e.to_string(),
                })?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigError::TlsFile {
                var: key_var,
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConfigError::TlsFile {
                    var: cert_var,
                    path: cert.clone(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Connector::Tls(MakeRustlsConnect::new(config)))
}

/// libpq's `sslmode=verify-ca`: the certificate must chain to a trusted CA (validity
/// period, key usage and signatures all checked by webpki), but may name any host.
/// webpki checks the name only after the chain, so a name mismatch means the chain
/// itself was accepted.
#[derive(Debug)]
struct VerifyCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// libpq's `sslmode=require`: encrypt, do not verify the server's identity.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
