//! TLS configuration for the control channel (rustls 0.23, ring provider, TLS 1.2 and 1.3 only).
//!
//! The server loads its certificate chain and key from PEM files; with none configured it generates a self-signed
//! development certificate at start, writes it next to the process (so a client can pin it with `--ca`) and warns
//! loudly. Clients verify against a CA/pinned certificate file, or — only when asked with `--insecure` — accept
//! any certificate (development against the generated certificate).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::TlsConfig;

/// Protocol versions we speak: TLS 1.3 preferred, 1.2 for older clients; nothing older.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// rustls refused the certificate/key pair or the versions.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the development certificate failed.
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
}

/// The server side: its rustls config plus, for the development certificate, where its PEM was written.
pub struct ServerTls {
    /// Shared by every connection.
    pub config: Arc<ServerConfig>,
    /// `Some(path)` when a self-signed development certificate was generated.
    pub dev_cert_path: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server's TLS configuration from `[tls]`, generating a development certificate when none is set.
pub fn server_config(tls: &TlsConfig, dev_cert_dir: &Path) -> Result<ServerTls, TlsError> {
    let (certs, key, dev_cert_path) = if tls.cert_path.is_empty() {
        let (certs, key, pem) = generate_dev_cert()?;
        // Unique per server instance: tests run several servers in one process.
        static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dev_cert_dir.join(format!("realm-dev-cert-{}-{n}.pem", std::process::id()));
        std::fs::write(&path, pem).map_err(|source| TlsError::Read { path: path.clone(), source })?;
        (certs, key, Some(path))
    } else {
        (load_certs(Path::new(&tls.cert_path))?, load_key(Path::new(&tls.key_path))?, None)
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Stateless tickets would need a shared key rotation story across zones; session resumption is not needed
    // for a connection that lives as long as a play session.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // With nowhere to keep them, TLS 1.3 tickets would be built (random nonces, a key derivation each) and then
    // dropped unsent: rustls sends 2 by default.
    config.send_tls13_tickets = 0;
    Ok(ServerTls { config: Arc::new(config), dev_cert_path })
}

/// A fresh self-signed certificate for `localhost` and `127.0.0.1`: (chain, key, PEM of the certificate).
pub fn generate_dev_cert() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), TlsError> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key, pem))
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(file)).collect();
    let certs = certs.map_err(|source| TlsError::Read { path: path.into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.into(), what: "no CERTIFICATE found" });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|source| TlsError::Read { path: path.into(), source })?
        .ok_or(TlsError::Pem { path: path.into(), what: "no PRIVATE KEY found" })
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Trust exactly the certificates (or CAs) in this PEM file — e.g. the server's development certificate.
    CaFile(PathBuf),
    /// Accept any certificate. For development only: anyone on the path can impersonate the server.
    InsecureAcceptAny,
}

/// Builds a client configuration (used by realm-client, realm-bots and the tests).
pub fn client_config(trust: &ServerTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
    let config = match trust {
        ServerTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::InsecureAcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks handshake signatures (so the peer holds the key it shows).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_written_and_trusted_by_a_pinning_client() {
        let dir = std::env::temp_dir();
        let tls = server_config(&TlsConfig::default(), &dir).unwrap();
        let path = tls.dev_cert_path.clone().unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("BEGIN CERTIFICATE"));
        client_config(&ServerTrust::CaFile(path.clone())).unwrap();
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn missing_certificate_file_names_the_path() {
        let cfg = TlsConfig { cert_path: "/nonexistent/cert.pem".into(), key_path: "/nonexistent/key.pem".into() };
        let err = server_config(&cfg, &std::env::temp_dir()).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_a_typed_error() {
        let dir = std::env::temp_dir().join(format!("realm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, _, pem) = generate_dev_cert().unwrap();
        let cert = dir.join("c.pem");
        std::fs::write(&cert, &pem).unwrap();
        let cfg = TlsConfig { cert_path: cert.display().to_string(), key_path: cert.display().to_string() };
        let err = server_config(&cfg, &dir).err().unwrap();
        assert!(matches!(err, TlsError::Pem { what: "no PRIVATE KEY found", .. }), "{err}");
    }
}
