//! TLS on the listeners (HTTP `tls-*`, admin `admin-tls-*`, JDBC
//! `thrift-tls-*`), with rustls.
//!
//! Each listener with a certificate has a [`TlsSource`] (`source`): its
//! rustls server configuration, swapped whole when the files are read again
//! (SIGHUP, or a change on disk), and taken per accepted connection, so a
//! new certificate (or client CA bundle) applies to the next handshake and
//! an established connection keeps the one it was made with. TLS 1.2 and
//! 1.3; ALPN `h2` then `http/1.1` on HTTP, `http/1.1` on admin, none on
//! JDBC. With a client CA bundle, client certificates are verified
//! (`required` or `optional`): `identity` turns a verified one into the
//! subject and SANs the access log shows and the identity header carries.
//! `handshake` bounds every handshake in time and in number.
//!
//! A file that cannot be read or holds no usable PEM is, at start, a
//! configuration error naming its key; on a reload, the old configuration
//! stays and the failure is logged and counted.

pub mod client;
pub mod handshake;
pub mod identity;
pub mod pem;
pub mod source;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use handshake::Handshakes;
pub use source::TlsSource;

/// ALPN protocols offered on the HTTP listener, in the server's order of
/// preference.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN on the admin listener (HTTP/1.1 only).
pub const ALPN_ADMIN: &[&[u8]] = &[b"http/1.1"];
/// No ALPN (the JDBC listener speaks Thrift).
pub const ALPN_NONE: &[&[u8]] = &[];

/// Whether a client certificate is demanded, when a client CA is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate the CA signed is refused in the
    /// handshake.
    Required,
    /// A client may come without a certificate; one it sends is verified
    /// (a bad one is refused), and only a verified one is an identity.
    Optional,
}

impl ClientAuth {
    /// `required` or `optional`, as in the configuration.
    pub fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "required" => Some(ClientAuth::Required),
            "optional" => Some(ClientAuth::Optional),
            _ => None,
        }
    }
}

/// What the JDBC listener does with TLS (`thrift-tls-mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThriftTlsMode {
    /// Bytes relayed as they come: a client's TLS to a Livy Thrift port
    /// with `livy.server.thrift.use.SSL` stays end to end.
    Passthrough,
    /// TLS ends on the listener (`thrift-tls-cert`); plain TCP to Livy.
    Terminate,
    /// TLS ends on the listener and a new TLS connection goes to Livy's
    /// Thrift port, made as [`client::UpstreamTls`] makes those to
    /// `https://` nodes (system roots and a CA bundle, the server name, a
    /// client certificate), from the `thrift-upstream-*` keys or their
    /// `upstream-*` counterparts.
    Reencrypt {
        /// What the client is built from.
        upstream: Box<client::UpstreamTlsSpec>,
    },
}

/// One listener's TLS files, as configured (the paths are restart-only;
/// their contents are re-read on reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSpec {
    /// The key prefix: empty (HTTP), `admin-` or `thrift-`; errors name
    /// `{prefix}tls-cert` and so on.
    pub prefix: &'static str,
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle client certificates are verified against, and whether
    /// they are required.
    pub client_ca: Option<(PathBuf, ClientAuth)>,
    /// `config file F, ` when the paths came from the file (for errors).
    pub origin: String,
}

impl TlsSpec {
    /// The files, in the order [`load`] reads them.
    pub fn files(&self) -> Vec<&std::path::Path> {
        let mut out = vec![self.cert.as_path(), self.key.as_path()];
        if let Some((ca, _)) = &self.client_ca {
            out.push(ca.as_path());
        }
        out
    }
}

/// A problem with one of a listener's files, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{origin}key `{key}`: {problem}")]
pub struct TlsFileError {
    /// Where the key was set (`config file F, ` or empty).
    pub origin: String,
    /// `tls-cert`, `admin-tls-key`, `thrift-tls-client-ca`, ...
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// What one reading of a listener's files gives.
pub struct Loaded {
    /// The rustls configuration to accept with.
    pub config: Arc<ServerConfig>,
    /// The server certificate's notAfter, Unix seconds.
    pub not_after: i64,
    /// The bytes read (certificate, key, CA), to tell whether the files
    /// changed since.
    pub contents: Vec<u8>,
}

/// Reads `spec`'s files into a rustls configuration offering `alpn`.
pub fn load(spec: &TlsSpec, alpn: &[&[u8]]) -> Result<Loaded, TlsFileError> {
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| TlsFileError {
        origin: spec.origin.clone(),
        key: format!("{}tls-{what}", spec.prefix),
        problem: format!("{}: {e}", path.display()),
    };
    let read =
        |what: &str, path: &std::path::Path| std::fs::read(path).map_err(|e| bad(what, path, &e));
    let cert_pem = read("cert", &spec.cert)?;
    let key_pem = read("key", &spec.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert", &spec.cert, &e))?;
    let Some(leaf) = chain.first() else {
        return Err(bad("cert", &spec.cert, &"no PEM certificate in the file"));
    };
    let not_after = identity::not_after(leaf).map_err(|e| bad("cert", &spec.cert, &e))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad("key", &spec.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("cert", &spec.cert, &e))?;
    let mut contents = [cert_pem, key_pem].concat();
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, auth)) => {
            let ca_pem = read("client-ca", ca)?;
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca_pem) {
                let c = c.map_err(|e| bad("client-ca", ca, &e))?;
                roots.add(c).map_err(|e| bad("client-ca", ca, &e))?;
            }
            if roots.is_empty() {
                return Err(bad("client-ca", ca, &"no PEM certificate in the file"));
            }
            contents.extend_from_slice(&ca_pem);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| bad("client-ca", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| bad("key", &spec.key, &e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless session tickets, as OpenSSL (and so HAProxy and nginx)
    // issues by default, instead of rustls' default: resumption state kept
    // in one 256-entry cache behind a lock shared by every worker, two
    // entries per TLS 1.3 client, so a gateway with more than about a
    // hundred clients evicts tickets before they are used. A ticket carries
    // its own state, encrypted under a key that rotates every 6 hours
    // (tickets accepted for up to 12). A new ticketer at each reading of
    // the files: sessions made before a reload (perhaps under a client CA
    // since removed) are not resumed after it.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsFileError {
        origin: spec.origin.clone(),
        key: format!("{}tls-cert", spec.prefix),
        problem: format!("no session ticket key (the system's random source failed): {e}"),
    })?;
    // One TLS 1.3 ticket per handshake, as OpenSSL sends on a resumption,
    // instead of rustls' two. A stateless ticket may be offered again, so
    // a client opening connections side by side needs no second one; and
    // each ticket costs the client a session of its own to store and the
    // proxy one encryption (resumed handshakes per second, OpenSSL
    // clients: docs/benchmarks.md, "One ticket per handshake").
    config.send_tls13_tickets = 1;
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
        contents,
    })
}
