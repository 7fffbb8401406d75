//! One keep-alive HTTP/1.1 connection to a Livy server: the request written
//! and the answer read by the task of the client request that uses it.
//!
//! Written by hand on `httparse` (the parser hyper itself uses) rather than
//! on hyper's client, because hyper's client drives every connection from a
//! task of its own: each request crossed tasks three times (request in,
//! response head out, body out) through channels, and that machinery was
//! the largest share of the proxy's CPU per request (docs/benchmarks.md).
//! The proxy sends one request at a time per connection, so here the
//! client request's own task writes the request and reads the head, and the
//! response body reads from the socket when hyper's server side asks for it.
//!
//! What is spoken (RFC 9112):
//! - requests: HTTP/1.1, the body with the client's `Content-Length`, our own
//!   for a buffered body, or chunked for a streamed one without a length;
//! - responses: framed by `Content-Length`, chunked (trailers dropped), or
//!   the connection's end (§6.3); no body for HEAD, 1xx, 204 and 304;
//!   interim 1xx responses are skipped; 101 is refused (the proxy strips
//!   `Upgrade`, so Livy has no reason to send one);
//! - a streamed request body (one too large to keep for a resend) is sent
//!   with `Expect: 100-continue` and held back until Livy says 100, or for
//!   at most [`EXPECT_CONTINUE_WAIT`] (RFC 9110 10.1.1: a client must not
//!   wait for ever). A passive Livy's redirect filter answers 307 without
//!   reading the body, so that answer arrives with the body still unsent
//!   and the proxy can send it, once, to the active server instead
//!   ([`Head::body_unsent`]); such a connection is not reused, since Livy
//!   still expects the body it announced;
//! - an answer that comes while the body is still being written (a 401 or
//!   a 413 from a server that will not take the rest) is Livy's answer:
//!   the write stops and the answer goes to the client, even when Livy
//!   closed its side and the write failed; such a connection is not reused;
//! - every request is flushed once written (a TLS stream holds bytes back
//!   until it is).
//!
//! The connection is generic over its stream (plain TCP or TLS, the
//! [`super::connect::Stream`] enum in the pool, an in-memory pipe in the
//! tests), monomorphised, so plain TCP pays for no indirection. The body
//! framing is decoded by a pure function, [`decode`], on the read buffer.
//!
//! The retry rules rest on [`SendError::sent`]: false only when not one byte
//! of the request reached the socket.

use std::io::{self, Write as _};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::super::body::UpstreamBody;
use super::super::framing;

/// Most header fields a response head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Largest response head accepted (status line, fields and the empty line),
/// however it arrives.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer growth step; a small answer (Livy's usual) fits many times.
const READ_CHUNK: usize = 16 * 1024;
/// How long a streamed body waits for Livy's `100 Continue` before it is
/// sent anyway (curl waits as long).
pub(super) const EXPECT_CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// A buffered body up to this size is copied behind the head so both go out
/// in one `write(2)`; a larger one is written from its own buffer.
const COALESCE_BODY: usize = 16 * 1024;

/// An open connection to one Livy server.
pub(super) struct Conn<S> {
    stream: S,
    /// Bytes read from Livy and not yet consumed.
    buf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    out: Vec<u8>,
    /// Where the header names and values of the head being parsed lie in
    /// `buf`; kept to reuse its allocation.
    spans: Vec<(Range<usize>, Range<usize>)>,
    /// The pool's slot, held for the connection's life (none for a
    /// connection outside a pool's limit).
    _slot: Option<OwnedSemaphorePermit>,
}

/// An exchange that failed, and whether the request may have reached Livy.
#[derive(Debug)]
pub(super) struct SendError {
    /// False only when nothing at all was written: safe to send elsewhere.
    pub sent: bool,
    /// What went wrong.
    pub error: io::Error,
}

impl SendError {
    fn sent(error: io::Error) -> Self {
        SendError { sent: true, error }
    }
}

/// A response head from Livy, and how its body is delimited.
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection can carry another request after this body.
    pub reusable: bool,
    /// Livy answered before the request body was sent (its answer to
    /// `Expect: 100-continue`): the body is still in the request, unread.
    pub body_unsent: bool,
}

/// How much of a response body is left, by its framing.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the chunk grammar.
    Chunked(Chunk),
    /// No length: the body ends when Livy closes the connection.
    UntilClose,
    /// Read to the end.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, PartialEq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailer fields and an empty line.
    Trailers,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn head_too_large() -> io::Error {
    invalid(format!(
        "Livy's response head is larger than {MAX_HEAD_BYTES} bytes"
    ))
}

