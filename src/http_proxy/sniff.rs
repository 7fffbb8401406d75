//! Which HTTP a new client connection speaks, told by peeking at its first
//! bytes.
//!
//! Clients speak HTTP/1.1 or h2c (HTTP/2 with prior knowledge) on the same
//! port; an h2c connection opens with a fixed 24-byte preface. hyper-util's
//! `auto` builder tells them apart by *reading* up to 24 bytes and handing
//! them back through a wrapper, so hyper's own first read starts behind
//! them and its 8 KiB read buffer grows to 16 KiB, kept for the connection's
//! life (docs/benchmarks.md, memory). Peeking (`MSG_PEEK`) leaves the bytes
//! in the socket: hyper's HTTP/1 or HTTP/2 side then reads the connection
//! from its first byte, as if it had accepted it itself.
//!
//! Written by hand because hyper-util offers only the reading sniffer; the
//! rule is the same as its `read_version`.

use std::time::Duration;

use tokio::net::TcpStream;

/// The protocol a client connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientProtocol {
    /// Anything that is not the HTTP/2 preface: hyper's HTTP/1 side decides
    /// whether it is a valid request.
    Http1,
    /// The HTTP/2 connection preface (RFC 9113 §3.4).
    H2c,
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before peeking again at a connection whose bytes so far
/// are a prefix of the HTTP/2 preface.
const PREFIX_PAUSE: Duration = Duration::from_millis(2);

/// Waits until the first bytes tell; `None` if the client closed, failed,
/// or sent too little within `timeout` (the connection is then dropped).
pub(crate) async fn client_protocol(
    stream: &TcpStream,
    timeout: Duration,
) -> Option<ClientProtocol> {
    let sniff = async {
        let mut first = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            if first[..n] != H2_PREFACE[..n] {
                return Some(ClientProtocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(ClientProtocol::H2c);
            }
            // A prefix of the preface so far. `peek` answers at once while
            // any byte waits unread, so pause before looking again; only a
            // client that stalls inside "PRI * HTTP/2.0..." comes here.
            tokio::time::sleep(PREFIX_PAUSE).await;
        }
    };
    tokio::time::timeout(timeout, sniff).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Connects, writes `pieces` with pauses between them, and sniffs the
    /// server's side of the connection.
    async fn sniff_of(pieces: &[&'static [u8]], close: bool) -> Option<ClientProtocol> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pieces = pieces.to_vec();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            for p in pieces {
                c.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if close {
                c.shutdown().await.unwrap();
            }
            // Held open until the sniff is done.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let (server, _) = listener.accept().await.unwrap();
        let got = client_protocol(&server, Duration::from_secs(1)).await;
        // The bytes are still there for hyper.
        if got.is_some() {
            let mut buf = [0u8; 4];
            assert!(server.peek(&mut buf).await.unwrap() > 0);
        }
        client.abort();
        got
    }

    #[tokio::test]
    async fn an_http1_request_is_http1() {
        assert_eq!(
            sniff_of(&[b"GET /sessions HTTP/1.1\r\n"], false).await,
            Some(ClientProtocol::Http1)
        );
        // Methods sharing the preface's first letter.
        assert_eq!(
            sniff_of(&[b"POST /sessions HTTP/1.1\r\n"], false).await,
            Some(ClientProtocol::Http1)
        );
    }

    #[tokio::test]
    async fn the_preface_is_h2c_even_in_pieces() {
        assert_eq!(
            sniff_of(&[H2_PREFACE], false).await,
            Some(ClientProtocol::H2c)
        );
        assert_eq!(
            sniff_of(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM", b"\r\n\r\n"], false).await,
            Some(ClientProtocol::H2c)
        );
        // Diverging after a shared start.
        assert_eq!(
            sniff_of(&[b"PR", b"OPFIND / HTTP/1.1\r\n"], false).await,
            Some(ClientProtocol::Http1)
        );
    }

    #[tokio::test]
    async fn silence_a_stall_or_a_close_gives_nothing() {
        assert_eq!(sniff_of(&[], false).await, None);
        assert_eq!(sniff_of(&[b"PRI * "], false).await, None);
        assert_eq!(sniff_of(&[], true).await, None);
    }
}
