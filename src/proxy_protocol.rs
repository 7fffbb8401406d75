//! PROXY protocol (v1 text and v2 binary, HAProxy's `proxy-protocol.txt`)
//! on both listeners: the client's own address when the proxy stands behind
//! a TCP load balancer (HAProxy `send-proxy-v2`, an AWS NLB with proxy
//! protocol v2) that would otherwise hide it.
//!
//! A header is believed only from the networks in `proxy-protocol-from`:
//! anyone else could write one and pass for any address. Per accepted
//! connection, [`ProxyProtocol::resolve_peer`] decides, before the HTTP
//! sniff or the JDBC upstream connect:
//! - `proxy-protocol-from` empty (the default): nothing is looked at, the
//!   socket's peer is the peer, as without this module;
//! - a trusted source with a header: the header is read, exactly its bytes
//!   and none after it (the JDBC stream and the HTTP request start intact
//!   behind it), and its source address becomes the peer (access log,
//!   `X-Forwarded-For`); `LOCAL` (v2) and `UNKNOWN` (v1), which balancers
//!   send on their own health checks, keep the socket's peer;
//! - a trusted source without a header: accepted, the socket's peer is the
//!   peer. HAProxy's `accept-proxy` refuses such a connection; rpxy accepts
//!   both. Accepting is safe (no address is believed that was not sent by a
//!   trusted host, and a trusted host that connects directly is itself the
//!   client) and keeps working what would otherwise break: HAProxy's health
//!   checks carry no header unless `check-send-proxy` is set, and operators
//!   and monitoring inside the trusted network reach the proxy directly.
//!   What it costs: a balancer that should send a header but does not goes
//!   unnoticed (its own address is logged as the client's); the debug log
//!   says "no PROXY header" for each such connection.
//! - a source outside the networks that sends a header: refused (closed and
//!   logged), so a misconfigured or malicious client is seen, and no header
//!   reaches Livy's Thrift server or hyper as data.
//!
//! From a trusted source the first bytes must tell within
//! `proxy-protocol-timeout` (default 5 s) whether a header comes, and the
//! whole header must arrive in that time; otherwise the connection is closed.
//! An untrusted source that says nothing within that time is let through
//! (hyper's `client-header-timeout` or the JDBC relay takes over): only a
//! header it sends at once is looked for.
//!
//! Framing (where a header ends, how long it may be) is the pure function
//! [`frame`], tested on its own; what the header says is read with the `ppp`
//! crate from exactly the header's bytes. The reader peeks (`MSG_PEEK`)
//! until [`frame`] decides, then reads exactly the header's length, so the
//! bytes after it stay in the socket for hyper or the relay.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;

/// The v1 header's first bytes: "PROXY" and one space.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header is at most 107 bytes, CRLF included (the specification's
/// worst case, `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// The v2 header's fixed part: signature, version and command, family and
/// transport, and the length of what follows.
const V2_FIXED_LEN: usize = 16;

/// The longest v2 header accepted, fixed part, addresses and TLVs together.
/// The length field allows 64 KiB; balancers send far less (addresses are
/// at most 216 bytes, AWS's VPC endpoint TLV and HAProxy's SSL TLVs some
/// hundred), and a connection holds no more than this before it is trusted
/// with anything.
pub const V2_MAX_LEN: usize = 4096;

/// Bytes peeked at once: every v1 header, and every v2 header with IPv4 or
/// IPv6 addresses and up to 204 bytes of TLVs, are decided from one peek.
/// A longer v2 header is read by its length field instead.
const PEEK_LEN: usize = 256;

/// The first pause before peeking again at a connection whose bytes so far
/// do not decide; `peek` answers at once while any byte waits unread, so it
/// is polled, the pause doubling up to [`MAX_PAUSE`]. Only a source that
/// stalls inside a header (or inside a signature) comes here.
const FIRST_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause between two peeks of an undecided connection.
const MAX_PAUSE: Duration = Duration::from_millis(32);

/// The networks PROXY protocol headers are believed from
/// (`proxy-protocol-from`): `10.0.0.0/8`, `fd00::/8`, or bare addresses
/// (`10.1.2.3`, `::1`), IPv4 and IPv6.
///
/// Prefixes are parsed by the `ipnet` crate (already in the dependency tree,
/// widely used, kept up to date) rather than by hand. An IPv4 peer seen
/// through an IPv6 socket (`::ffff:10.1.2.3`, a listener on `[::]`) matches
/// the IPv4 networks, as an operator writing `10.0.0.0/8` means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedNetworks(Vec<IpNet>);

