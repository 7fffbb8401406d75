//! Connections to Livy: a small pool of keep-alive HTTP/1.1 connections.
//!
//! The pool is a short list of idle connections: the proxy talks to one
//! leader at a time, so it needs no per-host keyed checkout (hyper-util's
//! legacy client's showed in the profile, docs/benchmarks.md). The
//! exchange on a connection is [`conn`]'s, driven by the client request's
//! own task; connections are opened by [`connect`]'s [`Connector`] (TCP,
//! and TLS for an `https://` node), and an idle one is kept with its
//! [`Endpoint`] (`host:port` and whether TLS), which is its pool key.
//!
//! Retry safety: a request comes back unsent, exactly, when an idle
//! connection turns out to have been closed by Livy before any byte was
//! written; it is then sent on another one. "Nothing was sent" is known, not
//! inferred from an error kind.
//!
//! A connection goes back to the pool when its response body has been read
//! to the end ([`PooledBody`]); one whose response is dropped half-read is
//! closed with it.
//!
//! At most `max_connections` connections exist at once (idle or busy), like
//! HAProxy's per-server `maxconn`: a burst of clients waits for a free
//! connection instead of opening thousands against Livy's thread pool (and
//! holding their buffers in the proxy).

mod conn;
mod connect;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::body::{BodyError, UpstreamBody};
use conn::{Framing, Head};
pub use connect::{Connector, Endpoint, Stream};

/// A connection of the pool: plain TCP or TLS.
type Conn = conn::Conn<Stream>;

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
    /// TLS to the server failed: its certificate was refused (unknown CA,
    /// wrong name, expired), it refused ours, or it does not speak TLS.
    /// Trying again does not help; nothing of the request was processed.
    #[error("TLS to {authority} failed: {source}")]
    Tls {
        /// `host:port` of the server.
        authority: String,
        /// The TLS error.
        source: io::Error,
    },
    /// A fresh connection failed before any byte of the request was
    /// written: nothing was sent.
    #[error("connection to {authority} failed before the request was sent: {source}")]
    NotSent {
        /// `host:port` of the server.
        authority: String,
        /// The socket error.
        source: io::Error,
    },
    /// The exchange failed after the request may have reached the server.
    #[error("{0}")]
    Failed(io::Error),
    /// The client's body, streamed, failed on its side (it stopped sending,
    /// or went away) while the request was being written: not Livy's fault.
    #[error("{0}")]
    ClientBody(BodyError),
}

impl UpstreamError {
    /// An exchange that failed after the request may have reached Livy:
    /// the client's body failing is told apart from the connection failing.
    fn failed(endpoint: &Endpoint, error: io::Error) -> Self {
        // TLS 1.3 tells a client that its certificate was refused only
        // after the handshake: on the first read.
        if crate::tls::client::tls_reason(&error).is_some() {
            return UpstreamError::Tls {
                authority: String::from_utf8_lossy(endpoint.authority()).into_owned(),
                source: error,
            };
        }
        if !error.get_ref().is_some_and(|e| e.is::<BodyError>()) {
            return UpstreamError::Failed(error);
        }
        match error.into_inner().map(|e| e.downcast::<BodyError>()) {
            Some(Ok(body)) => UpstreamError::ClientBody(*body),
            Some(Err(other)) => UpstreamError::Failed(io::Error::other(other)),
            None => UpstreamError::Failed(io::ErrorKind::Other.into()),
        }
    }

    /// True when the request certainly did not reach Livy, so any method
    /// may be retried.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::NotSent { .. }
        )
    }

    /// True when TLS failed: the server's certificate or ours was refused,
    /// or the server does not speak TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamError::Tls { .. })
    }
}

/// Marks a response Livy gave before the request's streamed body was sent
/// (a passive's 307 to `Expect: 100-continue`): the stream is still in the
/// request, unread, and can go to another server once.
#[derive(Clone, Copy, Debug)]
pub struct BodyNotSent;

