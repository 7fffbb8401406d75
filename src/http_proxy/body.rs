//! Request bodies: held in memory so they can be sent more than once, or
//! streamed, and what either may cost the proxy.
//!
//! A stale view can send a request to a passive Livy server, which answers
//! 307; the proxy then resends the same request to the node the redirect
//! names. That needs the body again, so small bodies (Livy's are small JSON)
//! are read into memory first, up to `max-replay-body`. A larger body is
//! streamed through untouched and cannot be replayed: its 307 goes back to
//! the client, unless Livy answered before reading any of it (a passive's
//! redirect filter does: the stream then goes, once, to the active server).
//! Nothing is ever buffered beyond the limit.
//!
//! Clients are not trusted to send their bodies at all, so ([`BodyLimits`]):
//! - every body, buffered or streamed, HTTP/1.1 or h2c, fails with
//!   [`BodyError::TimedOut`] (a 408) after `client-body-timeout` without a
//!   byte: a client that stops sending lets go of what it holds;
//! - all buffered bodies together take at most `max-buffered-bodies` of
//!   memory (one semaphore permit per byte). Past it a body is streamed
//!   instead of buffered: it loses only its replay, it is not refused;
//! - at most `max-streaming-uploads` requests stream a body at once, each
//!   holding one of Livy's `max-upstream-connections` while its client
//!   sends: uploads that trickle in cannot take every connection to Livy.
//!   A request that finds them all taken waits, within the hold time, then
//!   gets a 503 `overloaded`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::{TimeoutBody, TimeoutError};

use super::error::ProxyError;

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for `client-body-timeout`.
    #[error("the client sent nothing of its request body for {0:?}")]
    TimedOut(Duration),
    /// The client's connection or stream failed (or it sent a malformed body).
    #[error("reading the request body failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<BodyError> for ProxyError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TimedOut(timeout) => ProxyError::BodyTimeout { timeout },
            read @ BodyError::Read(_) => ProxyError::BadRequest(read.to_string()),
        }
    }
}

/// A client's body as the proxy reads it: with the idle timeout applied.
type ClientBody = BoxBody<Bytes, BodyError>;

/// The body of one attempt to Livy: a replayable buffer or a one-shot stream.
pub enum UpstreamBody {
    /// All of it, in memory: sent with a `Content-Length`.
    Buffered(Bytes),
    /// Larger than the replay limit (or no memory left to buffer it): sent
    /// as it arrives from the client.
    Streaming(ClientBody),
}

/// A client's request body, prepared for forwarding.
pub enum PreparedBody {
    /// Fully read: can be sent any number of times.
    Replayable {
        /// The body.
        data: Bytes,
        /// Its share of `max-buffered-bodies`, given back with the body.
        charge: Option<OwnedSemaphorePermit>,
    },
    /// Streamed: can be sent once.
    Streaming(Option<ClientBody>),
}

impl PreparedBody {
    /// Whether [`PreparedBody::take`] can be called again after this.
    pub fn is_replayable(&self) -> bool {
        matches!(self, PreparedBody::Replayable { .. })
    }

    /// Whether there is a body left to send: always for a buffered one, and
    /// for a stream until it has been taken (or after it came back unsent).
    pub fn can_send(&self) -> bool {
        !matches!(self, PreparedBody::Streaming(None))
    }

    /// Gives back a stream that was taken but never read (Livy answered
    /// before wanting it, or the connection failed before the first byte),
    /// so it can be sent elsewhere. Anything else is left as it is.
    pub fn put_back(&mut self, unsent: UpstreamBody) {
        if let (PreparedBody::Streaming(slot @ None), UpstreamBody::Streaming(stream)) =
            (self, unsent)
        {
            *slot = Some(stream);
        }
    }

    /// The body for one attempt: a cheap clone of the buffer, or the stream
    /// (once; `None` after it was taken).
    pub fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            PreparedBody::Replayable { data, .. } => Some(UpstreamBody::Buffered(data.clone())),
            PreparedBody::Streaming(s) => s.take().map(UpstreamBody::Streaming),
        }
    }
}

/// The limits every request body is read under, shared by all requests.
pub struct BodyLimits {
    max_replay_body: u64,
    timeout: Duration,
    /// One permit per byte of memory held by buffered bodies.
    buffered: Arc<Semaphore>,
    /// One permit per request streaming its body to Livy.
    streaming: Arc<Semaphore>,
    max_streaming: usize,
}

/// The smallest buffer a body of unknown length starts with.
const FIRST_CHUNK: usize = 8 * 1024;

