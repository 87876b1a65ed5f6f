//! [`PeerWriter`]: the write half of a peer stream, shared by the guest's output
//! stream and the host, which ends the stream as the instance's outcome says.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::AsyncWrite;

use crate::cell::meter::Traffic;
use crate::net::status::{AnswerWriter, Outcome};

/// The write half of a peer stream, shared by the guest's output stream (whose
/// worker task writes through it) and the host, which ends the stream when the
/// instance is over. The lock is only taken inside `poll_*` calls, never across an
/// `.await`, and the two users take turns: the host only writes once the guest's
/// output is flushed.
#[derive(Clone)]
pub struct PeerWriter(Arc<Mutex<WriterState>>);

struct WriterState {
    /// Frames the guest's bytes on a `+status` stream.
    writer: AnswerWriter<Pin<Box<dyn AsyncWrite + Send>>>,
    traffic: Arc<Traffic>,
    /// The guest's bytes not yet taken by the stream (see
    /// [`super::PeerOutputStream`]).
    pending: BytesMut,
    /// Why pushing `pending` failed, until the guest is told.
    failed: Option<io::Error>,
}

impl WriterState {
    /// Writes guest bytes (framed on a `+status` stream), counting them.
    fn poll_write_guest(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.writer).poll_write(cx, buf))?;
        self.traffic.sent(written);
        Poll::Ready(Ok(written))
    }
}

impl PeerWriter {
    /// Wraps the write half of a peer stream; `framed` for a `+status` stream.
    pub fn new<W: AsyncWrite + Send + 'static>(writer: W, framed: bool) -> Self {
        Self::with_traffic(writer, framed, Arc::default())
    }

    /// Like [`PeerWriter::new`], counting into existing traffic counters (a stream
    /// an instance dialed counts as that instance's traffic).
    pub fn with_traffic<W: AsyncWrite + Send + 'static>(
        writer: W,
        framed: bool,
        traffic: Arc<Traffic>,
    ) -> Self {
        let writer: Pin<Box<dyn AsyncWrite + Send>> = Box::pin(writer);
        Self(Arc::new(Mutex::new(WriterState {
            writer: AnswerWriter::new(writer, framed),
            traffic,
            pending: BytesMut::new(),
            failed: None,
        })))
    }

    /// Pushes the guest's pending bytes into the stream as far as it takes them;
    /// `Ready` once none are left or pushing failed (kept for `take_failure`).
    pub fn poll_push(&self, cx: &mut Context<'_>) -> Poll<()> {
        let state = &mut *self.state();
        while !state.pending.is_empty() && state.failed.is_none() {
            let pending = std::mem::take(&mut state.pending);
            let result = state.poll_write_guest(cx, &pending);
            state.pending = pending;
            match result {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => state.failed = Some(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    let _ = state.pending.split_to(n);
                }
                Poll::Ready(Err(error)) => state.failed = Some(error),
            }
        }
        Poll::Ready(())
    }

    /// Queues guest bytes behind those already pending.
    pub(super) fn queue(&self, bytes: &[u8]) {
        self.state().pending.extend_from_slice(bytes);
    }

    /// Guest bytes not yet taken by the stream.
    pub(super) fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Why pushing failed, once; pending bytes are dropped with it.
    pub(super) fn take_failure(&self) -> Option<io::Error> {
        let mut state = self.state();
        let failure = state.failed.take();
        if failure.is_some() {
            state.pending.clear();
        }
        failure
    }

    /// The stream's traffic counters (shared with its reader, see
    /// [`super::MeteredReader`]).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.state().traffic.clone()
    }

    /// Records why writing failed; the guest learns of it through
    /// [`Self::take_failure`].
    pub(super) fn set_failure(&self, error: io::Error) {
        self.state().failed = Some(error);
    }

    /// Whether writing failed and the guest has not been told yet.
    pub(super) fn has_failed(&self) -> bool {
        self.state().failed.is_some()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the guest's bytes are framed (a `+status` stream).
    pub fn is_framed(&self) -> bool {
        self.state().writer.is_framed()
    }

    /// Waits until the guest's pending bytes are in the stream and the stream is
    /// flushed (nothing to do once it is closed). A failure to push them is returned,
    /// and the bytes are dropped.
    pub async fn flush_pending(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_push(cx)).await;
        if let Some(error) = self.take_failure() {
            return Err(error);
        }
        poll_fn(|cx| {
            let mut state = self.state();
            if state.writer.is_closed() {
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut state.writer).poll_flush(cx)
        })
        .await
    }

    /// Closes the write side gracefully (the peer reads EOF). Idempotent.
    pub async fn close(&self) -> io::Result<()> {
        poll_fn(|cx| self.state().writer.poll_close(cx)).await
    }

    /// Ends the stream once the instance is over and its output flushed, as
    /// [`AnswerWriter::poll_finish`] does: a `+status` stream gets its trailer, then
    /// a graceful close; a plain stream is closed gracefully on success, and on
    /// failure dropping the last handle aborts it (a yamux reset). Returns an error
    /// if the stream could not be ended as intended; the caller then drops it, which
    /// aborts it.
    pub async fn end(&self, outcome: &Outcome) -> io::Result<()> {
        poll_fn(|cx| self.state().writer.poll_finish(cx, outcome)).await
    }
}

impl AsyncWrite for PeerWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state().poll_write_guest(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.state().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state().writer.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    use bytes::Bytes;
    use wasmtime_wasi::p2::OutputStream as _;

    use crate::cell::io::PeerOutputStream;

    #[tokio::test]
    async fn a_status_stream_ends_with_its_trailer() {
        let (near, mut far) = tokio::io::duplex(1024);
        let writer = PeerWriter::new(near, true);
        let mut output = PeerOutputStream::new(writer.clone());
        output.write(Bytes::from_static(b"partial")).unwrap();
        timeout(Duration::from_secs(5), output.cancel())
            .await
            .unwrap();
        drop(output);
        let failure = Outcome::Failure("exited with status 1".into());
        timeout(Duration::from_secs(5), writer.end(&failure))
            .await
            .unwrap()
            .unwrap();
        drop(writer);
        let mut payload = Vec::new();
        let outcome = crate::net::status::read_answer(&mut far, &mut payload)
            .await
            .unwrap();
        assert_eq!(payload, b"partial");
        assert_eq!(outcome, failure);
    }
}