/// Puts the calling task at the back of its worker's run queue once, so
/// that the tasks already woken (other connections' reads) run before it
/// continues. Written by hand: `tokio::task::yield_now` instead holds the
/// task until the runtime has next polled for I/O, which put each request
/// behind the next batch of reads too and made the p99 worse at 16 to 64
/// connections. With nothing else ready the task runs again at once.
async fn run_other_ready_tasks_first() {
    crate::sched::checkpoint();
    let mut requeued = false;
    std::future::poll_fn(|cx| {
        if requeued {
            return Poll::Ready(());
        }
        requeued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// An idle connection, ready for its next request.
struct Idle {
    endpoint: Endpoint,
    conn: Conn,
}

/// The pool of connections to Livy servers.
pub struct Upstream {
    /// One list per serving thread (`shard::index`): a connection is
    /// taken again by the thread whose runtime registered it, so its
    /// reads are woken where they are awaited.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// One permit per open connection, held by the connection.
    slots: Arc<Semaphore>,
    /// Signalled when a connection is put back idle.
    returned: Notify,
    connector: Connector,
    max_idle: usize,
}

impl Upstream {
    /// A pool of at most `max_connections` connections, `max_idle` of them
    /// kept idle, opened by `connector`.
    pub fn new(connector: Connector, max_idle: usize, max_connections: usize) -> Arc<Self> {
        // As many lists as threads serve by default; with more threads
        // some share one (correct, only less local).
        let lists = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 64);
        Arc::new(Upstream {
            idle: (0..lists).map(|_| Mutex::new(Vec::new())).collect(),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            returned: Notify::new(),
            connector,
            // Per list: one thread may hold every idle connection (the
            // slots bound them all together).
            max_idle,
        })
    }

    /// Sends `req` to the server at `endpoint` over a pooled
    /// connection, or a new one. The request is only borrowed: the caller
    /// can send it again (a streamed body, once consumed, cannot). `wrote`
    /// turns true once a byte of the request has left for Livy: a caller
    /// that drops this future before it ends reads there whether Livy may
    /// have the request.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        req: &mut Request<UpstreamBody>,
        wrote: &mut bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // Writes to Livy leave together, after the reads of every other
        // connection that was ready: nginx and Livy then find several
        // requests per wake-up instead of being woken for each (the
        // measurements are in docs/benchmarks.md, "The tail at 128
        // connections"). Before the checkout, so that the idle connection
        // found open is written to at once.
        run_other_ready_tasks_first().await;
        // First this thread's idle connections; at the connection limit,
        // any thread's (its runtime then drives the reads) before waiting.
        let mut anywhere = false;
        let permit = loop {
            while let Some(mut conn) = self.checkout(endpoint, anywhere) {
                match conn.exchange(endpoint.authority(), req, wrote).await {
                    Ok(head) => return Ok(self.attach(endpoint, conn, head)),
                    // Closed by Livy while idle: the request never left.
                    Err(e) if !e.sent => continue,
                    Err(e) => return Err(UpstreamError::failed(endpoint, e.error)),
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                break permit;
            }
            if !anywhere {
                anywhere = true;
                continue;
            }
            // At the limit: an idle connection to another server (an old
            // leader) gives its slot up; then whichever comes first, a
            // connection put back idle or a slot freed.
            self.evict_other(endpoint);
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
        // states; the others' futures (kept per client connection by hyper)
        // stay without them.
        Box::pin(self.open_and_send(endpoint, permit, req, wrote)).await
    }

    /// Opens a new connection (taking `permit` for its life) and sends `req`
    /// as its first request.
    async fn open_and_send(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        permit: OwnedSemaphorePermit,
        req: &mut Request<UpstreamBody>,
        wrote: &mut bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let name = || String::from_utf8_lossy(endpoint.authority()).into_owned();
        let stream = match self.connector.connect(endpoint).await {
            Ok(s) => s,
            Err(connect::ConnectError::Network(source)) => {
                return Err(UpstreamError::Connect {
                    authority: name(),
                    source,
                });
            }
            Err(connect::ConnectError::Tls(source)) => {
                return Err(UpstreamError::Tls {
                    authority: name(),
                    source,
                });
            }
        };
        let mut conn = Conn::new(stream, Some(permit));
        match conn.exchange(endpoint.authority(), req, wrote).await {
            Ok(head) => Ok(self.attach(endpoint, conn, head)),
            Err(e) if !e.sent => Err(UpstreamError::NotSent {
                authority: name(),
                source: e.error,
            }),
            Err(e) => Err(UpstreamError::failed(endpoint, e.error)),
        }
    }

    /// Which idle list is this thread's.
    fn own_index(&self) -> usize {
        crate::shard::index() % self.idle.len()
    }

    /// The most recently used idle connection to `endpoint` on this
    /// thread's list (`anywhere`: then on any list), dropping any found
    /// closed on the way.
    fn checkout(&self, endpoint: &Endpoint, anywhere: bool) -> Option<Conn> {
        let own = self.own_index();
        let lists = self.idle.len();
        let order = (0..if anywhere { lists } else { 1 }).map(|k| (own + k) % lists);
        for i in order {
            loop {
                let mut found = {
                    let mut idle = self.idle[i].lock().unwrap_or_else(|e| e.into_inner());
                    match idle.iter().rposition(|c| c.endpoint == *endpoint) {
                        Some(pos) => idle.swap_remove(pos),
                        None => break,
                    }
                };
                if found.conn.still_open() {
                    return Some(found.conn);
                }
            }
        }
        None
    }

    fn checkin(&self, endpoint: Endpoint, conn: Conn) {
        let mut idle = self.idle[self.own_index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle { endpoint, conn });
        drop(idle);
        self.returned.notify_one();
    }

    /// Closes one idle connection to a server other than `endpoint`, this
    /// thread's first.
    fn evict_other(&self, endpoint: &Endpoint) {
        let own = self.own_index();
        for k in 0..self.idle.len() {
            let mut idle = self.idle[(own + k) % self.idle.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = idle.iter().position(|i| i.endpoint != *endpoint) {
                idle.remove(pos);
                return;
            }
        }
    }

    /// The response, its body either complete already (and the connection
    /// back in the pool) or to be read from the connection.
    fn attach(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut conn: Conn,
        head: Head,
    ) -> Response<PooledBody> {
        let state = match conn.take_complete_body(&head.framing) {
            Some(body) => {
                if head.reusable {
                    self.checkin(endpoint.clone(), conn);
                }
                BodyState::Complete(Some(body).filter(|b| !b.is_empty()))
            }
            None => BodyState::Reading(Box::new(Reading {
                conn,
                framing: head.framing,
                reusable: head.reusable,
                pool: self.clone(),
                endpoint: endpoint.clone(),
            })),
        };
        let mut resp = Response::new(PooledBody { state });
        if head.body_unsent {
            resp.extensions_mut().insert(BodyNotSent);
        }
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// A Livy response body: complete, or read from its connection as the
/// client takes it, which then goes back to the pool once read to the end.
pub struct PooledBody {
    state: BodyState,
}

impl PooledBody {
    /// Lets go of the connection: back to the pool when the body was read
    /// to the end and Livy allows reuse, closed otherwise.
    fn finish(&mut self, read_to_end: bool) {
        if let BodyState::Reading(r) = std::mem::replace(&mut self.state, BodyState::Done)
            && read_to_end
            && r.reusable
        {
            r.pool.checkin(r.endpoint, r.conn);
        }
    }
}

enum BodyState {
    /// Arrived with the head; `None` once handed over (or when empty).
    Complete(Option<Bytes>),
    /// Still on the wire. Boxed: most bodies are complete, and hyper keeps
    /// a response's body in each client connection's state.
    Reading(Box<Reading>),
    /// Read to the end, or failed.
    Done,
}

struct Reading {
    conn: Conn,
    framing: Framing,
    reusable: bool,
    pool: Arc<Upstream>,
    endpoint: Endpoint,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match &mut this.state {
            BodyState::Complete(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyState::Done => Poll::Ready(None),
            BodyState::Reading(r) => {
                let piece = std::task::ready!(r.conn.poll_body(cx, &mut r.framing));
                let read_to_end = r.framing == Framing::Done;
                if read_to_end || matches!(piece, Some(Err(_))) {
                    this.finish(read_to_end);
                }
                Poll::Ready(piece.map(|p| p.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Complete(data) => data.is_none(),
            BodyState::Reading(r) => r.framing == Framing::Done,
            BodyState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Complete(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyState::Reading(r) => match r.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                Framing::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            BodyState::Done => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_task_already_woken_runs_before_the_requeued_one_continues() {
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        assert!(!other_ran.load(Ordering::SeqCst), "queued, not run yet");
        run_other_ready_tasks_first().await;
        assert!(other_ran.load(Ordering::SeqCst));
        other.await.unwrap();
    }

    /// A Livy stand-in answering `{}` to every request, and how many
    /// connections it accepted.
    async fn counting_livy() -> (Endpoint, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = crate::node::Origin::parse(
            &format!("http://{}", listener.local_addr().unwrap()),
            crate::node::AddressDefaults::default(),
        )
        .unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (Endpoint::of(&origin), accepted)
    }

    /// One GET through `pool` from shard `on`, its body read to the end.
    async fn get_on(
        shards: &crate::shard::Shards,
        on: usize,
        pool: &Arc<Upstream>,
        endpoint: &Endpoint,
    ) {
        use http_body_util::BodyExt;
        let (pool, endpoint) = (pool.clone(), endpoint.clone());
        let sent = shards.handle(on).spawn(async move {
            assert_eq!(crate::shard::index(), on);
            let mut req = Request::new(UpstreamBody::Buffered(Bytes::new()));
            let resp = pool.send(&endpoint, &mut req, &mut false).await.unwrap();
            resp.into_body().collect().await.unwrap();
        });
        // A pool that waits for a slot nobody frees fails here, not by
        // hanging the test run.
        tokio::time::timeout(std::time::Duration::from_secs(30), sent)
            .await
            .expect("the request was served")
            .unwrap();
    }

    fn pool(max_connections: usize) -> Arc<Upstream> {
        let connector = Connector::new(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(60),
            None,
        );
        Upstream::new(connector, 8, max_connections)
    }

    #[tokio::test]
    async fn each_thread_reuses_its_own_idle_connections() {
        let shards = crate::shard::Shards::start(2).unwrap();
        let (endpoint, accepted) = counting_livy().await;
        let pool = pool(8);
        get_on(&shards, 0, &pool, &endpoint).await;
        get_on(&shards, 1, &pool, &endpoint).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "shard 1 opened its own, not shard 0's idle one"
        );
        for on in [0, 1, 0, 1] {
            get_on(&shards, on, &pool, &endpoint).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "then each reused its own"
        );
        shards.stop().await;
    }

    #[tokio::test]
    async fn at_the_limit_a_thread_takes_another_threads_idle_connection() {
        let shards = crate::shard::Shards::start(2).unwrap();
        let (endpoint, accepted) = counting_livy().await;
        let pool = pool(1);
        get_on(&shards, 0, &pool, &endpoint).await;
        get_on(&shards, 1, &pool, &endpoint).await;
        get_on(&shards, 0, &pool, &endpoint).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection allowed: shared, not waited for"
        );
        shards.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_nothing_else_ready_the_task_goes_on() {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            run_other_ready_tasks_first(),
        )
        .await
        .unwrap();
    }
}
