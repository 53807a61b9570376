//! TLS on the listener, with rustls: `server.tls_cert_file` (a PEM chain)
//! and `server.tls_key_file` (a PEM private key). The configuration is
//! swapped on SIGHUP, so a renewed certificate is served from the next
//! connection on, without a restart.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    #[error("cannot read the certificate chain in {path}: {detail}")]
    Certificates { path: String, detail: String },
    #[error("cannot read the private key in {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the listener's TLS configuration from PEM files.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, ListenerTlsError> {
    let certificates = |detail: String| ListenerTlsError::Certificates {
        path: cert_file.display().to_string(),
        detail,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| certificates(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificates(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificates("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| ListenerTlsError::Key {
        path: key_file.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration in force, swapped on reload.
#[derive(Debug, Default)]
pub struct SharedTls(RwLock<Option<Arc<ServerConfig>>>);

impl SharedTls {
    pub fn new(config: Option<Arc<ServerConfig>>) -> SharedTls {
        SharedTls(RwLock::new(config))
    }

    pub fn get(&self) -> Option<Arc<ServerConfig>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, config: Option<Arc<ServerConfig>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}
