//! The peer's side of a `P+status` answer: [`read_answer`] copies the payload out and
//! returns the outcome; [`Deframed`] turns the answer into a plain byte stream whose
//! end (EOF or an error) says how the remote cell ended.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

use super::codec::{Part, StatusCodec};
use super::{CUT_SHORT, MAX_REASON, Outcome};

/// How much [`read_answer`] reads from the stream at a time.
const READ_CAPACITY: usize = 64 * 1024;

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
    use crate::net::status::writer::tests::answer;

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
}
