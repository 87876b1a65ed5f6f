//! The wire protocols of cell streams beyond the guest's own bytes: how a node tells
//! a peer how the instance behind a stream ended (`P+status`), and how a cell that
//! dials tells the remote node what is left of its chain of calls (`P+call`). This
//! module is the one place that knows these formats: the codec ([`StatusCodec`]),
//! the node's writer ([`AnswerWriter`]), the readers ([`read_answer`], [`Deframed`]),
//! what a client offers ([`offer`]), and the call header ([`CallHeader`]).
//!
//! On a plain cell protocol `P` the bytes are the guest's, untouched, so any libp2p
//! client can talk to a cell. But a transport cannot always signal failure there:
//! yamux reports a reset to a reader as a plain EOF, and QUIC finishes a dropped
//! stream. So a node serves every cell protocol a second time as `P+status`, where the
//! node's answer is framed and ends with an *outcome trailer*. `ww dial` asks for
//! `P+status` first and falls back to `P`.
//!
//! # Wire format of `P+status`
//! The peer's bytes to the node are exactly as on `P`. The node's bytes to the peer:
//! ```text
//! answer  = frame* end
//! frame   = length:u32be payload    ; length >= 1, the guest's bytes
//! end     = 0:u32be code:u8 reason  ; reason: UTF-8, at most 1 KiB, up to EOF
//! ```
//! `code` 0 means the instance finished cleanly (`reason` is empty); 1 means it
//! failed (trap, error, non-zero exit, refusal), with a one-line reason. A stream
//! that ends without `end` failed as well: the node aborted it or the connection broke.
//!
//! # Wire format of `P+call`
//! What a cell's dial asks for (see `cell::dialer`): `P+status` whose request starts
//! with a fixed header, so the remote node learns what is left of the chain of calls
//! it is part of. The answer is exactly as on `P+status`.
//! ```text
//! request  = header peer-bytes
//! header   = hops:u8 deadline:u32be
//! ```
//! `hops` is how many more dials the remote instance may make along this chain (the
//! caller's own budget minus the hop it is making); the remote node serves the
//! stream with the smaller of that and its own `max_hops`. `deadline` is the caller's
//! remaining wall-clock time in milliseconds, or `0xFFFF_FFFF` for none; the remote
//! instance ends at the earlier of that and its own `wall_s`. Plain `P` and
//! `P+status` clients never send a header.
//!
//! # Why the writer is poll-based
//! The node writes the guest's bytes from inside `wasi:io` calls that must not wait
//! (`cell::io` drives them with `poll_write`), and it writes each chunk straight into
//! the stream, so the frame's payload is never copied. A `FramedWrite` sink would
//! copy every payload into its own buffer and add a second layer of buffering under
//! the guest's output budget; so [`AnswerWriter`] encodes only the framing bytes
//! with [`StatusCodec`] and writes the payload itself. Reading has no such
//! constraint: both readers are a `FramedRead` over the same codec.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use libp2p::StreamProtocol;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use tokio_util::io::StreamReader;

/// Appended to a cell's protocol ID to ask for the framed answer with a trailer.
pub const SUFFIX: &str = "+status";
/// Appended to a cell's protocol ID by a cell that dials: `+status` with a
/// [`CallHeader`] in front of the request.
pub const CALL_SUFFIX: &str = "+call";
/// Longest reason a trailer carries; longer ones are cut.
pub const MAX_REASON: usize = 1024;
/// Largest frame a node writes.
const MAX_FRAME: usize = 1 << 20;
/// How much [`read_answer`] reads from the stream at a time.
const READ_CAPACITY: usize = 64 * 1024;

/// What an answer that stops before its trailer means.
const CUT_SHORT: &str =
    "the stream ended without an outcome (the node aborted it, or the connection broke)";

/// How an instance ended, as the peer learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The instance finished cleanly.
    Success,
    /// The instance failed; the reason is one line of text.
    Failure(String),
}

/// Which variant of a cell protocol a stream was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `P`: the guest's bytes both ways, nothing else.
    Plain,
    /// `P+status`: a framed answer with an outcome trailer.
    Status,
    /// `P+call`: `P+status` whose request starts with a [`CallHeader`].
    Call,
}

impl Variant {
    /// Whether the node's answer is framed and ends with an outcome trailer.
    pub fn is_framed(self) -> bool {
        self != Self::Plain
    }
}

/// The status variant (`P+status`) of a cell protocol `P`.
pub fn status_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{SUFFIX}")).expect("starts with `/`")
}