fn early_eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("Livy closed the connection {what}"),
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a fresh connection, which holds `slot` until it is dropped.
    pub(super) fn new(stream: S, slot: Option<OwnedSemaphorePermit>) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            spans: Vec::new(),
            _slot: slot,
        }
    }

    /// Whether an idle connection still looks usable: Livy has not closed it
    /// (nor sent anything unasked). Asked of the stream, not of the socket:
    /// under TLS 1.3 the server's session tickets arrive as bytes after the
    /// handshake, which the TLS layer consumes without yielding any, so
    /// only the stream knows whether data or an end came. Polled once
    /// without a task to wake; costs a system call only when the runtime
    /// has seen the socket become readable.
    pub(super) fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Sends `req` and reads the response head. The request is only
    /// borrowed: after an error with `sent == false` it can go elsewhere.
    /// Its `Host` is `host` (the server's `host:port`), whatever the request
    /// holds: written here rather than set in the request's headers by
    /// every attempt (a `HeaderMap` insert that also made the map grow).
    /// `wrote` turns true once a byte of it has left, for a caller that
    /// drops this future half-way and must know whether Livy may have it.
    pub(super) async fn exchange(
        &mut self,
        host: &[u8],
        req: &mut Request<UpstreamBody>,
        wrote: &mut bool,
    ) -> Result<Head, SendError> {
        if let Some(mut early) = self.write_request(host, req, wrote).await? {
            early.reusable = false;
            return Ok(early);
        }
        self.read_head(req.method()).await.map_err(SendError::sent)
    }

    /// Writes the request; returns Livy's final answer instead when it came
    /// before a streamed body was sent (see the module docs).
    async fn write_request(
        &mut self,
        host: &[u8],
        req: &mut Request<UpstreamBody>,
        wrote: &mut bool,
    ) -> Result<Option<Head>, SendError> {
        // Noted while the fields are written, rather than looked up by hash.
        let mut has_length = false;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
        for (name, value) in req.headers() {
            if name == header::HOST {
                continue;
            }
            has_length |= name == header::CONTENT_LENGTH;
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // The framing header, unless the client's Content-Length (which the
        // body was checked against by hyper's server side) already says it.
        let chunked = match req.body() {
            UpstreamBody::Buffered(b) if !has_length && !b.is_empty() => {
                out.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
                false
            }
            UpstreamBody::Buffered(_) => false,
            UpstreamBody::Streaming(_) if has_length => {
                out.extend_from_slice(b"expect: 100-continue\r\n");
                false
            }
            UpstreamBody::Streaming(_) => {
                out.extend_from_slice(b"expect: 100-continue\r\ntransfer-encoding: chunked\r\n");
                true
            }
        };
        out.extend_from_slice(b"\r\n");
        let small_body = match req.body() {
            UpstreamBody::Buffered(b) if b.len() <= COALESCE_BODY => {
                out.extend_from_slice(b);
                true
            }
            _ => false,
        };
        // The first write decides "sent": an error before any byte is
        // accepted leaves the request unsent.
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]).await {
                Ok(0) => {
                    return Err(SendError {
                        sent: written > 0,
                        error: io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => {
                    written += n;
                    *wrote = true;
                }
                Err(error) => {
                    return Err(SendError {
                        sent: written > 0,
                        error,
                    });
                }
            }
        }
        let method = req.method().clone();
        match req.body_mut() {
            UpstreamBody::Buffered(b) if !small_body => {
                let mut rest = &b[..];
                if let Some(head) = self.write_watching(&mut rest, &method).await? {
                    return Ok(Some(head));
                }
            }
            UpstreamBody::Buffered(_) => {}
            UpstreamBody::Streaming(body) => {
                // Boxed: the common request (a small buffered body) does
                // not carry this rare path's states in its future.
                return Box::pin(self.write_streamed(body, &method, chunked)).await;
            }
        }
        self.stream.flush().await.map_err(SendError::sent)?;
        Ok(None)
    }

    /// Sends a streamed body: after Livy's `100 Continue` (or a second's
    /// silence), piece by piece as the client sends it, chunked unless the
    /// client gave a length; returns Livy's answer instead when it came
    /// first, or while the body was still going.
    async fn write_streamed<B>(
        &mut self,
        body: &mut B,
        method: &Method,
        chunked: bool,
    ) -> Result<Option<Head>, SendError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The head must reach Livy before its answer is awaited.
        self.stream.flush().await.map_err(SendError::sent)?;
        let waited =
            tokio::time::timeout(EXPECT_CONTINUE_WAIT, self.read_continue_or_final(method)).await;
        match waited {
            Ok(Ok(Some(mut head))) => {
                head.body_unsent = true;
                return Ok(Some(head));
            }
            // 100 Continue, or no word in time: send it.
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => return Err(SendError::sent(e)),
        }
        loop {
            // While the client's next piece is awaited, Livy may
            // answer (and refuse the rest).
            let frame = tokio::select! {
                frame = body.frame() => frame,
                answer = self.read_continue_or_final(method) => match answer {
                    Ok(Some(head)) => return Ok(Some(head)),
                    Ok(None) => continue, // a late 100 Continue
                    Err(e) => return Err(SendError::sent(e)),
                },
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| SendError::sent(io::Error::other(e)))?;
            // Request trailers are dropped, as before (body.rs).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            // Size line, data and CRLF in one vectored write; the
            // size line formatted on the stack, not allocated per
            // chunk.
            const SIZE_LINE: usize = 18; // up to 16 hex digits and CRLF
            let mut line = [0u8; SIZE_LINE];
            let mut size: &[u8] = &[];
            if chunked {
                let mut rest = &mut line[..];
                write!(rest, "{:x}\r\n", data.len()).map_err(SendError::sent)?;
                let n = SIZE_LINE - rest.len();
                size = &line[..n];
            }
            let end: &[u8] = if chunked { b"\r\n" } else { b"" };
            let mut piece = Buf::chain(size, data).chain(end);
            if let Some(head) = self.write_watching(&mut piece, method).await? {
                return Ok(Some(head));
            }
        }
        if chunked {
            let mut last = &b"0\r\n\r\n"[..];
            if let Some(head) = self.write_watching(&mut last, method).await? {
                return Ok(Some(head));
            }
        }
        self.stream.flush().await.map_err(SendError::sent)?;
        Ok(None)
    }

    /// Writes all of `data` (part of a request body), reading Livy's
    /// answer meanwhile: a final answer that arrives before the write ends
    /// stops it and is returned. When the write fails (Livy answered and
    /// closed), an answer that had arrived is still Livy's answer.
    async fn write_watching(
        &mut self,
        data: &mut impl Buf,
        method: &Method,
    ) -> Result<Option<Head>, SendError> {
        let written = std::future::poll_fn(|cx| self.poll_write_watching(cx, data, method)).await;
        match written {
            Ok(answer) => Ok(answer),
            Err(error) => {
                // The answer may be in the buffer, or still in the socket.
                // Boxed: only a failed write needs this future's room.
                let answer = tokio::time::timeout(EXPECT_CONTINUE_WAIT, self.read_head(method));
                match Box::pin(answer).await {
                    Ok(Ok(head)) => Ok(Some(head)),
                    _ => Err(SendError::sent(error)),
                }
            }
        }
    }

    fn poll_write_watching(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut impl Buf,
        method: &Method,
    ) -> Poll<io::Result<Option<Head>>> {
        loop {
            if !data.has_remaining() {
                return Poll::Ready(Ok(None));
            }
            match tokio_util::io::poll_write_buf(Pin::new(&mut self.stream), cx, data) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            // Livy is not taking more: has it answered?
            loop {
                if let Some(head) = self.parse_head(method)? {
                    if head.status.is_informational() {
                        continue; // a late 100 Continue, or 102/103
                    }
                    return Poll::Ready(Ok(Some(head)));
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(head_too_large()));
                }
                match ready!(self.poll_fill(cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(early_eof(
                            "while the request body was being sent",
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    /// After a head with `Expect: 100-continue`: `None` on `100 Continue`
    /// (the body may go), the final answer if Livy gave one without
    /// wanting the body. Cancel-safe (a partial head stays in the buffer),
    /// so the caller can stop waiting at any moment.
    async fn read_continue_or_final(&mut self, method: &Method) -> io::Result<Option<Head>> {
        loop {
            if let Some(head) = self.parse_head(method)? {
                if head.status == StatusCode::CONTINUE {
                    return Ok(None);
                }
                if head.status.is_informational() {
                    continue; // 102, 103: still waiting
                }
                return Ok(Some(head));
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(head_too_large());
            }
            self.make_room();
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(early_eof(if self.buf.is_empty() {
                    "before answering"
                } else {
                    "in the middle of the response head"
                }));
            }
        }
    }

    /// Reads until a final (non-1xx) response head is complete.
    async fn read_head(&mut self, method: &Method) -> io::Result<Head> {
        loop {
            // A 100 Continue nobody waited for: the answer follows.
            if let Some(head) = self.read_continue_or_final(method).await? {
                return Ok(head);
            }
        }
    }

    /// Parses one response head from the buffer, if it is all there, and
    /// consumes it.
    fn parse_head(&mut self, method: &Method) -> io::Result<Option<Head>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        // Header slots left uninitialised: zeroing 100 of them for every
        // answer was a tenth of the proxy's instructions.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("Livy sent a malformed response head: {e}"))),
        };
        // The same limit as for a head still incomplete (`read_head`): one
        // that arrived whole in a single read, into a buffer that had grown
        // on this connection, must not pass where one in pieces fails.
        if len > MAX_HEAD_BYTES {
            return Err(head_too_large());
        }
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| invalid("Livy sent an invalid status code"))?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each name and value lies, so that the values can share the
        // head's buffer instead of being copied (as hyper does).
        let base = self.buf.as_ptr() as usize;
        self.spans.clear();
        for h in parsed.headers.iter() {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            self.spans
                .push((name..name + h.name.len(), value..value + h.value.len()));
        }
        let head = self.buf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid(
                "Livy switched protocols, which livy-proxy does not relay",
            ));
        }
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        // Noted on the way, rather than looked up by hash after.
        let mut transfer_encoding = false;
        for (name, value) in self.spans.drain(..) {
            let name = HeaderName::from_bytes(&head[name])
                .map_err(|_| invalid("Livy sent an invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| invalid("Livy sent an invalid header value"))?;
            transfer_encoding |= name == header::TRANSFER_ENCODING;
            headers.append(name, value);
        }
        let length = if transfer_encoding {
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length,
            // which must not reach the client beside a re-framed body.
            headers.remove(header::CONTENT_LENGTH);
            None
        } else {
            // Checked even where no body follows (HEAD, 304): the field
            // goes on to the client, and must say one number.
            framing::normalize_content_length(&mut headers)
                .map_err(|e| invalid(format!("Livy sent a bad Content-Length: {e}")))?
        };
        let te = transfer_encoding.then_some(&headers);
        let (framing, mut reusable) = framing_of(method, status, te, length);
        reusable &= version == Version::HTTP_11 && !says_close(&headers);
        Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
            body_unsent: false,
        }))
    }

    /// Takes the whole body from the buffer when it has already arrived with
    /// the head (Livy's answers usually do), so the connection can go back to
    /// the pool before the client has it.
    pub(super) fn take_complete_body(&mut self, framing: &Framing) -> Option<Bytes> {
        match *framing {
            Framing::Done => Some(Bytes::new()),
            Framing::Length(n) if n <= self.buf.len() as u64 => {
                Some(self.buf.split_to(n as usize).freeze())
            }
            _ => None,
        }
    }

    /// The next piece of the response body: `None` at its end.
    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match decode(&mut self.buf, framing) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore(where_)) => match ready!(self.poll_fill(cx)) {
                    Ok(0) if *framing == Framing::UntilClose => {
                        *framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(0) => return Poll::Ready(Some(Err(early_eof(where_)))),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// Room for the next read, for heads and bodies alike: the buffer grows
    /// only when less than a quarter of a read chunk is left.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Reads whatever Livy has sent into the buffer; 0 at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.make_room();
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }
}

