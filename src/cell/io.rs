//! Byte plumbing between a peer stream and a guest: the output half that closes
//! gracefully, and the guest's stdout/stderr turned into log lines.
//!
//! The input half needs nothing of ours: wasmtime-wasi's `AsyncReadStream` reads the
//! peer stream in a task of its own through a one-slot channel, so a guest that stops
//! reading stops the reads from the peer (and yamux's window then stops the peer).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::AsyncWriteStream;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes a guest may have written to the peer and not yet flushed. Also the most a
/// single `check-write` permits; the writer task drains it into the peer stream.
pub const OUTPUT_BUDGET: usize = 64 * 1024;

/// The output half of a peer stream as a `wasi:io` output stream.
///
/// Writes go through wasmtime-wasi's `AsyncWriteStream` (a task that drains a bounded
/// budget into the stream, so a peer that stops reading stalls the guest). Unlike a
/// plain `AsyncWriteStream`, cancelling this stream — the guest dropping it, or the
/// host finishing a successful instance — flushes what was written and then *closes*
/// the write side, which the peer reads as EOF. Merely dropping it does not: the peer
/// stream is then dropped, which yamux turns into a reset.
pub struct PeerOutputStream {
    inner: AsyncWriteStream,
    close: Arc<AtomicBool>,
}

impl PeerOutputStream {
    /// Adapts `writer`, the write half of a peer stream.
    pub fn new<W: AsyncWrite + Send + Unpin + 'static>(writer: W) -> Self {
        let close = Arc::new(AtomicBool::new(false));
        let writer = CloseOnFlush { inner: writer, close: close.clone(), closed: false };
        Self { inner: AsyncWriteStream::new(OUTPUT_BUDGET, writer), close }
    }

    /// Flushes everything written so far and closes the write side. Errors mean the
    /// peer is gone; they are reported to the caller, who can only log them.
    pub async fn close(&mut self) -> Result<(), StreamError> {
        self.close.store(true, Ordering::Release);
        self.inner.flush()?;
        match self.inner.write_ready().await {
            Ok(_) | Err(StreamError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PeerOutputStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        if let Err(error) = self.close().await {
            tracing::debug!(%error, "closing the peer stream failed");
        }
        self.inner.cancel().await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PeerOutputStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

/// A writer whose flush also shuts it down once `close` is set. This is how
/// [`PeerOutputStream`] gets a graceful close through `AsyncWriteStream`, whose worker
/// owns the writer and only ever writes and flushes.
struct CloseOnFlush<W> {
    inner: W,
    close: Arc<AtomicBool>,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CloseOnFlush<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if self.close.load(Ordering::Acquire) && !self.closed {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.closed = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Longest log line kept from a guest; the rest of a longer line is cut.
pub const MAX_LOG_LINE: usize = 4096;

/// A guest's stdout or stderr: every line becomes one `tracing` event in the
/// stream's span (which names the peer and the protocol). Memory is bounded by
/// [`MAX_LOG_LINE`]; nothing is queued.
#[derive(Clone, Copy)]
pub struct GuestLog {
    /// `"stdout"` or `"stderr"`.
    pub name: &'static str,
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.name))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.name))
    }
}

/// Splits written bytes into lines and logs each one.
struct LineLogger {
    name: &'static str,
    line: Vec<u8>,
    truncated: bool,
}

impl LineLogger {
    fn new(name: &'static str) -> Self {
        Self { name, line: Vec::new(), truncated: false }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_LINE - self.line.len();
        self.truncated |= bytes.len() > room;
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        let cut = if self.truncated { " [cut]" } else { "" };
        tracing::info!(target: "ww::guest", stream = self.name, "{line}{cut}");
        self.line.clear();
        self.truncated = false;
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LOG_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineLogger {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
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
        let mut output = PeerOutputStream::new(near);
        output.write(Bytes::from_static(b"hello")).unwrap();
        timeout(Duration::from_secs(5), output.close()).await.unwrap().unwrap();
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), far.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn a_reader_that_stops_stalls_the_writer() {
        // The duplex holds 16 bytes; the budget is 64 KiB. Once both are full,
        // check-write must report no room instead of buffering more.
        let (near, _far) = tokio::io::duplex(16);
        let mut output = PeerOutputStream::new(near);
        output.write(Bytes::from(vec![0u8; OUTPUT_BUDGET])).unwrap();
        let stalled = timeout(Duration::from_millis(200), output.write_ready()).await;
        assert!(stalled.is_err(), "write_ready must wait while the peer does not read");
        assert_eq!(output.check_write().unwrap(), 0);
    }

    #[test]
    fn log_lines_are_bounded() {
        let mut logger = LineLogger::new("stdout");
        logger.push(&vec![b'x'; 3 * MAX_LOG_LINE]);
        assert_eq!(logger.line.len(), MAX_LOG_LINE);
        assert!(logger.truncated);
        logger.push(b"\nnext");
        assert_eq!(logger.line, b"next");
        assert!(!logger.truncated);
    }
}