/// The call variant (`P+call`) of a cell protocol `P`.
pub fn call_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{CALL_SUFFIX}")).expect("starts with `/`")
}

/// Splits a negotiated protocol into the cell protocol and the variant.
pub fn parse(protocol: &StreamProtocol) -> (&str, Variant) {
    let name = protocol.as_ref();
    if let Some(base) = name.strip_suffix(SUFFIX) {
        (base, Variant::Status)
    } else if let Some(base) = name.strip_suffix(CALL_SUFFIX) {
        (base, Variant::Call)
    } else {
        (name, Variant::Plain)
    }
}

/// Who opens a stream on a cell protocol, which decides what it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A peer outside any chain of calls (`ww dial`, a test client).
    Peer,
    /// A cell's instance, part of a chain of calls.
    Cell,
}

/// The protocols to offer for a stream on the cell protocol `protocol`, best first:
/// a cell offers the call variant first (so the remote node learns what is left of
/// the chain, and the remote cell's failure reaches the caller); everyone offers the
/// status variant, then the plain protocol for peers that only speak that.
pub fn offer(protocol: &StreamProtocol, caller: Caller) -> Vec<StreamProtocol> {
    let mut offer = Vec::with_capacity(3);
    if caller == Caller::Cell {
        offer.push(call_variant(protocol));
    }
    offer.push(status_variant(protocol));
    offer.push(protocol.clone());
    offer
}

/// What is left of a chain of calls, sent ahead of a `P+call` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHeader {
    /// Dials the remote instance may still make along the chain.
    pub hops: u8,
    /// The caller's remaining wall-clock time; `None` if it has no limit.
    pub deadline: Option<Duration>,
}

impl CallHeader {
    /// Length of the header on the wire.
    pub const LEN: usize = 5;
    /// `deadline` value for "none".
    const NO_DEADLINE: u32 = u32::MAX;

    /// The header's bytes. A deadline beyond the wire's range (49 days) is sent as
    /// the longest one it can carry.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let deadline = match self.deadline {
            None => Self::NO_DEADLINE,
            Some(left) => u32::try_from(left.as_millis())
                .unwrap_or(u32::MAX)
                .min(Self::NO_DEADLINE - 1),
        };
        let mut bytes = [0; Self::LEN];
        bytes[0] = self.hops;
        bytes[1..].copy_from_slice(&deadline.to_be_bytes());
        bytes
    }

    /// A header from its bytes (every value is valid).
    pub fn decode(bytes: [u8; Self::LEN]) -> Self {
        let deadline = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        Self {
            hops: bytes[0],
            deadline: (deadline != Self::NO_DEADLINE)
                .then(|| Duration::from_millis(deadline.into())),
        }
    }

    /// Reads a header off the start of a request.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Self> {
        let mut bytes = [0; Self::LEN];
        reader.read_exact(&mut bytes).await?;
        Ok(Self::decode(bytes))
    }

    /// Sends the header at the start of a request, and flushes it.
    pub async fn write<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> io::Result<()> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await
    }
}

/// The framing bytes a node writes around the guest's, encoded by [`StatusCodec`].
#[derive(Debug, Clone, Copy)]
pub enum Marker<'a> {
    /// The length in front of a frame of this many payload bytes (1 to `u32::MAX`).
    Frame(usize),
    /// The `end` of an answer: the outcome trailer.
    End(&'a Outcome),
}

/// A piece of an answer as [`StatusCodec`] decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Some of the guest's bytes (never empty; a frame may come in several parts).
    Payload(Bytes),
    /// The answer is over: the trailer's outcome, or a failure if the stream ended
    /// before it.
    End(Outcome),
}

/// The `P+status` framing as a `tokio-util` codec: it encodes [`Marker`]s and
/// decodes an answer into [`Part`]s. Decoding never holds a whole frame: payload is
/// handed on as it arrives, so memory stays bounded whatever length a peer sends.
#[derive(Debug, Default)]
pub struct StatusCodec {
    state: Decode,
}

/// Where decoding stands in an answer.
#[derive(Debug, Default, Clone, Copy)]
enum Decode {
    /// Before a frame's length (or the trailer's zero).
    #[default]
    Length,
    /// Inside a frame, with this many payload bytes to come.
    Payload(usize),
    /// Before the trailer's code.
    Code,
    /// Inside a failure's reason, which ends at EOF or at [`MAX_REASON`].
    Reason,
    /// The answer is over; anything after it is ignored.
    Over,
}