impl BodyLimits {
    /// Limits for bodies up to `max_replay_body` bytes buffered, at most
    /// `max_buffered` bytes of them at once, at most `max_streaming`
    /// streamed at once, each failing after `timeout` without a byte.
    pub fn new(
        max_replay_body: u64,
        max_buffered: u64,
        max_streaming: usize,
        timeout: Duration,
    ) -> Self {
        let bytes = usize::try_from(max_buffered)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BodyLimits {
            max_replay_body,
            timeout,
            buffered: Arc::new(Semaphore::new(bytes)),
            streaming: Arc::new(Semaphore::new(max_streaming.max(1))),
            max_streaming: max_streaming.max(1),
        }
    }

    /// Reads `body` into memory if it fits in `max-replay-body` (by its
    /// declared length, or by reading until it ends or passes the limit)
    /// and in what is left of `max-buffered-bodies`; otherwise streams it,
    /// with any prefix already read put back in front, once a streaming
    /// slot is free (waiting at most until `deadline`).
    pub async fn prepare(
        &self,
        body: Incoming,
        deadline: Instant,
    ) -> Result<PreparedBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(PreparedBody::Replayable {
                data: Bytes::new(),
                charge: None,
            });
        }
        let hint = body.size_hint();
        let mut body = self.timed(body);
        if hint.lower() > self.max_replay_body {
            return self.stream(body, None, deadline).await;
        }
        // A declared length is charged whole, up front; a body of unknown
        // length as its buffer grows.
        let declared = hint.exact().unwrap_or(0);
        let Some(mut charge) = self.charge(declared) else {
            return self.stream(body, None, deadline).await;
        };
        let mut buf = BytesMut::with_capacity(declared as usize);
        while let Some(frame) = body.frame().await {
            // Request trailers are hop-by-hop in practice (and Livy ignores
            // them): only data is kept.
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let need = buf.len() + data.len();
            if need as u64 > self.max_replay_body {
                let prefix = [buf.freeze(), data];
                return self.stream_after(prefix, body, charge, deadline).await;
            }
            let charged = charge.num_permits();
            if need > charged {
                let grown = (charged * 2)
                    .max(need)
                    .max(FIRST_CHUNK)
                    .min(self.max_replay_body as usize);
                match self.charge((grown - charged) as u64) {
                    Some(more) => charge.merge(more),
                    None => {
                        let prefix = [buf.freeze(), data];
                        return self.stream_after(prefix, body, charge, deadline).await;
                    }
                }
                buf.reserve(grown - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(PreparedBody::Replayable {
            data: buf.freeze(),
            charge: Some(charge),
        })
    }

    /// `body` with the idle timeout, its errors told apart.
    fn timed(&self, body: Incoming) -> ClientBody {
        let timeout = self.timeout;
        TimeoutBody::new(timeout, body)
            .map_err(move |e| {
                if e.is::<TimeoutError>() {
                    BodyError::TimedOut(timeout)
                } else {
                    BodyError::Read(e)
                }
            })
            .boxed()
    }

    /// `bytes` of the buffered-bodies budget, if that much is left.
    fn charge(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        self.buffered.clone().try_acquire_many_owned(n).ok()
    }

    /// Streams `prefix` (already read, and charged to the budget until it
    /// has been sent) and then the rest of `body`.
    async fn stream_after(
        &self,
        prefix: [Bytes; 2],
        body: ClientBody,
        charge: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<PreparedBody, ProxyError> {
        let prefix = futures_util::stream::iter(
            prefix
                .into_iter()
                .filter(|b| !b.is_empty())
                .map(|b| Ok(Frame::data(b))),
        );
        let rest = http_body_util::BodyStream::new(body);
        let chained = StreamBody::new(futures_util::StreamExt::chain(prefix, rest));
        self.stream(chained.boxed(), Some(charge), deadline).await
    }

    /// `body` as a one-shot stream, once a streaming slot is free.
    async fn stream(
        &self,
        body: ClientBody,
        charge: Option<OwnedSemaphorePermit>,
        deadline: Instant,
    ) -> Result<PreparedBody, ProxyError> {
        let slot = tokio::time::timeout_at(deadline.into(), self.streaming.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ProxyError::Overloaded(format!(
                    "{} request bodies are already streaming to Livy (max-streaming-uploads)",
                    self.max_streaming
                ))
            })?;
        let streamed = Streamed {
            body,
            held: Some((slot, charge)),
        };
        Ok(PreparedBody::Streaming(Some(streamed.boxed())))
    }
}

/// A streamed body that gives its streaming slot (and the budget of a
/// prefix read before it) back as soon as it has ended or failed, not when
/// Livy answers: a slot bounds uploads in progress, not requests.
struct Streamed {
    body: ClientBody,
    held: Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.held = None;
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds `guard` until hyper drops it (sent, reset,
/// or its connection gone): how a connection counts the requests it has in
/// flight (`h2c`'s idle timeout, `park`'s idle test) without boxing.
pub struct GuardedBody<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> GuardedBody<B, G> {
    /// `body`, with `guard` dropped when it is.
    pub fn new(body: B, guard: G) -> Self {
        GuardedBody {
            body,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
