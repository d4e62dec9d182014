//! Throw-away certificates for TLS clusters.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::TestkitError;

/// A CA and a server certificate it signed (SANs `127.0.0.1` and `localhost`), all PEM.
#[derive(Debug)]
pub(crate) struct TlsMaterial {
    pub(crate) ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

fn cert_err(source: rcgen::Error) -> TestkitError {
    TestkitError::Certificate { source }
}

fn ca(name: &str) -> Result<(rcgen::Certificate, KeyPair), TestkitError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(cert_err)?;
    Ok((cert, key))
}

pub(crate) fn generate(ca_name: &str) -> Result<TlsMaterial, TestkitError> {
    let (ca_cert, ca_key) = ca(ca_name)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(cert_err)?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a throw-away CA certificate (PEM) into `dir` as `<name>.pem`, with `name` as
/// its common name, and returns the path: tests use it to prove that a server certificate
/// from another CA is refused. The CA's key is discarded.
pub fn generate_ca_file(dir: &Path, name: &str) -> Result<PathBuf, TestkitError> {
    let (cert, _key) = ca(name)?;
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem())
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}
