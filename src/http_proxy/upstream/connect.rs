//! Opening a connection to a Livy server: TCP, then TLS for an `https://`
//! node. The one place both the proxy's pool and the probes connect from,
//! so TLS to Livy is written once.
//!
//! A connection is a [`Stream`]: an enum of the plain socket and the TLS
//! stream, not a boxed trait object, so a read or write on plain TCP costs
//! one branch and no dynamic call. The TLS variant is boxed because the
//! rustls state is large and most connections are plain.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::node::Origin;
use crate::tls::client::{UpstreamTls, tls_reason};

/// Where a request goes: the Livy server's `host:port` (also its `Host`
/// header) and whether it speaks TLS; the pool key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    authority: Bytes,
    tls: bool,
}

impl Endpoint {
    /// The endpoint of a node's origin.
    pub fn of(origin: &Origin) -> Self {
        Endpoint {
            authority: Bytes::from(origin.authority()),
            tls: origin.scheme == crate::node::Scheme::Https,
        }
    }

    /// `host:port`, as the `Host` header and a TCP connect want it.
    pub fn authority(&self) -> &Bytes {
        &self.authority
    }

    /// `https://` or not.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn authority_str(&self) -> String {
        String::from_utf8_lossy(&self.authority).into_owned()
    }

    /// The host without port or IPv6 brackets: the name its certificate
    /// is checked against. Derived when a TLS connection opens rather than
    /// kept, so that the pool's key stays one shared buffer to clone and
    /// compare per request.
    fn host(&self) -> String {
        let authority = self.authority_str();
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(host, _)| host);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }
}

/// Why no connection could be made. Nothing was sent in either case.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// TCP failed, timed out, or the TLS handshake failed on the network
    /// (reset, timeout): worth trying again.
    Network(io::Error),
    /// TLS refused the server (certificate, name, protocol) or the server
    /// refused us: trying again will not help.
    Tls(io::Error),
}

/// Opens connections to Livy servers.
#[derive(Clone, Debug)]
pub struct Connector {
    timeout: Duration,
    keepalive: Duration,
    tls: Option<Arc<UpstreamTls>>,
}

impl Connector {
    /// Connections within `timeout` (TCP and TLS handshake together), TCP
    /// keep-alive probes after `keepalive` idle; `tls` for `https://`
    /// nodes (without it they are refused).
    pub fn new(timeout: Duration, keepalive: Duration, tls: Option<Arc<UpstreamTls>>) -> Self {
        Connector {
            timeout,
            keepalive,
            tls,
        }
    }

    /// A new connection to `endpoint`.
    pub(super) async fn connect(&self, endpoint: &Endpoint) -> Result<Stream, ConnectError> {
        match tokio::time::timeout(self.timeout, self.open(endpoint)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Network(io::Error::new(
                io::ErrorKind::TimedOut,
                if endpoint.tls {
                    "connect and TLS handshake timed out"
                } else {
                    "connect timed out"
                },
            ))),
        }
    }

    async fn open(&self, endpoint: &Endpoint) -> Result<Stream, ConnectError> {
        let tcp = TcpStream::connect(&*endpoint.authority_str())
            .await
            .map_err(ConnectError::Network)?;
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(self.keepalive));
        if !endpoint.tls {
            return Ok(Stream::Plain(tcp));
        }
        let Some(tls) = &self.tls else {
            return Err(ConnectError::Tls(io::Error::other(
                "an https:// node, but no TLS client is configured",
            )));
        };
        let name = tls
            .server_name(&endpoint.host())
            .map_err(|e| ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        match tls.connector().connect(name, tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) if tls_reason(&e).is_some() => Err(ConnectError::Tls(e)),
            Err(e) => Err(ConnectError::Network(e)),
        }
    }
}

/// An open connection to Livy, plain or TLS.
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http_proxy::upstream::conn::Conn;
    use crate::node::{AddressDefaults, Origin};
    use crate::tls::client::{UpstreamTlsSpec, upstream_tls};

    /// A TLS server on loopback whose certificate (for `names`) a private
    /// CA signed; the CA's PEM file, and the server's accepted streams.
    async fn tls_server(
        names: &[&str],
    ) -> (
        tempfile::TempDir,
        Origin,
        tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    ) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin::parse(
            &format!("https://{}", listener.local_addr().unwrap()),
            AddressDefaults::default(),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if let Ok(s) = acceptor.accept(s).await {
                    let _ = tx.send(s).await;
                }
            }
        });
        (dir, origin, rx)
    }

    fn connector(dir: &tempfile::TempDir, server_name: Option<&str>) -> Connector {
        let ca = dir.path().join("ca.pem");
        let tls = upstream_tls(&UpstreamTlsSpec {
            ca: Some(ca),
            server_name: server_name.map(str::to_string),
            ..Default::default()
        })
        .unwrap();
        Connector::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            Some(Arc::new(tls)),
        )
    }

    #[test]
    fn the_host_of_an_endpoint_is_its_authority_without_port_or_brackets() {
        let host = |url: &str| {
            Endpoint::of(&Origin::parse(url, AddressDefaults::default()).unwrap()).host()
        };
        assert_eq!(host("https://Livy1.example:8998"), "livy1.example");
        assert_eq!(host("https://livy1.example"), "livy1.example");
        assert_eq!(host("https://127.0.0.11:1"), "127.0.0.11");
        assert_eq!(host("https://[::1]:8998"), "::1");
    }

    #[tokio::test]
    async fn an_idle_tls_connection_is_open_despite_session_tickets_and_closed_after_close_notify()
    {
        let (dir, origin, mut accepted) = tls_server(&["127.0.0.1"]).await;
        let stream = connector(&dir, None)
            .connect(&Endpoint::of(&origin))
            .await
            .unwrap();
        assert!(matches!(stream, Stream::Tls(_)));
        let mut server = accepted.recv().await.unwrap();
        // TLS 1.3 session tickets follow the handshake as bytes on the
        // socket: let them arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut conn = Conn::new(stream, None);
        assert!(conn.still_open(), "tickets are not data: still open");
        server.shutdown().await.unwrap(); // close_notify
        drop(server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!conn.still_open(), "closed by the server");
    }

    #[tokio::test]
    async fn a_wrong_name_or_an_unknown_ca_is_a_tls_error() {
        let (dir, origin, _accepted) = tls_server(&["livy.test"]).await;
        let endpoint = Endpoint::of(&origin);
        match connector(&dir, None).connect(&endpoint).await {
            Err(ConnectError::Tls(e)) => {
                assert!(e.to_string().contains("not valid for name"), "{e}")
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a certificate for livy.test accepted for 127.0.0.1"),
        }
        assert!(
            connector(&dir, Some("livy.test"))
                .connect(&endpoint)
                .await
                .is_ok(),
            "the override names the certificate's name"
        );
        let (other, _, _) = tls_server(&["127.0.0.1"]).await;
        match connector(&other, Some("livy.test"))
            .connect(&endpoint)
            .await
        {
            // Signed by another CA (rcgen's CAs share an empty name here,
            // so rustls finds the issuer and the signature fails).
            Err(ConnectError::Tls(e)) => {
                assert!(e.to_string().contains("invalid peer certificate"), "{e}")
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a certificate of another CA accepted"),
        }
    }
}