/// A `proxy-protocol-from` entry that is neither a network nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network like 10.0.0.0/8 or fd00::/8, nor an IP address")]
pub struct BadNetwork(pub String);

impl TrustedNetworks {
    /// Parses every entry (each may itself be a comma-separated list, as an
    /// environment variable gives it); the first bad one is the error.
    pub fn parse<I, S>(entries: I) -> Result<TrustedNetworks, BadNetwork>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for entry in entries {
            for item in entry.as_ref().split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let net = match IpNet::from_str(item) {
                    Ok(n) => n.trunc(),
                    Err(_) => item
                        .parse::<IpAddr>()
                        .map(IpNet::from)
                        .map_err(|_| BadNetwork(item.to_string()))?,
                };
                nets.push(net);
            }
        }
        Ok(TrustedNetworks(nets))
    }

    /// Whether the list is empty: PROXY protocol is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks (IPv4-mapped IPv6 addresses
    /// are compared as the IPv4 address they carry).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The networks, as parsed (host bits cleared).
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

impl FromStr for TrustedNetworks {
    type Err = BadNetwork;

    /// A comma-separated list, as one environment variable or flag value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustedNetworks::parse([s])
    }
}

/// What a listener needs to take PROXY protocol headers: whom to believe,
/// and how long to wait for a header. Read per accepted connection, so a
/// configuration reload could change it for new connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// `proxy-protocol-from`: empty means PROXY protocol is off.
    pub from: TrustedNetworks,
    /// `proxy-protocol-timeout`: how long a trusted source has to send its
    /// header (or a first byte that is not one).
    pub timeout: Duration,
}

