//! PEM files into rustls types, for every TLS client the proxy makes (to
//! Livy over HTTP and Thrift, to ZooKeeper, `livy-proxy health`): one place
//! that reads a CA bundle or a certificate and its key, and builds the
//! client configuration from them, with errors naming the configuration key
//! that gave the file.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A file that does not load, and the key that named it.
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct PemError {
    /// The configuration key (`upstream-ca`, `zk-tls-key`, ...).
    pub key: &'static str,
    /// What is wrong, with the file's path.
    pub problem: String,
}

fn bad(key: &'static str, path: &Path, e: impl std::fmt::Display) -> PemError {
    PemError {
        key,
        problem: format!("{}: {e}", path.display()),
    }
}

/// The certificates in the PEM file at `path` (set by `key`): at least one.
pub fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, path, e))?;
    if certs.is_empty() {
        return Err(bad(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Adds the CA certificates of the bundle at `path` (set by `key`) to
/// `roots`.
pub fn add_roots(
    roots: &mut RootCertStore,
    key: &'static str,
    path: &Path,
) -> Result<(), PemError> {
    for cert in certificates(key, path)? {
        roots
            .add(cert)
            .map_err(|e| bad(key, path, format!("not a usable CA: {e}")))?;
    }
    Ok(())
}

/// A client certificate chain and its private key, read from their files.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The key of the private key's file, named when the two do not match.
    key_key: &'static str,
    key_path: std::path::PathBuf,
}

impl Identity {
    /// Reads the chain at `cert` (set by `cert_key`) and the private key at
    /// `key` (set by `key_key`).
    pub fn read(
        cert_key: &'static str,
        cert: &Path,
        key_key: &'static str,
        key: &Path,
    ) -> Result<Identity, PemError> {
        let chain = certificates(cert_key, cert)?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key_key, key, e))?;
        Ok(Identity {
            chain,
            key: private,
            key_key,
            key_path: key.to_path_buf(),
        })
    }

    /// The first certificate's notAfter (Unix seconds), for the expiry
    /// gauge; `None` if it cannot be parsed (rustls will say why).
    pub fn not_after(&self) -> Option<i64> {
        super::identity::not_after(self.chain.first()?).ok()
    }
}

/// A client configuration (the *ring* provider, TLS 1.2 and 1.3) trusting
/// `roots`, presenting `identity` when the server asks for a certificate,
/// offering `alpn`. `ca_key` names the trust's key should rustls refuse the
/// protocol versions (it does not with *ring*).
pub fn client_config(
    roots: RootCertStore,
    identity: Option<Identity>,
    alpn: &[&[u8]],
    ca_key: &'static str,
) -> Result<ClientConfig, PemError> {
    let builder = builder(ca_key)?.with_root_certificates(roots);
    finish(builder, identity, alpn)
}

/// [`client_config`] with the server's certificate judged by `verifier`
/// instead of a root store (`livy-proxy health` trusts the certificate the
/// proxy serves itself).
pub fn client_config_verified_by(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    identity: Option<Identity>,
    alpn: &[&[u8]],
    ca_key: &'static str,
) -> Result<ClientConfig, PemError> {
    let builder = builder(ca_key)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    finish(builder, identity, alpn)
}

fn builder(
    ca_key: &'static str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, PemError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PemError {
            key: ca_key,
            problem: e.to_string(),
        })
}

fn finish(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<Identity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, PemError> {
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| bad(id.key_key, &id.key_path, e))?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = certificates("upstream-ca", &empty).unwrap_err();
        assert_eq!(e.key, "upstream-ca");
        assert!(e.problem.contains("empty.pem"), "{e}");
        let missing = dir.path().join("missing.pem");
        let mut roots = RootCertStore::empty();
        assert_eq!(
            add_roots(&mut roots, "zk-tls-ca", &missing)
                .unwrap_err()
                .key,
            "zk-tls-ca"
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.path().join("c.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        assert_eq!(
            Identity::read(
                "thrift-upstream-client-cert",
                &cert_file,
                "thrift-upstream-client-key",
                &empty
            )
            .err()
            .unwrap()
            .key,
            "thrift-upstream-client-key"
        );
        // A key that is not the certificate's.
        let other = dir.path().join("other.pem");
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let id = Identity::read("c", &cert_file, "k", &other).unwrap();
        let e = client_config(RootCertStore::empty(), Some(id), &[], "ca").unwrap_err();
        assert_eq!(e.key, "k");
    }
}