/// What [`decode`] found in the read buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    /// The next piece of the body.
    Data(Bytes),
    /// The body is complete (its framing is now [`Framing::Done`]).
    End,
    /// More bytes must be read first; where in the body, for the error if
    /// the connection ends instead (the end of an [`Framing::UntilClose`]
    /// body is its end, not an error).
    NeedMore(&'static str),
}

/// Takes the next piece of a response body from `buf`, as `framing`
/// delimits it, and moves `framing` on: Content-Length, chunked (chunk
/// extensions and trailer fields dropped) or until the connection closes.
/// No I/O, so every framing is tested on bytes alone.
pub(super) fn decode(buf: &mut BytesMut, framing: &mut Framing) -> io::Result<Decoded> {
    loop {
        match framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Decoded::End);
            }
            Framing::Length(left) => {
                let Some(data) = take_data(buf, left) else {
                    return Ok(Decoded::NeedMore("in the middle of the body"));
                };
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Decoded::Data(data));
            }
            Framing::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore("")),
            Framing::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(chunk) => match chunk {
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return need_more(buf, "in a chunk-size line"),
                    Err(_) => return Err(invalid("bad chunk-size line")),
                },
                Chunk::Data(left) => {
                    let Some(data) = take_data(buf, left) else {
                        return Ok(Decoded::NeedMore("in the middle of a chunk"));
                    };
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Decoded::Data(data));
                }
                Chunk::DataEnd if buf.len() < 2 => return need_more(buf, "after a chunk"),
                Chunk::DataEnd => {
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk data too long"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; 16];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            buf.advance(used);
                            *framing = Framing::Done;
                            return Ok(Decoded::End);
                        }
                        Ok(httparse::Status::Partial) => return need_more(buf, "in the trailers"),
                        Err(_) => return Err(invalid("bad trailer fields")),
                    }
                }
            },
        }
    }
}

