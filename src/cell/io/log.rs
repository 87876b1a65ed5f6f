//! The guest's stdout and stderr ([`GuestLog`]): each line a `tracing` event, the
//! last one kept as a failure's reason.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest log line kept from a guest; the rest of a longer line is cut.
pub const MAX_LOG_LINE: usize = 4096;

/// A guest's stdout or stderr: every line becomes one `tracing` event in the
/// stream's span (which names the peer and the protocol). Memory is bounded by
/// `MAX_LOG_LINE`; nothing is queued. The last non-empty line is kept: a guest that
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
    /// once the stream is dropped), cut to `MAX_LOG_LINE`.
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
