//! Bounds on TLS handshakes, shared by every TLS listener of the process:
//! each handshake must end within `tls-handshake-timeout`, and at most
//! `max-tls-handshakes` run at once. A handshake is the expensive part of
//! a TLS connection (a signature, a key exchange); without a bound, a flood
//! of new connections that never finish theirs would take the CPU from the
//! established ones. The permit is taken before accepting: at the limit the
//! listeners stop accepting and new connections wait in the kernel's
//! backlog, as at `max-client-connections`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Why a handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish within `tls-handshake-timeout`.
    #[error("TLS handshake timed out (tls-handshake-timeout {0:?})")]
    TimedOut(Duration),
    /// The handshake failed: no shared protocol, a refused or missing
    /// client certificate, not TLS at all...
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The process-wide handshake limit and timeout.
#[derive(Debug)]
pub struct Handshakes {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
    /// Whether the limit's warning was logged since it was last free (one
    /// line per episode, not per connection).
    warned: AtomicBool,
}

impl Handshakes {
    /// At most `max` handshakes at once, each within `timeout`.
    pub fn new(max: usize, timeout: Duration) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max,
            timeout,
            warned: AtomicBool::new(false),
        })
    }

    /// A handshake permit, waiting while `max-tls-handshakes` run; `None`
    /// once `shutdown` is cancelled.
    pub async fn permit(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            self.warned.store(false, Ordering::Relaxed);
            return Some(p);
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = self.max,
                "max-tls-handshakes reached: accepting waits for handshakes to finish"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => None,
            p = self.permits.clone().acquire_owned() => p.ok(),
        }
    }

    /// The handshake of `io` with `acceptor`, within the timeout; the
    /// permit is given back when it ends, whichever way.
    pub async fn accept<IO>(
        &self,
        acceptor: TlsAcceptor,
        io: IO,
        permit: OwnedSemaphorePermit,
    ) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let done = tokio::time::timeout(self.timeout, acceptor.accept(io)).await;
        drop(permit);
        match done {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::TimedOut(self.timeout)),
        }
    }
}
