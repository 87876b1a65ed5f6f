//! [`PeerOutputStream`]: the guest's `wasi:io` output stream onto a [`PeerWriter`],
//! with its budget (`OUTPUT_BUDGET`) and its close rule.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncWrite as _;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::PeerWriter;

/// Bytes a guest may have written to the peer and not yet flushed. Also the most a
/// single `check-write` permits; the writer task drains it into the peer stream.
pub const OUTPUT_BUDGET: usize = 64 * 1024;

/// The output half of a peer stream as a `wasi:io` output stream, written in the task
/// that runs the guest.
///
/// `write` hands the bytes to the stream at once when the transport takes them (the
/// usual case: yamux buffers up to its window) and keeps the rest, at most
/// `OUTPUT_BUDGET`, for the guest's next `write`, `flush`, `check-write` or wait on
/// the stream's pollable — the `wasi:io` contract, under which bytes are only sure to
/// leave after a flush the guest waited for. A peer that stops reading therefore
/// stalls the guest, and no task or channel per stream is needed (wasmtime-wasi's
/// `AsyncWriteStream` spawns one). When the guest drops it, what was written is
/// flushed and — on a plain stream — the write side is closed at once, so the peer
/// reads EOF even if the guest keeps running. A `+status` stream is ended by the host
/// after `run` returns, with its trailer.
pub struct PeerOutputStream {
    writer: PeerWriter,
    /// The guest asked for a flush that has not completed.
    flushing: bool,
    /// The stream failed and the guest was told.
    closed: bool,
}

impl PeerOutputStream {
    /// A `wasi:io` output stream writing to `writer`.
    pub fn new(writer: PeerWriter) -> Self {
        Self {
            writer,
            flushing: false,
            closed: false,
        }
    }

    /// Pushes pending bytes and completes a requested flush, as far as the stream
    /// allows without waiting; `Ready` when both are done (or failed).
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.writer.poll_push(cx));
        if self.flushing {
            match Pin::new(&mut self.writer).poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => self.flushing = false,
                Poll::Ready(Err(error)) => self.writer.set_failure(error),
            }
        }
        Poll::Ready(())
    }

    /// Drives without waiting.
    fn drive_now(&mut self) {
        let _ = self.poll_drive(&mut Context::from_waker(std::task::Waker::noop()));
    }

    /// The failure to report, if any: the error once, then `closed`.
    fn status(&mut self) -> Result<(), StreamError> {
        if let Some(error) = self.writer.take_failure() {
            self.closed = true;
            return Err(StreamError::LastOperationFailed(error.into()));
        }
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    /// Whether the guest may write now (or must hear about a failure).
    fn writable(&self) -> bool {
        let failed = self.closed || self.writer.has_failed();
        failed || (!self.flushing && self.writer.pending() < OUTPUT_BUDGET)
    }
}

/// Waits until everything written to `output` reached the peer stream.
pub async fn flush(output: &mut dyn OutputStream) -> Result<(), StreamError> {
    output.flush()?;
    match output.write_ready().await {
        Ok(_) | Err(StreamError::Closed) => Ok(()),
        Err(e) => Err(e),
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PeerOutputStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.status()?;
        if self.flushing || bytes.len() > OUTPUT_BUDGET - self.writer.pending() {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "write of {} bytes exceeds what check-write permitted",
                bytes.len()
            )));
        }
        self.writer.queue(&bytes);
        self.drive_now();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.status()?;
        self.flushing = true;
        self.drive_now();
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.drive_now();
        self.status()?;
        if self.flushing {
            return Ok(0);
        }
        Ok(OUTPUT_BUDGET - self.writer.pending())
    }

    async fn cancel(&mut self) {
        let flushed = flush(self).await;
        if flushed.is_ok()
            && !self.writer.is_framed()
            && let Err(error) = self.writer.close().await
        {
            tracing::debug!(%error, "closing the peer stream failed");
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PeerOutputStream {
    async fn ready(&mut self) {
        // Ready when `check-write` would permit a byte (or report a failure); a
        // `Pending` drive has registered this task's waker with the stream.
        poll_fn(|cx| {
            let _ = self.poll_drive(cx);
            if self.writable() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::time::timeout;

    #[tokio::test]
    async fn close_flushes_then_sends_eof() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut output = PeerOutputStream::new(PeerWriter::new(near, false));
        output.write(Bytes::from_static(b"hello")).unwrap();
        timeout(Duration::from_secs(5), output.cancel())
            .await
            .unwrap();
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), far.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn a_reader_that_stops_stalls_the_writer() {
        // The duplex holds 16 bytes; the budget is 64 KiB. Once both are full,
        // check-write must report no room instead of buffering more.
        let (near, _far) = tokio::io::duplex(16);
        let mut output = PeerOutputStream::new(PeerWriter::new(near, false));
        output.write(Bytes::from(vec![0u8; OUTPUT_BUDGET])).unwrap();
        // What the duplex took frees that much budget, once.
        let room = output.check_write().unwrap();
        assert!(
            room <= 16,
            "only what the stream took is free again ({room})"
        );
        output.write(Bytes::from(vec![0u8; room])).unwrap();
        let stalled = timeout(Duration::from_millis(200), output.write_ready()).await;
        assert!(
            stalled.is_err(),
            "write_ready must wait while the peer does not read"
        );
        assert_eq!(output.check_write().unwrap(), 0);
    }
}
