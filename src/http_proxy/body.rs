//! Request bodies that can be sent more than once.
//!
//! A stale view can send a request to a passive Livy server, which answers
//! 307; the proxy then resends the same request to the node the redirect
//! names. That needs the body again, so small bodies (Livy's are small JSON)
//! are read into memory first, up to `max-replay-body`. A larger body is
//! streamed through untouched and cannot be replayed: its 307 goes back to
//! the client, unless Livy answered before reading any of it (a passive's
//! redirect filter does: the stream then goes, once, to the active server).
//! Nothing is ever buffered beyond the limit.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};

/// The body of one attempt to Livy: a replayable buffer or a one-shot stream.
pub enum UpstreamBody {
    /// All of it, in memory: sent with a `Content-Length`.
    Buffered(Bytes),
    /// Larger than the replay limit: sent as it arrives from the client.
    Streaming(BoxBody<Bytes, hyper::Error>),
}

/// A client's request body, prepared for forwarding.
pub enum PreparedBody {
    /// Fully read: can be sent any number of times.
    Replayable(Bytes),
    /// Larger than the replay limit: can be sent once.
    Streaming(Option<BoxBody<Bytes, hyper::Error>>),
}

impl PreparedBody {
    /// Reads `body` into memory if it fits in `limit` bytes (by its declared
    /// length, or by reading until it ends or passes the limit); otherwise
    /// keeps it streaming, with any prefix already read put back in front.
    pub async fn prepare(body: Incoming, limit: u64) -> Result<Self, hyper::Error> {
        if body.is_end_stream() {
            return Ok(PreparedBody::Replayable(Bytes::new()));
        }
        if body.size_hint().lower() > limit {
            return Ok(PreparedBody::Streaming(Some(body.boxed())));
        }
        let mut body = body;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            // Request trailers are hop-by-hop in practice (and Livy ignores
            // them): only data is kept.
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > limit {
                    let prefix = futures_util::stream::iter([Ok(Frame::data(buf.freeze()))]);
                    let rest = http_body_util::BodyStream::new(body);
                    let chained = StreamBody::new(futures_util::StreamExt::chain(prefix, rest));
                    return Ok(PreparedBody::Streaming(Some(chained.boxed())));
                }
            }
        }
        Ok(PreparedBody::Replayable(buf.freeze()))
    }

    /// Whether [`PreparedBody::take`] can be called again after this.
    pub fn is_replayable(&self) -> bool {
        matches!(self, PreparedBody::Replayable(_))
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
            PreparedBody::Replayable(b) => Some(UpstreamBody::Buffered(b.clone())),
            PreparedBody::Streaming(s) => s.take().map(UpstreamBody::Streaming),
        }
    }
}