/// `proxy-protocol-timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ProxyProtocol {
    /// Off: no network trusted, the default timeout.
    fn default() -> Self {
        ProxyProtocol {
            from: TrustedNetworks::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl ProxyProtocol {
    /// The client's address for a connection accepted from `peer`: the
    /// source a trusted PROXY header names, else `peer`. Consumes exactly
    /// the header's bytes from `stream`. An error means the connection must
    /// be closed (see [`ProxyProtocolError::log`]).
    pub async fn resolve_peer(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyProtocolError> {
        resolve_peer(stream, peer, &self.from, self.timeout).await
    }
}

/// Why a connection was refused while its PROXY header was looked for.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// A header from a source outside `proxy-protocol-from`.
    #[error("a PROXY protocol header from a source outside proxy-protocol-from")]
    Untrusted,
    /// A trusted source did not send a complete header (or a first byte
    /// that is not one) in time.
    #[error("no complete PROXY protocol header within {0:?} (proxy-protocol-timeout)")]
    Timeout(Duration),
    /// A trusted source sent a header that is not valid.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(#[from] HeaderError),
    /// The connection closed before the first bytes told.
    #[error("the connection closed before a PROXY protocol header or data")]
    Closed,
    /// Reading from the socket failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyProtocolError {
    /// Logs the refusal of the connection from `peer` on listener `what`
    /// ("HTTP", "JDBC"): a warning, except for a client that merely closed.
    /// Returns `()` so a caller can `return e.log(..)`.
    pub fn log(&self, what: &str, peer: SocketAddr) {
        match self {
            ProxyProtocolError::Closed | ProxyProtocolError::Io(_) => {
                tracing::debug!(listener = what, %peer, error = %self, "connection closed before it said anything");
            }
            _ => {
                tracing::warn!(listener = what, %peer, error = %self, "connection refused (PROXY protocol)");
            }
        }
    }
}

/// What is wrong with a header from a trusted source.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// A v1 header without its CRLF within 107 bytes.
    #[error("a v1 header longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 header with a byte that is not printable ASCII.
    #[error("a v1 header with the byte {0:#04x}, which is not printable ASCII")]
    V1Byte(u8),
    /// A v1 header with a CR that is not followed by LF.
    #[error("a v1 header with a CR not followed by LF")]
    V1BareCr,
    /// A v1 header `ppp` does not accept.
    #[error("v1: {0}")]
    V1(#[from] ppp::v1::BinaryParseError),
    /// A v2 header whose length field says more than [`V2_MAX_LEN`].
    #[error("a v2 header of {0} bytes, more than the {V2_MAX_LEN} accepted")]
    V2TooLong(usize),
    /// A v2 header of another version than 2 (the signature's 13th byte).
    #[error("a v2 signature with version {0} instead of 2")]
    V2Version(u8),
    /// A v2 header `ppp` does not accept.
    #[error("v2: {0}")]
    V2(#[from] ppp::v2::ParseError),
}

/// How a connection's first bytes begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Not a PROXY header: the connection's own data starts at byte 0.
    None,
    /// A prefix of a signature so far: more bytes are needed to tell.
    Undecided,
    /// "PROXY ": a v1 header.
    V1,
    /// The 12-byte v2 signature.
    V2,
}

/// Which signature `bytes` (a connection's first bytes) start with.
pub fn signature(bytes: &[u8]) -> Signature {
    let starts = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    if bytes.starts_with(V1_SIGNATURE) {
        Signature::V1
    } else if bytes.starts_with(V2_SIGNATURE) {
        Signature::V2
    } else if starts(V1_SIGNATURE) || starts(V2_SIGNATURE) {
        Signature::Undecided // no bytes at all, too
    } else {
        Signature::None
    }
}

/// Where a connection's header ends, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No header: the connection's data starts at byte 0.
    None,
    /// More bytes are needed; `total` is the header's full length once it
    /// is known (a v2 header's fixed part has been seen).
    Incomplete {
        /// The header's length, fixed part included, if known yet.
        total: Option<usize>,
    },
    /// A header of `len` bytes: the connection's data starts at byte `len`.
    Header {
        /// The header's length in bytes.
        len: usize,
    },
}

/// Frames the first bytes of a connection from a trusted source: whether
/// they begin with a PROXY header and where it ends. Pure (no I/O), so it
/// is tested on its own; what a complete header says is [`parse_header`].
///
/// v1 ends at the first CRLF, within [`V1_MAX_LEN`] bytes, all printable
/// ASCII; v2 is its 16-byte fixed part plus the big-endian length in its
/// bytes 15 and 16, at most [`V2_MAX_LEN`] in all.
pub fn frame(bytes: &[u8]) -> Result<Framing, HeaderError> {
    match signature(bytes) {
        Signature::None => Ok(Framing::None),
        Signature::Undecided => Ok(Framing::Incomplete { total: None }),
        Signature::V1 => {
            let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
            for (i, &b) in window.iter().enumerate() {
                match b {
                    b'\r' => match window.get(i + 1) {
                        Some(b'\n') => return Ok(Framing::Header { len: i + 2 }),
                        Some(_) => return Err(HeaderError::V1BareCr),
                        None if i + 1 < V1_MAX_LEN => {
                            return Ok(Framing::Incomplete { total: None });
                        }
                        None => return Err(HeaderError::V1TooLong),
                    },
                    0x20..=0x7e => {}
                    other => return Err(HeaderError::V1Byte(other)),
                }
            }
            if window.len() >= V1_MAX_LEN {
                Err(HeaderError::V1TooLong)
            } else {
                Ok(Framing::Incomplete { total: None })
            }
        }
        Signature::V2 => {
            if let Some(&vc) = bytes.get(V2_SIGNATURE.len())
                && vc >> 4 != 2
            {
                return Err(HeaderError::V2Version(vc >> 4));
            }
            if bytes.len() < V2_FIXED_LEN {
                return Ok(Framing::Incomplete { total: None });
            }
            let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
            if total > V2_MAX_LEN {
                return Err(HeaderError::V2TooLong(total));
            }
            if bytes.len() < total {
                Ok(Framing::Incomplete { total: Some(total) })
            } else {
                Ok(Framing::Header { len: total })
            }
        }
    }
}

/// What a complete header says about the client: its address, or `None`
/// when the header names none (v2 `LOCAL`, a balancer's own health check;
/// v1 `UNKNOWN`; v2 `UNSPEC` or UNIX addresses), and the socket's peer is
/// then the client, as the specification asks.
///
/// `header` must be exactly one header, as [`frame`] delimits it.
pub fn parse_header(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    match signature(header) {
        Signature::V1 => {
            let h = ppp::v1::Header::try_from(header)?;
            if h.header.len() != header.len() {
                return Err(
                    ppp::v1::BinaryParseError::Parse(ppp::v1::ParseError::InvalidSuffix).into(),
                );
            }
            Ok(match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            })
        }
        _ => {
            let h = ppp::v2::Header::try_from(header)?;
            if h.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            })
        }
    }
}

