//! Byte plumbing between a peer stream and a guest, as `wasi:io` streams: the output
//! half that closes gracefully, and the guest's stdout/stderr turned into log lines.
//! What goes on the wire around the guest's bytes (`+status` frames, the outcome
//! trailer) is `net::status`'s business: [`PeerWriter`] writes through its
//! [`AnswerWriter`].
//!
//! The input half ([`PeerInputStream`]) reads the peer stream in the guest's own task,
//! only when the guest asks, so a guest that stops reading stops the reads from the
//! peer (and yamux's window then stops the peer) without a task of its own per stream.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError};

use super::meter::Traffic;
use crate::net::status::{AnswerWriter, Outcome};

/// Bytes a guest may have written to the peer and not yet flushed. Also the most a
/// single `check-write` permits; the writer task drains it into the peer stream.
pub const OUTPUT_BUDGET: usize = 64 * 1024;

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
    /// The guest's bytes not yet taken by the stream (see [`PeerOutputStream`]).
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
    /// `Ready` once none are left or pushing failed (kept for [`Self::take_failure`]).
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
    fn queue(&self, bytes: &[u8]) {
        self.state().pending.extend_from_slice(bytes);
    }

    /// Guest bytes not yet taken by the stream.
    fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Why pushing failed, once; pending bytes are dropped with it.
    fn take_failure(&self) -> Option<io::Error> {
        let mut state = self.state();
        let failure = state.failed.take();
        if failure.is_some() {
            state.pending.clear();
        }
        failure
    }

    /// The stream's traffic counters (shared with its reader, see [`MeteredReader`]).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.state().traffic.clone()
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

/// The read half of a peer stream, counting what it reads into [`Traffic`].
pub struct MeteredReader<R> {
    inner: R,
    traffic: Arc<Traffic>,
}

impl<R> MeteredReader<R> {
    /// Counts `inner`'s bytes into `traffic`.
    pub fn new(inner: R, traffic: Arc<Traffic>) -> Self {
        Self { inner, traffic }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MeteredReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.traffic.received(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

/// Most bytes one read from the peer stream may bring in.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read ahead when the guest waits without saying how much it wants.
const READ_AHEAD: usize = 16 * 1024;

/// The read half of a stream as a `wasi:io` input stream, read in the task that runs
/// the guest: `ready` waits for bytes (or the end) and `read` hands them out, trying
/// the stream once more without waiting when nothing is buffered. Unlike
/// wasmtime-wasi's `AsyncReadStream` it needs no task and no channel per stream, so a
/// stream costs no cross-thread wake-ups beyond the transport's own.
pub struct PeerInputStream<R> {
    reader: R,
    /// Read from the stream, not yet taken by the guest.
    buffer: BytesMut,
    /// How much the guest last asked for, so `ready` reads ahead about as much.
    wanted: usize,
    /// Set once the stream ended or failed; reported after the buffer is drained.
    end: Option<Result<(), io::Error>>,
    /// The write half of the same stream, whose pending bytes a wait for input also
    /// pushes (a guest that writes, then waits for the answer, needs no flush).
    output: Option<PeerWriter>,
}

impl<R: AsyncRead + Send + Unpin + 'static> PeerInputStream<R> {
    /// A `wasi:io` input stream reading `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: BytesMut::new(),
            wanted: READ_AHEAD,
            end: None,
            output: None,
        }
    }

    /// Also pushes `output`'s pending bytes whenever the guest waits for input.
    pub fn driving(mut self, output: PeerWriter) -> Self {
        self.output = Some(output);
        self
    }

    /// Reads once into the buffer; `Ready` once bytes arrived or the stream ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.buffer.is_empty() || self.end.is_some() {
            return Poll::Ready(());
        }
        self.buffer.reserve(self.wanted.clamp(1, READ_CHUNK));
        // tokio-util reads into the reserved (uninitialised) capacity and sets the length.
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.reader), cx, &mut self.buffer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => {
                self.end = Some(Err(error));
                Poll::Ready(())
            }
            Poll::Ready(Ok(0)) => {
                self.end = Some(Ok(()));
                Poll::Ready(())
            }
            Poll::Ready(Ok(_)) => Poll::Ready(()),
        }
    }
}