impl StatusCodec {
    /// Whether decoding stands between frames: the last payload part ended a frame.
    pub fn between_frames(&self) -> bool {
        matches!(self.state, Decode::Length)
    }

    /// Ends the answer with a failure whose reason is `reason`'s bytes.
    fn fail(&mut self, reason: &[u8]) -> Part {
        self.state = Decode::Over;
        Part::End(Outcome::Failure(
            String::from_utf8_lossy(reason).into_owned(),
        ))
    }
}

impl Encoder<Marker<'_>> for StatusCodec {
    type Error = io::Error;

    fn encode(&mut self, marker: Marker<'_>, dst: &mut BytesMut) -> io::Result<()> {
        match marker {
            Marker::Frame(len) => {
                let len = u32::try_from(len)
                    .ok()
                    .filter(|&len| len > 0)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("a frame holds 1 to 2^32 - 1 bytes, not {len}"),
                        )
                    })?;
                dst.put_u32(len);
            }
            Marker::End(outcome) => {
                dst.put_u32(0);
                match outcome {
                    Outcome::Success => dst.put_u8(0),
                    Outcome::Failure(reason) => {
                        dst.put_u8(1);
                        let line = reason.lines().next().unwrap_or("failed");
                        let mut cut = line.len().min(MAX_REASON);
                        while !line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        dst.extend_from_slice(&line.as_bytes()[..cut]);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Decoder for StatusCodec {
    type Item = Part;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Part>> {
        loop {
            match self.state {
                Decode::Length => {
                    if src.len() < 4 {
                        return Ok(None);
                    }
                    self.state = match src.get_u32() as usize {
                        0 => Decode::Code,
                        len => Decode::Payload(len),
                    };
                }
                Decode::Payload(left) => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(src.len());
                    self.state = match left - n {
                        0 => Decode::Length,
                        left => Decode::Payload(left),
                    };
                    return Ok(Some(Part::Payload(src.split_to(n).freeze())));
                }
                Decode::Code => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    if src.get_u8() == 0 {
                        self.state = Decode::Over;
                        return Ok(Some(Part::End(Outcome::Success)));
                    }
                    self.state = Decode::Reason;
                }
                Decode::Reason => {
                    if src.len() < MAX_REASON {
                        return Ok(None);
                    }
                    let reason = src.split_to(MAX_REASON);
                    return Ok(Some(self.fail(&reason)));
                }
                Decode::Over => {
                    src.clear();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Part>> {
        if let Some(part) = self.decode(src)? {
            return Ok(Some(part));
        }
        Ok(match self.state {
            Decode::Over => None,
            // The end of the stream ends the reason.
            Decode::Reason => {
                let reason = src.split();
                Some(self.fail(&reason))
            }
            Decode::Length | Decode::Payload(_) | Decode::Code => {
                src.clear();
                Some(self.fail(CUT_SHORT.as_bytes()))
            }
        })
    }
}

/// The write half of a served cell stream: on a plain stream the guest's bytes go
/// out as they are; on a framed one (`+status`, `+call`) each write becomes (part
/// of) a frame, written straight into the stream. [`Self::poll_finish`] ends the
/// stream as the instance's outcome says.
#[derive(Debug)]
pub struct AnswerWriter<W> {
    inner: W,
    /// `Some` on a framed stream.
    framing: Option<Framing>,
    /// The write side was shut down.
    closed: bool,
}

/// The state of a framed answer.
#[derive(Debug, Default)]
struct Framing {
    /// Framing bytes not yet written: a frame's length, or the trailer.
    marker: BytesMut,
    /// Payload bytes the current frame still expects.
    body_left: usize,
    /// Whether the trailer has been encoded.
    ending: bool,
}

impl<W: AsyncWrite + Unpin> AnswerWriter<W> {
    /// Writes the answer to `inner`, in frames if `framed`.
    pub fn new(inner: W, framed: bool) -> Self {
        Self {
            inner,
            framing: framed.then(Framing::default),
            closed: false,
        }
    }

    /// Whether the answer is framed (a `+status` or `+call` stream).
    pub fn is_framed(&self) -> bool {
        self.framing.is_some()
    }

    /// Whether the write side has been shut down.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Ends the stream once the instance is over and its output is written.
    ///
    /// A framed stream gets its trailer, is flushed and shut down gracefully. A
    /// plain stream is shut down on success; on failure nothing is sent, and
    /// dropping it aborts the stream (a yamux reset). Fails if the guest's last
    /// frame is incomplete. After `Pending`, call again: the trailer is the one the
    /// first call encoded.
    pub fn poll_finish(&mut self, cx: &mut Context<'_>, outcome: &Outcome) -> Poll<io::Result<()>> {
        let Some(framing) = &mut self.framing else {
            return match outcome {
                Outcome::Success => self.poll_close(cx),
                Outcome::Failure(_) => Poll::Ready(Ok(())),
            };
        };
        if !framing.ending {
            if framing.body_left > 0 {
                return Poll::Ready(Err(io::Error::other(
                    "the guest's last frame is incomplete",
                )));
            }
            StatusCodec::default().encode(Marker::End(outcome), &mut framing.marker)?;
            framing.ending = true;
        }
        ready!(poll_write_all(&mut self.inner, cx, &mut framing.marker))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.poll_close(cx)
    }

    /// [`Self::poll_finish`] as a future.
    pub async fn finish(&mut self, outcome: &Outcome) -> io::Result<()> {
        poll_fn(|cx| self.poll_finish(cx, outcome)).await
    }

    /// Shuts the write side down gracefully (the peer reads EOF); idempotent.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AnswerWriter<W> {
    /// Writes (part of) `buf`; on a framed stream as frame payload, starting a frame
    /// (of at most 1 MiB) first when the previous one is complete. Call again with
    /// the same leading bytes after `Pending`.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(framing) = &mut this.framing else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if framing.body_left == 0 {
            let len = buf.len().min(MAX_FRAME);
            StatusCodec::default().encode(Marker::Frame(len), &mut framing.marker)?;
            framing.body_left = len;
        }
        ready!(poll_write_all(&mut this.inner, cx, &mut framing.marker))?;
        let len = buf.len().min(framing.body_left);
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..len]))?;
        framing.body_left -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx)
    }
}

