//! The node's side of a served cell stream: [`AnswerWriter`] passes the guest's bytes
//! through, framed on a `+status`/`+call` stream, and ends the stream as the
//! instance's outcome says (see "Why the writer is poll-based" in [`super`]).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::codec::Encoder as _;

use super::Outcome;
use super::codec::{Marker, StatusCodec};

/// Largest frame a node writes.
const MAX_FRAME: usize = 1 << 20;

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The bytes a node writes for `chunks` (one write each), ended with `outcome`
    /// if given.
    pub(in crate::net::status) async fn answer(
        chunks: &[&[u8]],
        outcome: Option<&Outcome>,
    ) -> Vec<u8> {
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
}