/// The client's address for a connection accepted from `peer` on `stream`:
/// see the module's documentation for the rules. With `trusted` empty it
/// returns `peer` at once, without touching the socket.
///
/// Peeks until the first bytes decide and then reads exactly the header's
/// bytes: whatever follows is left in the socket, unread.
pub async fn resolve_peer(
    stream: &TcpStream,
    peer: SocketAddr,
    trusted: &TrustedNetworks,
    timeout: Duration,
) -> Result<SocketAddr, ProxyProtocolError> {
    if trusted.is_empty() {
        return Ok(peer);
    }
    if !trusted.contains(peer.ip()) {
        return match tokio::time::timeout(timeout, untrusted_signature(stream)).await {
            Ok(Ok(Signature::V1 | Signature::V2)) => Err(ProxyProtocolError::Untrusted),
            Ok(Ok(_)) | Err(_) => Ok(peer),
            Ok(Err(e)) => Err(e),
        };
    }
    let source = tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| ProxyProtocolError::Timeout(timeout))??;
    match source {
        Header::Absent => {
            tracing::debug!(%peer, "no PROXY header from a trusted source: its own address is the client's");
            Ok(peer)
        }
        Header::Local => {
            tracing::debug!(%peer, "PROXY header without a client address (LOCAL or UNKNOWN): the balancer's own connection");
            Ok(peer)
        }
        Header::Client(client) => {
            tracing::debug!(%peer, %client, "PROXY header: the client's address");
            Ok(client)
        }
    }
}

/// What a trusted source's first bytes said.
enum Header {
    /// No header.
    Absent,
    /// A header without a client address.
    Local,
    /// A header naming the client.
    Client(SocketAddr),
}

