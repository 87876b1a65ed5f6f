//! How a node tells a peer how the instance behind a stream ended.
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

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use libp2p::StreamProtocol;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Appended to a cell's protocol ID to ask for the framed answer with a trailer.
pub const SUFFIX: &str = "+status";
/// Appended to a cell's protocol ID by a cell that dials: `+status` with a
/// [`CallHeader`] in front of the request.
pub const CALL_SUFFIX: &str = "+call";
/// Longest reason a trailer carries; longer ones are cut.
pub const MAX_REASON: usize = 1024;
/// Largest frame a node writes.
const MAX_FRAME: usize = 1 << 20;

/// How an instance ended, as the peer learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The instance finished cleanly.
    Success,
    /// The instance failed; the reason is one line of text.
    Failure(String),
}

/// The status variant (`P+status`) of a cell protocol `P`.
pub fn status_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{SUFFIX}")).expect("starts with `/`")
}

/// The call variant (`P+call`) of a cell protocol `P`.
pub fn call_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{CALL_SUFFIX}")).expect("starts with `/`")
}

/// Splits a negotiated protocol into the cell protocol and whether the answer is
/// framed (the status or the call variant).
pub fn parse(protocol: &StreamProtocol) -> (&str, bool) {
    let name = protocol.as_ref();
    match name
        .strip_suffix(SUFFIX)
        .or_else(|| name.strip_suffix(CALL_SUFFIX))
    {
        Some(base) => (base, true),
        None => (name, false),
    }
}

/// Whether a negotiated protocol is a call variant, whose request starts with a
/// [`CallHeader`].
pub fn is_call(protocol: &StreamProtocol) -> bool {
    protocol.as_ref().ends_with(CALL_SUFFIX)
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
}

/// Encodes the `end` of an answer.
pub fn trailer(outcome: &Outcome) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0];
    match outcome {
        Outcome::Success => bytes.push(0),
        Outcome::Failure(reason) => {
            bytes.push(1);
            let line = reason.lines().next().unwrap_or("failed");
            let mut cut = line.len().min(MAX_REASON);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            bytes.extend_from_slice(&line.as_bytes()[..cut]);
        }
    }
    bytes
}

/// Framing state of a node's answer: turns each write into (part of) a frame.
#[derive(Debug, Default)]
pub struct Framer {
    header: [u8; 4],
    header_written: usize,
    body_left: usize,
}

impl Framer {
    /// Writes (part of) `buf` to `writer` as frame payload, starting a frame first
    /// when the previous one is complete. Follows the `poll_write` contract: call it
    /// again with the same leading bytes after `Pending`.
    pub fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut writer: Pin<&mut W>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.body_left == 0 {
            let len = buf.len().min(MAX_FRAME);
            self.header = (len as u32).to_be_bytes();
            self.header_written = 0;
            self.body_left = len;
        }
        while self.header_written < self.header.len() {
            let n = ready!(
                writer
                    .as_mut()
                    .poll_write(cx, &self.header[self.header_written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.header_written += n;
        }
        let len = buf.len().min(self.body_left);
        let n = ready!(writer.poll_write(cx, &buf[..len]))?;
        self.body_left -= n;
        Poll::Ready(Ok(n))
    }

    /// Whether the last frame was written completely, so a trailer may follow.
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0
    }
}

/// Reads a framed answer: copies the payload to `output` and returns the outcome
/// from the trailer. An answer that stops before its trailer is a failure.
pub async fn read_answer<R, W>(reader: &mut R, output: &mut W) -> io::Result<Outcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut header = [0u8; 4];
        if read_full(reader, &mut header).await? < header.len() {
            return Ok(Outcome::Failure(CUT_SHORT.into()));
        }
        let mut left = u32::from_be_bytes(header) as usize;
        if left == 0 {
            break;
        }
        while left > 0 {
            let want = left.min(buf.len());
            let n = reader.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(Outcome::Failure(CUT_SHORT.into()));
            }
            output.write_all(&buf[..n]).await?;
            left -= n;
        }
        output.flush().await?;
    }
    let mut code = [0u8; 1];
    if read_full(reader, &mut code).await? == 0 {
        return Ok(Outcome::Failure(CUT_SHORT.into()));
    }
    let mut reason = Vec::new();
    reader
        .take(MAX_REASON as u64)
        .read_to_end(&mut reason)
        .await?;
    Ok(match code[0] {
        0 => Outcome::Success,
        _ => Outcome::Failure(String::from_utf8_lossy(&reason).into_owned()),
    })
}

/// What a `P+status` answer that stops before its trailer means.
const CUT_SHORT: &str =
    "the stream ended without an outcome (the node aborted it, or the connection broke)";

/// The payload of a `P+status` answer as a plain byte stream: the guest's bytes, then
/// EOF after a success trailer, or an error carrying the reason after a failure (or
/// an answer cut short). Cells that dial read their remote cells through this, so a
/// remote failure reaches them as a failed read, not as a clean end.
pub struct Deframed<R> {
    inner: R,
    state: Deframe,
}