/// More bytes are needed for a size line, a chunk's end or the trailers:
/// unless the buffer already holds more than any of them may take.
fn need_more(buf: &BytesMut, where_: &'static str) -> io::Result<Decoded> {
    if buf.len() >= MAX_HEAD_BYTES {
        return Err(invalid(format!(
            "more than {MAX_HEAD_BYTES} bytes without a complete chunk-size line or trailer {where_}"
        )));
    }
    Ok(Decoded::NeedMore(where_))
}

/// Up to `left` body bytes from the buffer, if it holds any.
fn take_data(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = (*left).min(buf.len() as u64);
    *left -= n;
    Some(buf.split_to(n as usize).freeze())
}

/// How a response's body is delimited (RFC 9112 §6.3), and whether that
/// framing lets the connection be reused.
/// `length` is the checked `Content-Length`, if any; `transfer_encoding`
/// the headers when they hold a `Transfer-Encoding` (noted while they were
/// built, so that the usual answer costs no lookup).
fn framing_of(
    method: &Method,
    status: StatusCode,
    transfer_encoding: Option<&HeaderMap>,
    length: Option<u64>,
) -> (Framing, bool) {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return (Framing::Done, true);
    }
    if let Some(last) = transfer_encoding
        .into_iter()
        .flat_map(|h| h.get_all(header::TRANSFER_ENCODING))
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .rfind(|t| !t.is_empty())
    {
        return if last.eq_ignore_ascii_case("chunked") {
            (Framing::Chunked(Chunk::Size), true)
        } else {
            (Framing::UntilClose, false)
        };
    }
    match length {
        Some(0) => (Framing::Done, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    }
}