/// Peeks until the first bytes tell whether a signature begins there.
async fn untrusted_signature(stream: &TcpStream) -> Result<Signature, ProxyProtocolError> {
    let mut buf = [0u8; V2_SIGNATURE.len()];
    let mut pause = FIRST_PAUSE;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        match signature(&buf[..n]) {
            Signature::Undecided => {}
            decided => return Ok(decided),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Peeks until [`frame`] decides, then consumes exactly the header.
async fn read_header(stream: &TcpStream) -> Result<Header, ProxyProtocolError> {
    let mut buf = [0u8; PEEK_LEN];
    let mut pause = FIRST_PAUSE;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        match frame(&buf[..n])? {
            Framing::None => return Ok(Header::Absent),
            Framing::Header { len } => {
                let source = parse_header(&buf[..len])?;
                read_exact(stream, &mut buf[..len]).await?;
                return Ok(source.map_or(Header::Local, Header::Client));
            }
            Framing::Incomplete { total: Some(total) } if total > PEEK_LEN => {
                // A v2 header longer than one peek: its length is known
                // and bounded, so it is read, exactly, and parsed whole.
                let mut header = vec![0u8; total];
                read_exact(stream, &mut header).await?;
                let source = parse_header(&header)?;
                return Ok(source.map_or(Header::Local, Header::Client));
            }
            Framing::Incomplete { .. } => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Reads exactly `buf.len()` bytes, never more (the stream is shared with
/// what reads it next, so no read may go past the header).
async fn read_exact(stream: &TcpStream, buf: &mut [u8]) -> Result<(), ProxyProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(ProxyProtocolError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend_from_slice(&[10, 0, 0, 5]);
        a.extend_from_slice(&sport.to_be_bytes());
        a.extend_from_slice(&8998u16.to_be_bytes());
        v2(0x1, 0x11, &a, &[])
    }

    fn v2_tcp6(src: std::net::Ipv6Addr, sport: u16) -> Vec<u8> {
        let mut a = src.octets().to_vec();
        a.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        a.extend_from_slice(&sport.to_be_bytes());
        a.extend_from_slice(&8998u16.to_be_bytes());
        v2(0x1, 0x21, &a, &[])
    }

    /// Frames and parses `bytes` as a whole, as the reader does.
    fn read(bytes: &[u8]) -> Result<(usize, Option<SocketAddr>), String> {
        match frame(bytes).map_err(|e| e.to_string())? {
            Framing::Header { len } => {
                Ok((len, parse_header(&bytes[..len]).map_err(|e| e.to_string())?))
            }
            other => Err(format!("{other:?}")),
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn trusted_networks_parse_cidrs_bare_addresses_and_lists() {
        let t = TrustedNetworks::parse(["10.0.0.0/8, ::1/128", "192.168.1.7", "fd00::/8"]).unwrap();
        assert_eq!(t.networks().len(), 4);
        for yes in [
            "10.1.2.3",
            "::1",
            "192.168.1.7",
            "fd12::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(t.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "::2", "192.168.1.8", "127.0.0.1"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
        // Host bits are cleared, not refused.
        let t: TrustedNetworks = "10.1.2.3/8".parse().unwrap();
        assert_eq!(t.networks()[0].to_string(), "10.0.0.0/8");
        assert!(TrustedNetworks::parse(["", " , "]).unwrap().is_empty());
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/8/8", "::1/129", "10.0.0"] {
            assert_eq!(
                TrustedNetworks::parse([bad]),
                Err(BadNetwork(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8998\r\n";
        assert_eq!(read(h), Ok((h.len(), addr("203.0.113.7:51234"))));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::5 51234 8998\r\n";
        assert_eq!(read(h), Ok((h.len(), addr("[2001:db8::7]:51234"))));
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(h), Ok((h.len(), None)));
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), V1_MAX_LEN, "the specification's worst case");
        assert_eq!(read(h), Ok((h.len(), None)));
    }

    #[test]
    fn v2_proxy_local_unspec_and_tlvs() {
        let h = v2_tcp4([203, 0, 113, 7], 51234);
        assert_eq!(read(&h), Ok((28, addr("203.0.113.7:51234"))));
        let h = v2_tcp6("2001:db8::7".parse().unwrap(), 443);
        assert_eq!(read(&h), Ok((52, addr("[2001:db8::7]:443"))));
        // LOCAL, as a balancer's health check sends it, with or without
        // addresses: the socket's peer is the client.
        assert_eq!(read(&v2(0x0, 0x00, &[], &[])), Ok((16, None)));
        let mut local = v2_tcp4([1, 2, 3, 4], 1);
        local[12] = 0x20;
        assert_eq!(read(&local), Ok((28, None)));
        // PROXY with UNSPEC: no address either.
        assert_eq!(read(&v2(0x1, 0x00, &[], &[])), Ok((16, None)));
        // TLVs (here AWS's 0xEA with a VPC endpoint id) are skipped over.
        let a = [198, 51, 100, 9, 10, 0, 0, 5, 0, 80, 0, 81];
        let tlv = [0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e'];
        let h = v2(0x1, 0x11, &a, &tlv);
        assert_eq!(read(&h), Ok((16 + 12 + 8, addr("198.51.100.9:80"))));
        // The header's length decides, not the bytes after it.
        let mut h = v2(0x1, 0x11, &a, &[]);
        h.extend_from_slice(b"\x01\x00\x00\x00\x05PLAIN");
        assert_eq!(frame(&h).unwrap(), Framing::Header { len: 28 });
    }

    #[test]
    fn no_header_is_none_at_once_and_prefixes_wait() {
        for data in [
            &b"GET /sessions HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x01\x00\x00\x00\x05PLAIN", // Thrift SASL START
            b"\x80\x01\x00\x01",          // Thrift binary
            b"PROXX",
            b"PROXYTCP4",
            b"\r\n\r\nGET",
            b"\r\n\r\n\0\r\nQUIT!",
        ] {
            assert_eq!(frame(data).unwrap(), Framing::None, "{data:?}");
            assert_eq!(signature(data), Signature::None, "{data:?}");
        }
        for prefix in [&b""[..], b"P", b"PROXY", b"\r", b"\r\n\r\n\0\r\nQUI"] {
            assert_eq!(signature(prefix), Signature::Undecided, "{prefix:?}");
            assert_eq!(frame(prefix).unwrap(), Framing::Incomplete { total: None });
        }
    }

    #[test]
    fn truncated_headers_are_incomplete_at_every_length() {
        let headers = [
            b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8998\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::5 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_tcp4([1, 2, 3, 4], 5),
            v2_tcp6("::1".parse().unwrap(), 5),
            v2(0x0, 0x00, &[], &[]),
        ];
        for h in &headers {
            for cut in 0..h.len() {
                assert!(
                    matches!(frame(&h[..cut]), Ok(Framing::Incomplete { .. })),
                    "{:?} cut at {cut}: {:?}",
                    String::from_utf8_lossy(h),
                    frame(&h[..cut])
                );
            }
            // Complete, and with anything after it: always exactly its own length.
            for tail in [&b""[..], b"\r\n", b"PROXY UNKNOWN\r\n", b"\x00\xff"] {
                let mut with = h.clone();
                with.extend_from_slice(tail);
                assert_eq!(frame(&with).unwrap(), Framing::Header { len: h.len() });
            }
        }
        // v2 knows its total once the fixed part is there.
        let h = v2_tcp4([1, 2, 3, 4], 5);
        assert_eq!(
            frame(&h[..16]).unwrap(),
            Framing::Incomplete { total: Some(28) }
        );
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        // v1: not the grammar, a bad byte, no CRLF within 107 bytes.
        for bad in [
            &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        ] {
            assert!(read(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            frame(b"PROXY TCP4 \x00"),
            Err(HeaderError::V1Byte(0))
        ));
        assert!(matches!(
            frame(b"PROXY TCP4 1\n"),
            Err(HeaderError::V1Byte(b'\n'))
        ));
        let long = [&b"PROXY "[..], &[b'1'; 101][..]].concat();
        assert_eq!(long.len(), V1_MAX_LEN);
        assert!(matches!(frame(&long), Err(HeaderError::V1TooLong)));
        assert!(matches!(
            frame(&long[..106]),
            Ok(Framing::Incomplete { .. })
        ));
        // v2: version 1 or 3, command 2, family 4, too short for its family.
        let mut h = v2_tcp4([1, 2, 3, 4], 5);
        h[12] = 0x11;
        assert!(matches!(frame(&h[..13]), Err(HeaderError::V2Version(1))));
        h[12] = 0x22;
        assert!(read(&h).is_err());
        h[12] = 0x21;
        h[13] = 0x41;
        assert!(read(&h).is_err());
        assert!(
            read(&v2(0x1, 0x11, &[1, 2, 3, 4], &[])).is_err(),
            "4 bytes for TCP4's 12"
        );
        // Oversize: the length field is checked before waiting for the bytes.
        let mut h = v2(0x1, 0x11, &[0; 12], &[]);
        h[14..16].copy_from_slice(&((V2_MAX_LEN - 16 + 1) as u16).to_be_bytes());
        assert!(matches!(frame(&h[..16]), Err(HeaderError::V2TooLong(n)) if n == V2_MAX_LEN + 1));
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(frame(&h[..16]), Err(HeaderError::V2TooLong(_))));
        // At the limit: waits for the bytes.
        h[14..16].copy_from_slice(&((V2_MAX_LEN - 16) as u16).to_be_bytes());
        assert_eq!(
            frame(&h[..16]).unwrap(),
            Framing::Incomplete {
                total: Some(V2_MAX_LEN)
            }
        );
    }

    /// A small xorshift: random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// A fuzz loop: random bytes, half of them behind a real signature (and
    /// a v2 fixed part with a random length), never panic, and whatever
    /// [`frame`] calls a header is within the input and the limits, and
    /// frames the same with more bytes after it.
    #[test]
    fn random_bytes_never_panic_and_frame_consistently() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut headers, mut waiting) = (0, 0);
        for round in 0..200_000u32 {
            let len = (rng.next() % 340) as usize;
            let mut bytes: Vec<u8> = match round % 4 {
                0 => V1_SIGNATURE.to_vec(),
                1 => {
                    let mut b = V2_SIGNATURE.to_vec();
                    b.push(0x20 | (rng.byte() & 0x03));
                    b.push([0x00, 0x11, 0x21, 0x31, 0x12][(rng.next() % 5) as usize]);
                    b.extend_from_slice(&((rng.next() % 300) as u16).to_be_bytes());
                    b
                }
                _ => Vec::new(),
            };
            for _ in 0..len {
                // Printable bytes more often, so v1 goes past its first byte.
                let b = rng.byte();
                bytes.push(if round % 4 == 0 && b < 200 {
                    b' ' + b % 95
                } else {
                    b
                });
            }
            if round % 8 == 0 {
                bytes.extend_from_slice(b"\r\n");
            }
            let _ = signature(&bytes);
            match frame(&bytes) {
                Ok(Framing::Header { len }) => {
                    assert!(len <= bytes.len() && len <= V2_MAX_LEN);
                    headers += 1;
                    let _ = parse_header(&bytes[..len]);
                    let mut more = bytes.clone();
                    more.extend_from_slice(b"PROXY \r\n\r\n");
                    assert_eq!(frame(&more).unwrap(), Framing::Header { len });
                }
                Ok(Framing::Incomplete { total }) => {
                    assert!(total.is_none_or(|t| t > bytes.len() && t <= V2_MAX_LEN));
                    waiting += 1;
                }
                Ok(Framing::None) | Err(_) => {}
            }
            // ppp on any slice at all: never a panic.
            let _ = parse_header(&bytes);
        }
        // The loop reached past the signatures, both ways.
        assert!(headers > 10_000 && waiting > 10_000, "{headers} {waiting}");
    }
}