/// Writes all of `bytes` (advancing past what was written).
fn poll_write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    cx: &mut Context<'_>,
    bytes: &mut BytesMut,
) -> Poll<io::Result<()>> {
    while !bytes.is_empty() {
        let n = ready!(Pin::new(&mut *writer).poll_write(cx, bytes))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        bytes.advance(n);
    }
    Poll::Ready(Ok(()))
}

/// Reads a framed answer: copies the payload to `output` (flushing after each
/// frame) and returns the outcome from the trailer. An answer that stops before its
/// trailer is a failure. Like a failure's reason, a success is only over at the end
/// of the stream (or after [`MAX_REASON`] more bytes).
pub async fn read_answer<R, W>(reader: &mut R, output: &mut W) -> io::Result<Outcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut answer = FramedRead::with_capacity(&mut *reader, StatusCodec::default(), READ_CAPACITY);
    while let Some(part) = answer.next().await {
        match part? {
            Part::Payload(bytes) => {
                output.write_all(&bytes).await?;
                if answer.decoder().between_frames() {
                    output.flush().await?;
                }
            }
            Part::End(Outcome::Success) => {
                let rest = MAX_REASON.saturating_sub(answer.read_buffer().len());
                let mut rest = answer.into_inner().take(rest as u64);
                tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
                return Ok(Outcome::Success);
            }
            Part::End(failure) => return Ok(failure),
        }
    }
    // The codec ends every answer with a `Part::End`, even a cut one.
    Ok(Outcome::Failure(CUT_SHORT.into()))
}

/// The payload of a `P+status` answer as a plain byte stream: the guest's bytes, then
/// EOF after a success trailer, or an error carrying the reason after a failure (or
/// an answer cut short). Cells that dial read their remote cells through this, so a
/// remote failure reaches them as a failed read, not as a clean end.
pub struct Deframed<R>(StreamReader<Payloads<R>, Bytes>);

