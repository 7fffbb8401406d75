//! Listening and accepting: the socket every listener binds, and the
//! accept loop head both proxies share.
//!
//! An accept error (EMFILE when out of descriptors, ECONNABORTED, ...) is
//! logged and followed by a short pause instead of a retry at once, so a
//! proxy out of file descriptors does not spin a core while it waits for
//! connections to close.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Room in the kernel for connections not accepted yet. It is the waiting
/// room while accepting pauses at `max-client-connections` or
/// `max-tls-handshakes`, and it takes the burst of every client
/// reconnecting at once after a failover. std's listener asks for 128,
/// which one such burst fills, after which the kernel drops handshakes and
/// clients wait for their SYN retransmits (1 s, then 3 s). 4096 is Linux's
/// default `net.core.somaxconn`, which caps it: raise that sysctl to go
/// higher. HAProxy's default is its `maxconn`, nginx's 511.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and
/// `SO_REUSEADDR`, as std sets it, so a restart can bind again while the
/// old process's connections are in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The next connection on `listener`, or `None` once `shutdown` is
/// cancelled. `what` names the listener in the log ("HTTP", "JDBC").
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_and_accepts_on_v4_and_v6_loopback() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let listener = match bind(addr) {
                Ok(l) => l,
                // A machine without IPv6 on loopback.
                Err(_) if addr.is_ipv6() => continue,
                Err(e) => panic!("bind {addr}: {e}"),
            };
            let local = listener.local_addr().unwrap();
            let client = tokio::spawn(async move { TcpStream::connect(local).await });
            let shutdown = CancellationToken::new();
            let (_, peer) = accept(&listener, &shutdown, "test").await.unwrap();
            assert_eq!(peer.ip(), local.ip());
            client.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_second_bind_to_a_port_in_use_fails() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
