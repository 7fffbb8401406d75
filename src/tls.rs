//! TLS on the HTTP listener (`tls-cert`, `tls-key`), with rustls.
//!
//! The certificate chain and key are read once, at start, into a rustls
//! server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, no
//! client certificates. A file that cannot be read or holds no usable PEM
//! is a configuration error naming its key.

pub mod client;

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A problem with one of the two files, naming its key.
#[derive(Debug)]
pub struct TlsFileError {
    /// `tls-cert` or `tls-key`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// The rustls configuration serving the chain in `cert` with the key in
/// `key` (both PEM).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let bad = |key: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsFileError {
        key,
        problem: format!("{}: {e}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("tls-cert", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls-cert", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("tls-cert", cert, &"no PEM certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls-key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("tls-cert", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| bad("tls-key", key, &e))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
