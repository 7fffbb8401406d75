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
    /// The host without brackets or port: the name its certificate is
    /// checked against.
    host: Bytes,
    tls: bool,
}

impl Endpoint {
    /// The endpoint of a node's origin.
    pub fn of(origin: &Origin) -> Self {
        Endpoint {
            authority: Bytes::from(origin.authority()),
            host: Bytes::from(origin.host.clone()),
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
            .server_name(&String::from_utf8_lossy(&endpoint.host))
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

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
