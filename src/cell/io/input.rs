//! The read half of a peer stream: [`MeteredReader`] counts its bytes,
//! [`PeerInputStream`] hands them to the guest as a `wasi:io` input stream, and
//! [`SyncReader`] makes it fit wasmtime-wasi's stdin.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::AsyncRead;
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError};

use super::PeerWriter;
use crate::cell::meter::Traffic;

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
/// Most bytes a stream's first read may bring in; each read that comes back full
/// doubles it, up to [`READ_CHUNK`].
const FIRST_READ: usize = 4 * 1024;
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
    /// The most one read may bring in now: small at first, so a stream that carries a
    /// few bytes does not pay for a large buffer (a read zeroes the space it is given,
    /// since the transport's `AsyncRead` wants initialised bytes).
    read_size: usize,
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
            read_size: FIRST_READ,
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
        let size = self.wanted.clamp(1, self.read_size);
        self.buffer.reserve(size);
        // tokio-util reads into the reserved capacity, at most `size` bytes of it, and
        // sets the length.
        let mut buffer = (&mut self.buffer).limit(size);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.reader), cx, &mut buffer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => {
                self.end = Some(Err(error));
                Poll::Ready(())
            }
            Poll::Ready(Ok(0)) => {
                self.end = Some(Ok(()));
                Poll::Ready(())
            }
            Poll::Ready(Ok(read)) => {
                if read == size {
                    self.read_size = (self.read_size * 2).min(READ_CHUNK);
                }
                Poll::Ready(())
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_start_small_and_double_while_they_come_back_full() {
        let sent: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let mut input = PeerInputStream::new(std::io::Cursor::new(sent.clone()));
        let (mut received, mut sizes) = (Vec::new(), Vec::new());
        loop {
            input.ready().await;
            match input.read(READ_CHUNK) {
                Ok(bytes) => {
                    sizes.push(bytes.len());
                    received.extend_from_slice(&bytes);
                }
                Err(StreamError::Closed) => break,
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(received, sent);
        let kib: Vec<usize> = sizes.iter().map(|size| size / 1024).collect();
        assert_eq!(kib[..6], [4, 8, 16, 32, 64, 64]);
    }
}