impl<R: AsyncRead + Unpin> Deframed<R> {
    /// Reads the answer on `inner`.
    pub fn new(inner: R) -> Self {
        Self(StreamReader::new(Payloads {
            parts: FramedRead::new(inner, StatusCodec::default()),
            end: None,
        }))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Deframed<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

/// An answer's payload parts, ending as its outcome says: a success ends the
/// stream, a failure is an error (every time it is polled again).
struct Payloads<R> {
    parts: FramedRead<R, StatusCodec>,
    /// The outcome, once the trailer (or the end of the stream) was read.
    end: Option<Outcome>,
}

impl<R: AsyncRead + Unpin> Stream for Payloads<R> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &this.end {
                Some(Outcome::Success) => return Poll::Ready(None),
                Some(Outcome::Failure(reason)) => {
                    let error = io::Error::other(format!("the remote cell failed: {reason}"));
                    return Poll::Ready(Some(Err(error)));
                }
                None => {}
            }
            match ready!(this.parts.poll_next_unpin(cx)) {
                Some(Ok(Part::Payload(bytes))) => return Poll::Ready(Some(Ok(bytes))),
                Some(Ok(Part::End(outcome))) => this.end = Some(outcome),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.end = Some(Outcome::Failure(CUT_SHORT.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a node writes for `chunks` (one write each), ended with `outcome`
    /// if given.
    async fn answer(chunks: &[&[u8]], outcome: Option<&Outcome>) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut writer = AnswerWriter::new(&mut wire, true);
        for chunk in chunks {
            writer.write_all(chunk).await.unwrap();
        }
        if let Some(outcome) = outcome {
            writer.finish(outcome).await.unwrap();
        }
        wire
    }

    #[tokio::test]
    async fn the_wire_format_is_exact() {
        let wire = answer(&[b"hi", b"!"], Some(&Outcome::Failure("no\nmore".into()))).await;
        assert_eq!(
            wire,
            [
                &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 1, b'!', 0, 0, 0, 0, 1][..],
                b"no"
            ]
            .concat()
        );
        assert_eq!(answer(&[], Some(&Outcome::Success)).await, [0, 0, 0, 0, 0]);
        // A write larger than a frame is cut into frames of at most 1 MiB.
        let big = vec![7u8; MAX_FRAME + 3];
        let wire = answer(&[&big], None).await;
        assert_eq!(wire[..4], (MAX_FRAME as u32).to_be_bytes());
        assert_eq!(wire[4 + MAX_FRAME..8 + MAX_FRAME], [0, 0, 0, 3]);
        assert_eq!(wire.len(), big.len() + 8);
    }

    #[tokio::test]
    async fn answers_round_trip() {
        let failure = Outcome::Failure("trapped: unreachable\nbacktrace".into());
        let wire = answer(&[b"hello ", b"world"], Some(&failure)).await;
        let mut payload = Vec::new();
        let outcome = read_answer(&mut &wire[..], &mut payload).await.unwrap();
        assert_eq!(payload, b"hello world");
        assert_eq!(outcome, Outcome::Failure("trapped: unreachable".into()));

        let wire = [0u8, 0, 0, 0, 0];
        let mut payload = Vec::new();
        assert_eq!(
            read_answer(&mut &wire[..], &mut payload).await.unwrap(),
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn answers_decode_alike_however_the_stream_splits_them() {
        // One byte per read: every decoder state meets a short buffer.
        let failure = Outcome::Failure("exited with status 1".into());
        let wire = answer(&[b"hello ", b"world"], Some(&failure)).await;
        let (mut near, mut far) = tokio::io::duplex(1);
        let feed = tokio::spawn(async move {
            near.write_all(&wire).await.unwrap();
        });
        let mut payload = Vec::new();
        let outcome = read_answer(&mut far, &mut payload).await.unwrap();
        feed.await.unwrap();
        assert_eq!((payload, outcome), (b"hello world".to_vec(), failure));
    }

    #[tokio::test]
    async fn a_cut_answer_is_a_failure() {
        for wire in [
            &b""[..],
            &[0, 0, 0, 5, b'a'][..],
            &[0, 0, 0, 1, b'a'][..],
            &[0, 0, 0, 0][..],
        ] {
            let outcome = read_answer(&mut &wire[..], &mut Vec::new()).await.unwrap();
            assert!(
                matches!(outcome, Outcome::Failure(_)),
                "{wire:?} gave {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn deframed_answers_read_as_bytes_then_end_or_error() {
        let wire = answer(&[b"hello ", b"world"], None).await;
        let ok = answer(&[b"hello ", b"world"], Some(&Outcome::Success)).await;
        let mut read = Vec::new();
        Deframed::new(&ok[..]).read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"hello world");

        let failure = Outcome::Failure("trapped: unreachable".into());
        let failed = answer(&[b"hello ", b"world"], Some(&failure)).await;
        let mut deframed = Deframed::new(&failed[..]);
        let mut read = Vec::new();
        let error = deframed.read_to_end(&mut read).await.unwrap_err();
        assert_eq!(read, b"hello world", "the payload comes before the failure");
        assert!(
            error.to_string().contains("trapped: unreachable"),
            "{error}"
        );

        for cut in [&wire[..3], &wire[..7], &wire[..]] {
            let error = Deframed::new(cut)
                .read_to_end(&mut Vec::new())
                .await
                .unwrap_err();
            assert!(error.to_string().contains("without an outcome"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_long_reason_is_cut_at_the_cap() {
        // A peer may send any reason; neither reader keeps more than the cap.
        let mut wire = vec![0, 0, 0, 0, 1];
        wire.extend(std::iter::repeat_n(b'x', 5000));
        let error = Deframed::new(&wire[..])
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        let reason = error.to_string();
        let reason = reason.trim_start_matches("the remote cell failed: ");
        assert_eq!(reason.len(), MAX_REASON);
        let outcome = read_answer(&mut &wire[..], &mut Vec::new()).await.unwrap();
        assert_eq!(outcome, Outcome::Failure("x".repeat(MAX_REASON)));
        // And the node never sends more than the cap, cut at a character boundary.
        let long = Outcome::Failure(format!("x{}", "é".repeat(MAX_REASON)));
        let wire = answer(&[], Some(&long)).await;
        assert_eq!(wire.len(), 5 + MAX_REASON - 1);
    }

    #[tokio::test]
    async fn deframed_reads_fill_a_caller_buffer_in_pieces() {
        let data = (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>();
        let wire = answer(&[&data], Some(&Outcome::Success)).await;
        let mut deframed = Deframed::new(&wire[..]);
        let mut read = Vec::new();
        let mut chunk = [0u8; 333];
        loop {
            let n = deframed.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(read, data);
    }

    #[tokio::test]
    async fn a_plain_answer_closes_on_success_only() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut writer = AnswerWriter::new(near, false);
        writer.write_all(b"raw").await.unwrap();
        writer
            .finish(&Outcome::Failure("nope".into()))
            .await
            .unwrap();
        assert!(
            !writer.is_closed(),
            "a failed plain stream is left to be reset"
        );
        writer.finish(&Outcome::Success).await.unwrap();
        assert!(writer.is_closed());
        let mut read = Vec::new();
        far.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"raw", "no framing on a plain stream");
    }

    #[test]
    fn protocol_variants() {
        let echo = StreamProtocol::new("/ww/echo/0.1.0");
        let framed = status_variant(&echo);
        assert_eq!(framed.as_ref(), "/ww/echo/0.1.0+status");
        assert_eq!(parse(&framed), ("/ww/echo/0.1.0", Variant::Status));
        assert_eq!(parse(&echo), ("/ww/echo/0.1.0", Variant::Plain));
        let call = call_variant(&echo);
        assert_eq!(call.as_ref(), "/ww/echo/0.1.0+call");
        assert_eq!(parse(&call), ("/ww/echo/0.1.0", Variant::Call));
        assert!(Variant::Call.is_framed() && Variant::Status.is_framed());
        assert!(!Variant::Plain.is_framed());
        assert_eq!(offer(&echo, Caller::Peer), [framed.clone(), echo.clone()]);
        assert_eq!(offer(&echo, Caller::Cell), [call, framed, echo]);
    }

    #[tokio::test]
    async fn call_headers_round_trip() {
        let headers = [
            CallHeader {
                hops: 7,
                deadline: None,
            },
            CallHeader {
                hops: 0,
                deadline: Some(Duration::from_millis(1500)),
            },
            CallHeader {
                hops: 255,
                deadline: Some(Duration::ZERO),
            },
        ];
        for header in headers {
            let mut wire = Vec::new();
            header.write(&mut wire).await.unwrap();
            wire.extend_from_slice(b"request");
            let mut reader = &wire[..];
            assert_eq!(CallHeader::read(&mut reader).await.unwrap(), header);
            assert_eq!(
                reader,
                b"request",
                "the header is exactly {} bytes",
                CallHeader::LEN
            );
        }
        assert_eq!(
            CallHeader {
                hops: 1,
                deadline: None
            }
            .encode(),
            [1, 0xff, 0xff, 0xff, 0xff]
        );
        // A deadline too long for the wire stays a deadline, not "none".
        let long = CallHeader {
            hops: 1,
            deadline: Some(Duration::from_secs(u64::MAX / 4)),
        };
        let decoded = CallHeader::decode(long.encode());
        assert_eq!(
            decoded.deadline,
            Some(Duration::from_millis(u64::from(u32::MAX - 1)))
        );
        // A request cut inside its header is an error.
        assert!(CallHeader::read(&mut &[3u8, 0, 0][..]).await.is_err());
    }
}
