//! Connections to Livy: a small pool of keep-alive HTTP/1.1 connections.
//!
//! Written on hyper's connection API rather than hyper-util's legacy
//! `Client` for two reasons:
//! - retry safety: `SendRequest::try_send_request` hands back a request that
//!   never left (its pooled connection had been closed by the server), so
//!   "nothing was sent" is known exactly, not inferred from an error kind;
//! - cost: the proxy talks to one leader at a time, so a short list of idle
//!   connections is all the pool needs (the legacy client's per-request
//!   keyed checkout and lazily built connect future showed in the profile,
//!   docs/benchmarks.md).
//!
//! A connection goes back to the pool when its response body has been read
//! to the end ([`PooledBody`]); one whose response is dropped half-read is
//! closed with it.
//!
//! At most `max_connections` connections exist at once (idle or busy), like
//! HAProxy's per-server `maxconn`: a burst of clients waits for a free
//! connection instead of opening thousands against Livy's thread pool (and
//! holding their buffers in the proxy).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::UpstreamBody;

/// Why a request could not be exchanged with a Livy server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("connect to {authority} failed: {source}")]
    Connect {
        /// `host:port` of the server.
        authority: String,
        /// The socket error (or a timeout).
        source: io::Error,
    },
    /// A fresh connection failed before the request was written: nothing
    /// was sent.
    #[error("connection to {authority} failed before the request was sent: {source}")]
    NotSent {
        /// `host:port` of the server.
        authority: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The exchange failed after the request may have reached the server.
    #[error("{0}")]
    Failed(hyper::Error),
}

impl UpstreamError {
    /// True when the request certainly did not reach Livy, so any method
    /// may be retried.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::NotSent { .. }
        )
    }
}

/// An idle connection, ready for its next request.
struct Idle {
    authority: Bytes,
    sender: SendRequest<UpstreamBody>,
}

/// The pool of connections to Livy servers.
pub struct Upstream {
    idle: Mutex<Vec<Idle>>,
    /// One permit per open connection, held by its connection task.
    slots: Arc<Semaphore>,
    /// Signalled when a connection is put back idle.
    returned: Notify,
    connect_timeout: Duration,
    keepalive: Duration,
    max_idle: usize,
}

impl Upstream {
    /// A pool of at most `max_connections` connections, `max_idle` of them
    /// kept idle.
    pub fn new(
        connect_timeout: Duration,
        keepalive: Duration,
        max_idle: usize,
        max_connections: usize,
    ) -> Arc<Self> {
        Arc::new(Upstream {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            returned: Notify::new(),
            connect_timeout,
            keepalive,
            max_idle,
        })
    }

    /// Sends `req` to the server at `authority` (`host:port`) over a pooled
    /// connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Bytes,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let permit = loop {
            while let Some(mut sender) = self.checkout(authority) {
                if sender.ready().await.is_err() {
                    continue; // closed while idle
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(self.attach(authority, sender, resp)),
                    Err(mut e) => match e.take_message() {
                        // The server had closed it: the request never left.
                        Some(back) => req = back,
                        None => return Err(UpstreamError::Failed(e.into_error())),
                    },
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                break permit;
            }
            // At the limit: an idle connection to another server (an old
            // leader) gives its slot up; then whichever comes first, a
            // connection put back idle or a slot freed.
            self.evict_other(authority);
            tokio::select! {
                _ = self.returned.notified() => {}
                permit = self.slots.clone().acquire_owned() => {
                    if let Ok(permit) = permit {
                        break permit;
                    }
                }
            }
        };
        // Boxed: only a request that opens a connection needs the connect
        // and handshake states; the others' futures (kept per client
        // connection by hyper) stay smaller without them.
        Box::pin(self.open_and_send(authority, permit, req)).await
    }

    /// Opens a new connection (taking `permit` for its life) and sends `req`
    /// as its first request.
    async fn open_and_send(
        self: &Arc<Self>,
        authority: &Bytes,
        permit: OwnedSemaphorePermit,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let name = String::from_utf8_lossy(authority).into_owned();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*name)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(UpstreamError::Connect {
                        authority: name,
                        source,
                    });
                }
                Err(_) => {
                    return Err(UpstreamError::Connect {
                        authority: name,
                        source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                    });
                }
            };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(self.keepalive));
        // One write(2) per request rather than writev(2), as on the client
        // side (docs/benchmarks.md).
        let (mut sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::NotSent {
                authority: name.clone(),
                source,
            })?;
        tokio::spawn(async move {
            let _slot = permit; // freed when the connection ends
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Livy connection ended with an error");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.attach(authority, sender, resp)),
            Err(mut e) => {
                let sent = e.take_message().is_none();
                let source = e.into_error();
                Err(if sent {
                    UpstreamError::Failed(source)
                } else {
                    UpstreamError::NotSent {
                        authority: name,
                        source,
                    }
                })
            }
        }
    }

    /// The most recently used idle connection to `authority`, dropping any
    /// found closed on the way.
    fn checkout(&self, authority: &Bytes) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(pos) = idle.iter().rposition(|i| i.authority == *authority) {
            let found = idle.swap_remove(pos);
            if !found.sender.is_closed() {
                return Some(found.sender);
            }
        }
        None
    }

    fn checkin(&self, authority: Bytes, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle { authority, sender });
        drop(idle);
        self.returned.notify_one();
    }

    /// Closes one idle connection to a server other than `authority`.
    fn evict_other(&self, authority: &Bytes) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = idle.iter().position(|i| i.authority != *authority) {
            idle.remove(pos);
        }
    }

    fn attach(
        self: &Arc<Self>,
        authority: &Bytes,
        sender: SendRequest<UpstreamBody>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        let done = resp.body().is_end_stream();
        let slot = if done {
            self.checkin(authority.clone(), sender);
            None
        } else {
            Some((self.clone(), authority.clone(), sender))
        };
        resp.map(|inner| PooledBody { inner, slot })
    }
}

/// A Livy response body that returns its connection to the pool once read
/// to the end.
pub struct PooledBody {
    inner: Incoming,
    slot: Option<(Arc<Upstream>, Bytes, SendRequest<UpstreamBody>)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        let finished = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if finished && let Some((pool, authority, sender)) = this.slot.take() {
            pool.checkin(authority, sender);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
