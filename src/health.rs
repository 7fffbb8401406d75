//! `livy-proxy health [URL]`: one GET, exit 0 on a 200, else 1 (2 for a
//! usage or configuration error). For a container HEALTHCHECK or an exec
//! probe in an image without a shell or curl.
//!
//! It reads the same configuration as the proxy (`--config`, the flags,
//! the `LIVY_PROXY_*` variables), only for the admin listener: without a
//! URL it asks `admin-listen`'s `/healthz` (a wildcard address asked on
//! loopback), over HTTPS when `admin-tls-cert` is set. Over HTTPS it trusts
//! the certificate chain in `admin-tls-cert`, the one the proxy serves, so
//! no CA is needed: a server certificate equal to one in that file is
//! accepted whatever name it carries (the probe asks 127.0.0.1, the
//! certificate names the service); another one must chain to a
//! certificate in the file and name the URL's host. Without
//! `admin-tls-cert`, an `https://` URL is checked against the system's
//! roots. With `admin-tls-client-auth = required` the admin listener wants
//! a client certificate: `--client-cert` and `--client-key`.
//!
//! Blocking std sockets and rustls, one request with a 3 s budget: no
//! runtime, no HTTP client for one status line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Config, OrOff, Source};
use crate::tls::pem::{self, Identity};

/// The health subcommand's own arguments (beside every configuration key).
#[derive(Args, Clone, Debug)]
struct HealthArgs {
    /// The URL to GET [default: admin-listen's /healthz, https:// with
    /// admin-tls-cert].
    url: Option<String>,
    /// PEM client certificate for an admin listener that requires one
    /// (admin-tls-client-auth = required); with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

/// Why a check could not be made as asked (exit 2).
#[derive(Debug, thiserror::Error)]
enum HealthError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pem(#[from] pem::PemError),
}

/// Runs `livy-proxy health` with `args` (the words after `health`).
pub fn main(args: &[String]) -> ExitCode {
    let command = HealthArgs::augment_args(Source::augment_args(
        clap::Command::new("livy-proxy health")
            .about("GET the admin listener's /healthz (or URL): exit 0 on a 200, else 1"),
    ));
    let matches = match command.try_get_matches_from(
        std::iter::once("livy-proxy health".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("livy-proxy health: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let request = match Request::from_matches(&matches) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("livy-proxy health: {e}");
            return ExitCode::from(2);
        }
    };
    match request.check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("livy-proxy health: {}: {e}", request.url);
            ExitCode::from(1)
        }
    }
}

/// One health request, as the arguments and the configuration make it.
struct Request {
    url: String,
    /// `host:port`.
    authority: String,
    path: String,
    /// Over TLS, with this configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Request {
    fn from_matches(matches: &clap::ArgMatches) -> Result<Request, HealthError> {
        let source = Source::from_arg_matches(matches)
            .map_err(|e| HealthError::Usage(e.to_string().trim().to_string()))?;
        let own = HealthArgs::from_arg_matches(matches)
            .map_err(|e| HealthError::Usage(e.to_string().trim().to_string()))?;
        let keys = Config::keys(source.config.as_deref(), matches)?;
        let url = match own.url {
            Some(u) => u,
            None => default_url(keys.admin_listen, keys.admin_tls_cert.is_some())?,
        };
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(HealthError::Usage(format!(
                "{url}: only http:// and https:// URLs"
            )));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let identity = match (&own.client_cert, &own.client_key) {
            (Some(c), Some(k)) => Some(Identity::read("client-cert", c, "client-key", k)?),
            _ => None,
        };
        let tls = if https {
            let config = match &keys.admin_tls_cert {
                Some(chain) => {
                    let verifier =
                        ServedCertificate::new(pem::certificates("admin-tls-cert", chain)?);
                    pem::client_config_verified_by(
                        Arc::new(verifier),
                        identity,
                        crate::tls::ALPN_ADMIN,
                        "admin-tls-cert",
                    )?
                }
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    pem::client_config(roots, identity, crate::tls::ALPN_ADMIN, "admin-tls-cert")?
                }
            };
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Request {
            authority: authority.to_string(),
            path: path.to_string(),
            url,
            tls,
        })
    }

    /// GETs the URL: whether it answered 200.
    fn check(&self) -> std::io::Result<bool> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.authority)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(3)))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        let mut head = [0u8; 12];
        match &self.tls {
            None => {
                let mut s = tcp;
                s.write_all(request.as_bytes())?;
                s.read_exact(&mut head)?;
            }
            Some(config) => {
                let name = server_name(&self.authority)?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(request.as_bytes())?;
                s.flush()?;
                s.read_exact(&mut head)?;
            }
        }
        Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    }
}

/// The admin listener's `/healthz` from `admin-listen` (a wildcard address
/// asked on loopback).
fn default_url(listen: Option<OrOff<SocketAddr>>, https: bool) -> Result<String, HealthError> {
    let mut addr = match listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9998)),
        Some(OrOff::On(a)) => a,
        Some(OrOff::Off) => {
            return Err(HealthError::Usage(
                "admin-listen is off: give the URL to check".to_string(),
            ));
        }
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if https { "https" } else { "http" };
    Ok(format!("{scheme}://{addr}/healthz"))
}

/// The host of `host:port` as a TLS server name (IPv6 without brackets).
fn server_name(authority: &str) -> std::io::Result<ServerName<'static>> {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
    })
}

/// Trusts the certificates of `admin-tls-cert`: one of them served as is
/// is the proxy itself (no name or validity check: this asks whether the
/// process answers, the expiry metric watches the certificate); any other
/// must chain to one of them and name the host, as usual (a certificate
/// renewed on disk that the proxy has not loaded yet, or the other way
/// round, with the same issuer in the file).
#[derive(Debug)]
struct ServedCertificate {
    certs: Vec<CertificateDer<'static>>,
    /// `None` when no certificate of the file is usable as a root.
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServedCertificate {
    fn new(certs: Vec<CertificateDer<'static>>) -> ServedCertificate {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(certs.iter().cloned());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .ok();
        ServedCertificate {
            certs,
            webpki,
            provider,
        }
    }
}

impl ServerCertVerifier for ServedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(w) => {
                w.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_follows_admin_listen_and_admin_tls() {
        assert_eq!(
            default_url(None, false).unwrap(),
            "http://127.0.0.1:9998/healthz"
        );
        assert_eq!(
            default_url(Some(OrOff::On("0.0.0.0:9000".parse().unwrap())), true).unwrap(),
            "https://127.0.0.1:9000/healthz"
        );
        assert_eq!(
            default_url(Some(OrOff::On("[::]:9000".parse().unwrap())), false).unwrap(),
            "http://[::1]:9000/healthz"
        );
        assert!(default_url(Some(OrOff::Off), false).is_err());
    }
}
