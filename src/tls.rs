//! TLS for clients (F27): the public port's certificate and key
//! (`--tls-cert`, `--tls-key`, PEM), reloaded on SIGHUP, served with
//! rustls (ring provider) and HTTP/2 or HTTP/1.1 by ALPN; the client side's
//! trust (system roots, or `--ca`); and the throwaway CA of `ringkv
//! cluster --tls` (rcgen). Node-to-node traffic does not use this: it is
//! sealed by the cluster secret whether or not the public port has TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// Makes ring the process's rustls provider (once; later calls do nothing).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder, the ring provider installed first: reqwest
/// is built without a provider of its own (its default, aws-lc-rs, compiles
/// C) and panics when it builds a client before one is installed. Every
/// `reqwest` client of ringkv and its tests starts here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

/// A `reqwest` client with defaults (see [`http_client_builder`]).
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The server's certificate files, reloadable: cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain's file (PEM, leaf first).
    cert: PathBuf,
    /// The private key's file (PEM: PKCS#8, PKCS#1 or SEC1).
    key: PathBuf,
    /// The configuration now; replaced whole by a reload (a std lock held
    /// only to clone or swap the `Arc`).
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerTls({}, {})",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl ServerTls {
    /// Reads the certificate and key.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        install_provider();
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// The configuration for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on an error the configuration in force stays.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let named = |path: &Path, what: &str| {
        let path = path.display().to_string();
        let what = what.to_string();
        move |e: rustls_pki_types::pem::Error| Error::invalid(format!("{what} {path}: {e}"))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(named(cert, "--tls-cert"))?
        .collect::<std::result::Result<_, _>>()
        .map_err(named(cert, "--tls-cert"))?;
    if chain.is_empty() {
        return Err(Error::invalid(format!(
            "--tls-cert {}: no certificate in the file (PEM expected)",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(named(key, "--tls-key"))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            Error::invalid(format!(
                "--tls-cert {} and --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What a plain-HTTP request to a TLS port gets: a 400 saying so, then the
/// connection closes (instead of a TLS alert a person cannot read, or a
/// wait for a handshake that never comes).
pub fn plain_http_refusal() -> Vec<u8> {
    let body = r#"{"error":"this port speaks HTTPS (TLS): use https://, not http://","code":"tls_required","status":400}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A throwaway CA and a certificate it signed for `names` (host names or
/// IP addresses), as PEM: `(ca_cert, cert, key)`. For local demos
/// (`ringkv cluster --tls`) and tests.
pub fn demo_certificates(names: &[String]) -> Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| Error::invalid(format!("certificates: {e}"));
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ringkv throwaway demo CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(failed)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(failed)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "ringkv node");
    let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_certificates_load_as_a_server_config() {
        let (ca, cert, key) = demo_certificates(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let tls = ServerTls::load(&cert_path, &key_path).unwrap();
        std::fs::write(&cert_path, "not a certificate").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        let _ = tls.acceptor();
    }
}