enum Deframe {
    /// Reading a frame's length.
    Header { bytes: [u8; 4], have: usize },
    /// Inside a frame.
    Payload { left: usize },
    /// Reading the trailer's code.
    Code,
    /// Reading a failure's reason to EOF.
    Reason(Vec<u8>),
    /// The answer is over: `None` a success, `Some` a failure with its reason.
    Over(Option<String>),
}

impl<R> Deframed<R> {
    /// Reads the answer on `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: Deframe::Header {
                bytes: [0; 4],
                have: 0,
            },
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Deframed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                Deframe::Header { bytes, have } => {
                    let mut buf = tokio::io::ReadBuf::new(&mut bytes[*have..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
                    let n = buf.filled().len();
                    if n == 0 {
                        this.state = Deframe::Over(Some(CUT_SHORT.into()));
                        continue;
                    }
                    *have += n;
                    if *have == bytes.len() {
                        this.state = match u32::from_be_bytes(*bytes) as usize {
                            0 => Deframe::Code,
                            left => Deframe::Payload { left },
                        };
                    }
                }
                Deframe::Payload { left } => {
                    if out.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    // Safe code only: the unfilled part is zeroed once (tokio tracks
                    // what is initialised, so later reads into it cost nothing).
                    let want = (*left).min(out.remaining());
                    let mut limited = tokio::io::ReadBuf::new(out.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                    let n = limited.filled().len();
                    if n == 0 {
                        this.state = Deframe::Over(Some(CUT_SHORT.into()));
                        continue;
                    }
                    out.advance(n);
                    *left -= n;
                    if *left == 0 {
                        this.state = Deframe::Header {
                            bytes: [0; 4],
                            have: 0,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                Deframe::Code => {
                    let mut code = [0u8; 1];
                    let mut buf = tokio::io::ReadBuf::new(&mut code);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
                    this.state = match buf.filled() {
                        [] => Deframe::Over(Some(CUT_SHORT.into())),
                        [0] => Deframe::Over(None),
                        _ => Deframe::Reason(Vec::new()),
                    };
                }
                Deframe::Reason(reason) => {
                    let mut chunk = [0u8; 256];
                    let room = (MAX_REASON - reason.len()).min(chunk.len());
                    let mut buf = tokio::io::ReadBuf::new(&mut chunk[..room]);
                    if room > 0 {
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
                    }
                    if buf.filled().is_empty() {
                        // The end of the stream, or the cap: what we have is the reason.
                        let text = String::from_utf8_lossy(reason).into_owned();
                        this.state = Deframe::Over(Some(text));
                        continue;
                    }
                    reason.extend_from_slice(buf.filled());
                }
                Deframe::Over(None) => return Poll::Ready(Ok(())),
                Deframe::Over(Some(reason)) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "the remote cell failed: {reason}"
                    ))));
                }
            }
        }
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn frame(framer: &mut Framer, out: &mut Vec<u8>, data: &[u8]) {
        let mut data = data;
        while !data.is_empty() {
            let n = poll_fn(|cx| framer.poll_write(Pin::new(&mut *out), cx, data))
                .await
                .unwrap();
            data = &data[n..];
        }
    }

    #[tokio::test]
    async fn answers_round_trip() {
        let mut framer = Framer::default();
        let mut wire = Vec::new();
        frame(&mut framer, &mut wire, b"hello ").await;
        frame(&mut framer, &mut wire, b"world").await;
        assert!(framer.at_boundary());
        wire.extend(trailer(&Outcome::Failure(
            "trapped: unreachable\nbacktrace".into(),
        )));
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
        let mut framer = Framer::default();
        let mut wire = Vec::new();
        frame(&mut framer, &mut wire, b"hello ").await;
        frame(&mut framer, &mut wire, b"world").await;
        let mut ok = wire.clone();
        ok.extend(trailer(&Outcome::Success));
        let mut read = Vec::new();
        Deframed::new(&ok[..]).read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"hello world");

        let mut failed = wire.clone();
        failed.extend(trailer(&Outcome::Failure("trapped: unreachable".into())));
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
    }

    #[tokio::test]
    async fn deframed_reads_fill_a_caller_buffer_in_pieces() {
        let mut framer = Framer::default();
        let mut wire = Vec::new();
        let data = (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>();
        frame(&mut framer, &mut wire, &data).await;
        wire.extend(trailer(&Outcome::Success));
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

    #[test]
    fn protocol_variants() {
        let echo = StreamProtocol::new("/ww/echo/0.1.0");
        let framed = status_variant(&echo);
        assert_eq!(framed.as_ref(), "/ww/echo/0.1.0+status");
        assert_eq!(parse(&framed), ("/ww/echo/0.1.0", true));
        assert_eq!(parse(&echo), ("/ww/echo/0.1.0", false));
        let call = call_variant(&echo);
        assert_eq!(call.as_ref(), "/ww/echo/0.1.0+call");
        assert_eq!(parse(&call), ("/ww/echo/0.1.0", true));
        assert!(is_call(&call) && !is_call(&framed) && !is_call(&echo));
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
            let mut wire = header.encode().to_vec();
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