/// Whether a `Connection` header asks for the connection to end.
fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        // The usual single token, told without splitting.
        let bytes = v.as_bytes();
        !bytes.eq_ignore_ascii_case(b"keep-alive")
            && (bytes.eq_ignore_ascii_case(b"close")
                || v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let ok = StatusCode::OK;
        let get = &Method::GET;
        let f = |m: &Method, s, h: &[(&'static str, &'static str)]| {
            let h = headers(h);
            framing::content_length(&h)
                .map(|length| {
                    let te = h.contains_key(header::TRANSFER_ENCODING).then_some(&h);
                    framing_of(m, s, te, length)
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            f(get, ok, &[("content-length", "5")]),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            f(get, ok, &[("content-length", "0")]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(&Method::HEAD, ok, &[("content-length", "5")]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(get, StatusCode::NO_CONTENT, &[]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(get, StatusCode::NOT_MODIFIED, &[]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(
                get,
                ok,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "5")
                ]
            ),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            f(get, ok, &[("transfer-encoding", "gzip")]),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(f(get, ok, &[]), Ok((Framing::UntilClose, false)));
        assert_eq!(
            f(get, ok, &[("content-length", "5, 5")]),
            Ok((Framing::Length(5), true))
        );
        assert!(f(get, ok, &[("content-length", "5, 6")]).is_err());
        assert!(f(get, ok, &[("content-length", "-1")]).is_err());
    }

    #[test]
    fn connection_close_is_found_among_other_tokens() {
        assert!(says_close(&headers(&[("connection", "keep-alive, Close")])));
        assert!(!says_close(&headers(&[("connection", "keep-alive")])));
        assert!(!says_close(&headers(&[])));
    }

    /// Feeds `wire` to [`decode`] in pieces of `step` bytes; the body and
    /// whether it ended (rather than needing more).
    fn decode_in_pieces(
        wire: &[u8],
        step: usize,
        mut framing: Framing,
    ) -> (Vec<u8>, bool, Framing) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step);
        loop {
            match decode(&mut buf, &mut framing).unwrap() {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End => return (body, true, framing),
                Decoded::NeedMore(_) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return (body, false, framing),
                },
            }
        }
    }

    #[test]
    fn decode_content_length_in_any_pieces() {
        for step in [1, 2, 3, 100] {
            let (body, ended, framing) =
                decode_in_pieces(b"hello, world", step, Framing::Length(5));
            assert_eq!(
                (body.as_slice(), ended, framing),
                (&b"hello"[..], true, Framing::Done)
            );
        }
        let (body, ended, _) = decode_in_pieces(b"hel", 1, Framing::Length(5));
        assert_eq!(
            (body.as_slice(), ended),
            (&b"hel"[..], false),
            "short: more needed"
        );
    }

    #[test]
    fn decode_chunked_with_extensions_and_trailers_in_any_pieces() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 5, 1000] {
            let (body, ended, framing) =
                decode_in_pieces(wire, step, Framing::Chunked(Chunk::Size));
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(ended && framing == Framing::Done, "step {step}");
        }
        let mut buf = BytesMut::from(&wire[..]);
        let mut framing = Framing::Chunked(Chunk::Size);
        while decode(&mut buf, &mut framing).unwrap() != Decoded::End {}
        assert_eq!(&buf[..], b"NEXT", "the next response is left in the buffer");
    }

    #[test]
    fn decode_refuses_broken_chunks() {
        let bad = |wire: &[u8]| {
            let mut buf = BytesMut::from(wire);
            let mut framing = Framing::Chunked(Chunk::Size);
            loop {
                match decode(&mut buf, &mut framing) {
                    Err(e) => return e.to_string(),
                    Ok(Decoded::Data(_)) => {}
                    Ok(other) => panic!("{wire:?}: {other:?}"),
                }
            }
        };
        assert!(bad(b"zz\r\n").contains("chunk-size"));
        assert!(bad(b"2\r\nabc\r\n").contains("too long"));
        let mut endless = b"1;".to_vec();
        endless.resize(MAX_HEAD_BYTES, b'a');
        assert!(bad(&endless).contains("without a complete chunk-size line"));
    }

    #[test]
    fn decode_until_close_takes_everything() {
        let mut buf = BytesMut::from(&b"abc"[..]);
        let mut framing = Framing::UntilClose;
        assert_eq!(
            decode(&mut buf, &mut framing).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert!(matches!(
            decode(&mut buf, &mut framing).unwrap(),
            Decoded::NeedMore(_)
        ));
        assert_eq!(framing, Framing::UntilClose, "the end is the connection's");
    }

    fn post(body_len: usize) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Buffered(Bytes::from(vec![b'x'; body_len])));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("/batches");
        req
    }

    /// Reads one request head from `server` and answers `answer` without
    /// reading the body.
    async fn answer_early(server: &mut tokio::io::DuplexStream, answer: &[u8]) {
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 512];
            let n = server.read(&mut b).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&b[..n]);
        }
        server.write_all(answer).await.unwrap();
        server.flush().await.unwrap();
    }

    const TOO_LARGE: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno";

    #[tokio::test]
    async fn an_answer_while_the_body_is_written_is_livys_answer() {
        // A pipe far smaller than the body: the write blocks until the
        // answer is seen.
        let (client, mut server) = tokio::io::duplex(4096);
        let mut conn = Conn::new(client, None);
        let livy = tokio::spawn(async move {
            answer_early(&mut server, TOO_LARGE).await;
            server // kept open, the rest never read
        });
        let mut req = post(1 << 20);
        let head = conn
            .exchange(b"livy:8998", &mut req, &mut false)
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!head.reusable && !head.body_unsent);
        let _server = livy.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_then_a_close_during_the_body_is_still_livys_answer() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut conn = Conn::new(client, None);
        let livy = tokio::spawn(async move {
            answer_early(&mut server, TOO_LARGE).await;
            // Give the answer time to be read, then close: the body
            // write fails.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(server);
        });
        let mut req = post(1 << 20);
        let head = conn
            .exchange(b"livy:8998", &mut req, &mut false)
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        livy.await.unwrap();
    }

    #[tokio::test]
    async fn still_open_asks_the_stream() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut conn = Conn::new(client, None);
        assert!(conn.still_open(), "nothing said: open");
        server.write_all(b"x").await.unwrap();
        assert!(!conn.still_open(), "bytes nobody asked for: not reusable");
        let (client, server) = tokio::io::duplex(4096);
        let mut conn = Conn::new(client, None);
        drop(server);
        assert!(!conn.still_open(), "closed");
    }
}
