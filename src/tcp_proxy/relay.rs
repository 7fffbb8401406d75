//! Moving the bytes of one JDBC connection between its two sockets.
//!
//! Each direction reads a chunk from one socket into a buffer and writes it
//! to the other. The buffer exists only while bytes are moving: when the
//! source has nothing more to read, it is given back before waiting, so an
//! idle connection (a JDBC pool holds many) costs its two sockets and no
//! buffer, as in HAProxy.
//!
//! Written by hand rather than with tokio's `copy_bidirectional`, which
//! allocates both buffers for the connection's whole life and needs a wrapper
//! around each socket to count bytes and notice activity. The readiness
//! handling (`readable`, then `try_read` until `WouldBlock`) is tokio's
//! documented way to drive its sockets directly.
//!
//! The buffer size was measured (docs/benchmarks.md, "What changed"): 32 KiB
//! is the smallest size within noise of the best on loopback; 64 KiB, the
//! old size, moved about 40% less. `splice(2)` through a pipe was measured
//! too and moved less than copying 32 KiB, so it is not used.
//!
//! Half-close is kept: when one side ends its sending (FIN), the other side's
//! writing half is shut down and the opposite direction carries on.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpStream;

/// Size of a direction's buffer while bytes are moving (see the module
/// comment for how it was chosen).
const COPY_BUFFER: usize = 32 * 1024;

/// What a connection's relay has done so far, readable while it runs (the
/// idle timeout) and after it is cancelled (the log line).
#[derive(Debug)]
pub(crate) struct Traffic {
    epoch: Instant,
    /// Milliseconds after `epoch` when a byte last moved either way.
    last_active_ms: AtomicU64,
    /// Bytes from the client to the server.
    pub(crate) up: AtomicU64,
    /// Bytes from the server to the client.
    pub(crate) down: AtomicU64,
}

impl Traffic {
    /// Counters starting now.
    pub(crate) fn new() -> Self {
        Traffic {
            epoch: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    /// The instant a byte last moved (the start if none has).
    pub(crate) fn last_active(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn record(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.last_active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays both ways until both directions have ended (each with its sender's
/// FIN) or one fails. The byte counts are in `traffic`.
pub(crate) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    traffic: &Traffic,
) -> io::Result<()> {
    tokio::try_join!(
        one_way(client, server, &traffic.up, traffic),
        one_way(server, client, &traffic.down, traffic),
    )?;
    Ok(())
}

/// One direction, until `from` ends; then `to`'s sending half is shut down
/// so its peer sees the FIN.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    traffic: &Traffic,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() == 0 {
            from.readable().await?;
            buf = Vec::with_capacity(COPY_BUFFER);
        }
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                traffic.record(counter, n);
                crate::sched::checkpoint();
                write_all(to, &buf).await?;
            }
            // Drained: give the buffer back before waiting for more.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(e),
        }
    }
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`relay`] for streams that are not bare sockets (a TLS-terminated
/// client): the same counting and half-close, through tokio's
/// `AsyncRead`/`AsyncWrite` (TLS records have to be decrypted into a
/// buffer, so the buffer lives as long as the connection here).
pub(crate) async fn relay_io<C, S>(client: C, server: S, traffic: &Traffic) -> io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (server_r, server_w) = tokio::io::split(server);
    tokio::try_join!(
        one_way_io(client_r, server_w, &traffic.up, traffic),
        one_way_io(server_r, client_w, &traffic.down, traffic),
    )?;
    Ok(())
}

async fn one_way_io<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    traffic: &Traffic,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        traffic.record(counter, n);
        crate::sched::checkpoint();
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
    // TLS: close_notify, then the socket's FIN.
    match to.shutdown().await {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}
