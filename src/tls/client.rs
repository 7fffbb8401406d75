//! TLS to Livy (`https://` nodes): the rustls client configuration every
//! connection to a Livy server is made with, the proxied requests' and the
//! probes' alike.
//!
//! Trust: the system's roots (rustls-native-certs: the operating system's
//! bundle, `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE`/`SSL_CERT_DIR`)
//! plus the CAs in `upstream-ca`. The system store and not webpki-roots'
//! compiled-in Mozilla list, because Livy's certificates are nearly always
//! signed by a company CA, which operators install into the system store
//! once for every program on the host; the system bundle also gets its
//! updates with the OS instead of with a rebuild of the proxy.
//!
//! The server name checked is the node's host (a DNS name or an IP
//! address, as in its URL) unless `upstream-server-name` names one for
//! every node (Livy servers behind one certificate for a service name).
//! `upstream-client-cert`/`upstream-client-key` give the certificate sent
//! when Livy asks for one (mutual TLS). TLS 1.2 and 1.3, ALPN `http/1.1`
//! (the proxy speaks HTTP/1.1 to Livy), the *ring* provider, session
//! resumption on (rustls' in-memory cache), so a new pooled connection to
//! the same server costs one round trip less.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::TlsFileError;

/// What TLS to Livy is configured with: the four `upstream-*` keys as
/// given (paths and name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTlsFiles<'a> {
    /// `upstream-ca`: PEM CA certificates trusted beside the system's.
    pub ca: Option<&'a Path>,
    /// `upstream-client-cert`: PEM chain sent to a Livy that asks.
    pub client_cert: Option<&'a Path>,
    /// `upstream-client-key`: its private key.
    pub client_key: Option<&'a Path>,
    /// `upstream-server-name`: the name every Livy certificate is checked
    /// against instead of the node's host.
    pub server_name: Option<&'a str>,
}

/// The client side of TLS to Livy, built at start and re-read on SIGHUP:
/// shared by the proxy's pool and the probes.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Swapped whole by [`UpstreamTls::reload`]: new connections handshake
    /// with the new one, open ones keep theirs.
    config: arc_swap::ArcSwap<ClientConfig>,
    /// The files it was built from, read again on a reload.
    files: OwnedFiles,
    server_name: Option<ServerName<'static>>,
    /// How many roots came from the system store, for the start-up log.
    pub system_roots: usize,
}

impl UpstreamTls {
    /// The connector new connections handshake with.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.load_full())
    }

    /// Reads `upstream-ca`, `upstream-client-cert` and `upstream-client-key`
    /// again (SIGHUP): a renewed CA bundle or client certificate applies to
    /// the next connection to Livy; a file that does not load keeps the
    /// configuration in use and is the error.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let fresh = upstream_tls(&UpstreamTlsFiles {
            ca: self.files.ca.as_deref(),
            client_cert: self.files.client_cert.as_deref(),
            client_key: self.files.client_key.as_deref(),
            server_name: self.files.server_name.as_deref(),
        })?;
        self.config.store(fresh.config.load_full());
        Ok(())
    }

    /// The name a node's certificate must carry: the override, else the
    /// host of its URL (an IP literal is checked against IP SANs).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} cannot be checked as a TLS server name: {e}"))
    }
}

/// Builds the client configuration (see the module docs). A file that
/// cannot be read or holds no usable PEM is an error naming its key; a
/// system store that cannot be read is not (its errors are logged): with
/// `upstream-ca` the proxy does not need it.
pub fn upstream_tls(files: &UpstreamTlsFiles<'_>) -> Result<UpstreamTls, TlsFileError> {
    let bad = |key: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsFileError {
        origin: String::new(),
        key: key.to_string(),
        problem: format!("{}: {e}", path.display()),
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be read");
    }
    let (system_roots, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = files.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| bad("upstream-ca", ca, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("upstream-ca", ca, &e))?;
        if certs.is_empty() {
            return Err(bad("upstream-ca", ca, &"no PEM certificate in the file"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad("upstream-ca", ca, &format!("not a usable CA: {e}")))?;
        }
    }
    let server_name = files
        .server_name
        .map(|name| {
            ServerName::try_from(name.to_string()).map_err(|e| TlsFileError {
                origin: String::new(),
                key: "upstream-server-name".to_string(),
                problem: format!("{name:?}: {e}"),
            })
        })
        .transpose()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsFileError {
            origin: String::new(),
            key: "upstream-ca".to_string(),
            problem: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match (files.client_cert, files.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TlsFileError {
                origin: String::new(),
                key: "upstream-client-cert".to_string(),
                problem: "set without upstream-client-key (a client certificate needs both)".into(),
            });
        }
        (None, Some(_)) => {
            return Err(TlsFileError {
                origin: String::new(),
                key: "upstream-client-key".to_string(),
                problem: "set without upstream-client-cert (a client certificate needs both)"
                    .into(),
            });
        }
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("upstream-client-cert", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("upstream-client-cert", cert, &e))?;
            if chain.is_empty() {
                return Err(bad(
                    "upstream-client-cert",
                    cert,
                    &"no PEM certificate in the file",
                ));
            }
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad("upstream-client-key", key, &e))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| bad("upstream-client-key", key, &e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(UpstreamTls {
        config: arc_swap::ArcSwap::from_pointee(config),
        files: OwnedFiles {
            ca: files.ca.map(Path::to_path_buf),
            client_cert: files.client_cert.map(Path::to_path_buf),
            client_key: files.client_key.map(Path::to_path_buf),
            server_name: files.server_name.map(str::to_string),
        },
        server_name,
        system_roots,
    })
}

/// [`UpstreamTlsFiles`], owned, for a reload.
#[derive(Debug)]
struct OwnedFiles {
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    server_name: Option<String>,
}

/// The TLS reason inside an I/O error from a handshake or a read, if the
/// error is TLS's (a certificate refused, an alert from Livy, a peer that
/// does not speak TLS) rather than the network's.
pub fn tls_reason(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_server_name_unless_overridden() {
        let tls = upstream_tls(&UpstreamTlsFiles::default()).unwrap();
        assert_eq!(
            tls.server_name("livy1.example").unwrap(),
            ServerName::try_from("livy1.example").unwrap()
        );
        assert!(matches!(
            tls.server_name("127.0.0.11").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            tls.server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        let tls = upstream_tls(&UpstreamTlsFiles {
            server_name: Some("livy.service"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            tls.server_name("127.0.0.11").unwrap(),
            ServerName::try_from("livy.service").unwrap()
        );
    }

    #[test]
    fn bad_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = upstream_tls(&UpstreamTlsFiles {
            ca: Some(&empty),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-ca");
        let e = upstream_tls(&UpstreamTlsFiles {
            client_cert: Some(&empty),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-client-cert");
        let e = upstream_tls(&UpstreamTlsFiles {
            server_name: Some("not a name"),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-server-name");
    }
}