impl<R: AsyncRead + Send + Unpin + 'static> InputStream for PeerInputStream<R> {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        self.wanted = size;
        if self.buffer.is_empty() && self.end.is_none() {
            // Whatever already arrived, without waiting (`ready` registers the real
            // waker when the guest waits).
            let _ = self.poll_fill(&mut Context::from_waker(std::task::Waker::noop()));
        }
        if !self.buffer.is_empty() {
            let n = size.min(self.buffer.len());
            return Ok(self.buffer.split_to(n).freeze());
        }
        match &mut self.end {
            None => Ok(Bytes::new()),
            Some(Ok(())) => Err(StreamError::Closed),
            Some(Err(error)) => {
                let error = std::mem::replace(error, io::ErrorKind::BrokenPipe.into());
                Err(StreamError::LastOperationFailed(error.into()))
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl<R: AsyncRead + Send + Unpin + 'static> Pollable for PeerInputStream<R> {
    async fn ready(&mut self) {
        poll_fn(|cx| {
            if let Some(output) = &self.output {
                let _ = output.poll_push(cx);
            }
            self.poll_fill(cx)
        })
        .await
    }
}

/// Makes a reader `Sync` (as wasmtime-wasi's stdin adapter wants) by only ever
/// handing out exclusive access to it; a libp2p stream is `Send` but not `Sync`.
pub struct SyncReader<R>(sync_wrapper::SyncWrapper<R>);

impl<R> SyncReader<R> {
    /// Wraps `reader`.
    pub fn new(reader: R) -> Self {
        Self(sync_wrapper::SyncWrapper::new(reader))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SyncReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.get_mut()).poll_read(cx, buf)
    }
}

/// The output half of a peer stream as a `wasi:io` output stream, written in the task
/// that runs the guest.
///
/// `write` hands the bytes to the stream at once when the transport takes them (the
/// usual case: yamux buffers up to its window) and keeps the rest, at most
/// [`OUTPUT_BUDGET`], for the guest's next `write`, `flush`, `check-write` or wait on
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
                Poll::Ready(Err(error)) => self.writer.state().failed = Some(error),
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
        let failed = self.closed || self.writer.state().failed.is_some();
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

/// Longest log line kept from a guest; the rest of a longer line is cut.
pub const MAX_LOG_LINE: usize = 4096;

/// A guest's stdout or stderr: every line becomes one `tracing` event in the
/// stream's span (which names the peer and the protocol). Memory is bounded by
/// [`MAX_LOG_LINE`]; nothing is queued. The last non-empty line is kept: a guest that
/// fails says why on stderr, and that line becomes the failure's reason.
#[derive(Clone)]
pub struct GuestLog {
    /// `"stdout"` or `"stderr"`.
    name: &'static str,
    /// The last non-empty line written, shared by every stream handed out.
    last_line: Arc<Mutex<Option<String>>>,
}

impl GuestLog {
    /// A log for the guest's stream `name` (`"stdout"` or `"stderr"`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            last_line: Arc::default(),
        }
    }

    /// The last non-empty line the guest wrote (a line it left unfinished counts
    /// once the stream is dropped), cut to [`MAX_LOG_LINE`].
    pub fn last_line(&self) -> Option<String> {
        self.last_line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self))
    }
}

/// Splits written bytes into lines and logs each one.
struct LineLogger {
    name: &'static str,
    line: Vec<u8>,
    truncated: bool,
    last_line: Arc<Mutex<Option<String>>>,
}

impl LineLogger {
    fn new(log: &GuestLog) -> Self {
        Self {
            name: log.name,
            line: Vec::new(),
            truncated: false,
            last_line: log.last_line.clone(),
        }
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
        if !line.trim().is_empty() {
            let mut last = self
                .last_line
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *last = Some(line.to_string());
        }
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
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

    #[test]
    fn log_lines_are_bounded() {
        let mut logger = LineLogger::new(&GuestLog::new("stdout"));
        logger.push(&vec![b'x'; 3 * MAX_LOG_LINE]);
        assert_eq!(logger.line.len(), MAX_LOG_LINE);
        assert!(logger.truncated);
        logger.push(b"\nnext");
        assert_eq!(logger.line, b"next");
        assert!(!logger.truncated);
    }

    #[test]
    fn the_last_line_is_kept_for_the_reason() {
        let log = GuestLog::new("stderr");
        let mut logger = LineLogger::new(&log);
        logger.push(b"first\nsecond\r\n\n");
        assert_eq!(log.last_line().as_deref(), Some("second"));
        // Another stream of the same log (a second get-stderr) shares it; an
        // unfinished line counts once its stream is dropped.
        let mut again = LineLogger::new(&log);
        again.push(b"dial failed: not-allowed");
        assert_eq!(log.last_line().as_deref(), Some("second"));
        drop(again);
        assert_eq!(log.last_line().as_deref(), Some("dial failed: not-allowed"));
    }
}
