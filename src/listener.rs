//! Accepting connections: the loop head both proxies share.
//!
//! An accept error (EMFILE when out of descriptors, ECONNABORTED, ...) is
//! logged and followed by a short pause instead of a retry at once, so a
//! proxy out of file descriptors does not spin a core while it waits for
//! connections to close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
