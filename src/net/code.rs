//! `/ww/code/1.0.0`: one node asks another for a component by its [`ContentId`].
//!
//! Like rust-libp2p's ping protocol, the wire is a few async functions over any
//! `AsyncRead + AsyncWrite` stream (a `libp2p::Stream`, or an in-memory pipe in
//! tests): [`serve`] (or [`read_request`] + [`send_answer`]) on the provider's side,
//! [`fetch`] and [`fetch_from_any`] on the requester's.
//!
//! # Wire
//! Every message is a frame: an unsigned varint length, then that many bytes (at most
//! [`MAX_FRAME`], 64 KiB).
//! ```text
//! requester → provider   frame(CID, binary: 0x01 0x55 0x12 0x20 <32-byte SHA-256>)
//! provider → requester   frame(0x01)                          not here; end of stream
//!                     or frame(0x00 ++ uvarint(size))         found: `size` bytes follow
//!                        frame(≤ 64 KiB) … totalling `size`   the component, then end
//! ```
//!
//! # What the requester trusts
//! Nothing but the hash. It refuses an announced size over its cap before reading a
//! byte of the component (so it never holds more than the cap, plus one frame in the
//! codec's buffer), refuses a provider that sends more than it announced or ends
//! early, gives up after a deadline, and checks the bytes against the CID before
//! returning them: a provider that lies is a [`FetchError::Mismatch`], not a
//! component.

use std::future::Future;
use std::io;
use std::time::Duration;

use asynchronous_codec::Framed;
use bytes::Bytes;
use futures::{AsyncRead, AsyncWrite, SinkExt as _, StreamExt as _};
use libp2p::StreamProtocol;
use unsigned_varint::codec::UviBytes;

use crate::content::{ContentId, ContentMismatch, ParseContentIdError, store};

/// The code-exchange protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/code/1.0.0");

/// The largest frame either side sends or accepts: the component travels in chunks
/// of this size.
pub const MAX_FRAME: usize = 64 << 10;

/// The largest request a provider reads: a CID of a raw SHA-256 block is 36 bytes.
const MAX_REQUEST: usize = 128;

/// First byte of an answer: the component follows.
const FOUND: u8 = 0x00;
/// First byte of an answer: the provider does not have it.
const NOT_HERE: u8 = 0x01;

/// What a requester accepts from one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The largest component accepted, in bytes.
    pub max_size: u64,
    /// How long one provider may take, from opening the stream to the last byte.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    /// The content store's default cap ([`store::DEFAULT_MAX_COMPONENT`], 64 MiB) and
    /// 60 s per provider (64 MiB at ~1 MB/s).
    fn default() -> Self {
        Self {
            max_size: store::DEFAULT_MAX_COMPONENT,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Why a fetch from one provider gave no component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The provider says it does not have the component.
    #[error("the provider does not have it")]
    NotFound,
    /// The provider announced a component bigger than the requester accepts.
    #[error("the provider announced {announced} bytes, over the cap of {max}")]
    TooLarge {
        /// The size the provider announced.
        announced: u64,
        /// The requester's cap.
        max: u64,
    },
    /// The provider sent more bytes than it announced.
    #[error("the provider sent more than the {announced} bytes it announced")]
    Oversent {
        /// The size the provider announced.
        announced: u64,
    },
    /// The stream ended before the whole component arrived.
    #[error("the stream ended after {received} of {announced} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// The size the provider announced.
        announced: u64,
    },
    /// The stream ended before any answer.
    #[error("the provider closed the stream without answering")]
    NoAnswer,
    /// The bytes are not the component asked for: the provider lied, or its copy is
    /// damaged.
    #[error("the provider sent the wrong bytes: {0}")]
    Mismatch(ContentMismatch),
    /// The answer does not follow the protocol.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The provider took longer than the requester's timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// No stream to the provider could be opened.
    #[error("cannot open a stream: {0}")]
    Open(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a provider could not answer a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The stream ended before a request arrived.
    #[error("the stream ended before a request")]
    NoRequest,
    /// The request is not the CID of a component.
    #[error("the request is not a component's CID: {0}")]
    BadRequest(#[from] ParseContentIdError),
    /// The request is longer than any CID of a component.
    #[error("a request over {MAX_REQUEST} bytes")]
    RequestTooLong,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What [`serve`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The component asked for.
    pub id: ContentId,
    /// Its size if it was sent, `None` if the answer was "not here".
    pub size: Option<u64>,
}

/// A component fetched by [`fetch_from_any`].
#[derive(Debug)]
pub struct Fetched<P> {
    /// The component's bytes, checked against its CID.
    pub bytes: Vec<u8>,
    /// The provider that sent them.
    pub provider: P,
    /// The providers tried before it, and why each failed (a liar shows up here).
    pub failed: Vec<Attempt<P>>,
}

/// One provider that did not give the component, and why.
#[derive(Debug)]
pub struct Attempt<P> {
    /// The provider.
    pub provider: P,
    /// What went wrong.
    pub error: FetchError,
}

/// No provider gave the component: each one tried, and why it failed.
#[derive(Debug)]
pub struct FetchFailed<P> {
    /// The component asked for.
    pub id: ContentId,
    /// Every provider tried, in order (empty if there were none).
    pub attempts: Vec<Attempt<P>>,
}

impl<P: std::fmt::Display> std::fmt::Display for FetchFailed<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return write!(f, "no provider of {} to fetch it from", self.id);
        }
        write!(
            f,
            "no provider gave {} ({} tried)",
            self.id,
            self.attempts.len()
        )?;
        for attempt in &self.attempts {
            write!(f, "; {}: {}", attempt.provider, attempt.error)?;
        }
        Ok(())
    }
}

impl<P: std::fmt::Debug + std::fmt::Display> std::error::Error for FetchFailed<P> {}

/// A stream framed with varint length prefixes, frames of at most [`MAX_FRAME`].
pub(crate) fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> Framed<S, UviBytes<Bytes>> {
    let mut codec = UviBytes::default();
    codec.set_max_len(MAX_FRAME);
    Framed::new(stream, codec)
}

/// Reads the CID a requester asks for.
///
/// Bytes read past the request are dropped (a requester sends none before the
/// answer), so `stream` can then go to [`send_answer`]. Put a deadline around it: a
/// peer that never asks would hold the stream.
pub async fn read_request<S>(stream: &mut S) -> Result<ContentId, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    framed.codec_mut().set_max_len(MAX_REQUEST);
    let request = match framed.next().await {
        None => return Err(ServeError::NoRequest),
        // `UviBytes` refuses a frame over its maximum with `PermissionDenied`.
        Some(Err(error)) if error.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ServeError::RequestTooLong);
        }
        Some(frame) => frame?,
    };
    Ok(ContentId::from_bytes(&request)?)
}

/// Sends the answer to a request: the component in frames of [`MAX_FRAME`] bytes, or
/// "not here" when `component` is `None`; then closes the write half.
///
/// Sends `component` as given: the caller should have it from a checked source (the
/// content store checks every read).
pub async fn send_answer<S>(stream: &mut S, component: Option<&[u8]>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    match component {
        None => framed.feed(Bytes::from_static(&[NOT_HERE])).await?,
        Some(bytes) => {
            let mut size = unsigned_varint::encode::u64_buffer();
            let size = unsigned_varint::encode::u64(bytes.len() as u64, &mut size);
            framed.feed(Bytes::from([&[FOUND], size].concat())).await?;
            for chunk in bytes.chunks(MAX_FRAME) {
                framed.feed(Bytes::copy_from_slice(chunk)).await?;
            }
        }
    }
    framed.close().await
}

/// Answers one request on `stream`: reads the CID, asks `lookup` for the component
/// (`None`: not here), sends it.
///
/// Has no deadline of its own: run it under `tokio::time::timeout` so a slow or
/// silent requester cannot hold the stream.
pub async fn serve<S, F, Fut, B>(mut stream: S, lookup: F) -> Result<Served, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(ContentId) -> Fut,
    Fut: Future<Output = Option<B>>,
    B: AsRef<[u8]>,
{
    let id = read_request(&mut stream).await?;
    let component = lookup(id).await;
    let bytes = component.as_ref().map(AsRef::as_ref);
    send_answer(&mut stream, bytes).await?;
    Ok(Served {
        id,
        size: bytes.map(|bytes| bytes.len() as u64),
    })
}

/// Asks the provider at the other end of `stream` for `id`, within `limits`; returns
/// the bytes only once they hash to `id`.
pub async fn fetch<S>(
    stream: S,
    id: &ContentId,
    limits: &FetchLimits,
) -> Result<Vec<u8>, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(limits.timeout, fetch_unbounded(stream, id, limits.max_size))
        .await
        .unwrap_or(Err(FetchError::Timeout(limits.timeout)))
}

/// Asks each provider in turn for `id` until one gives it: a provider that cannot be
/// reached, is slow ([`FetchLimits::timeout`] covers `open` and the transfer), says
/// it does not have it, lies or disconnects is passed over for the next.
///
/// `open` opens a stream to a provider on [`PROTOCOL`] (for a libp2p node:
/// `control.open_stream(peer, PROTOCOL)`); providers are tried in the order given.
pub async fn fetch_from_any<P, O, Fut, S, E>(
    id: &ContentId,
    providers: impl IntoIterator<Item = P>,
    mut open: O,
    limits: &FetchLimits,
) -> Result<Fetched<P>, FetchFailed<P>>
where
    P: Clone,
    O: FnMut(P) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: AsyncRead + AsyncWrite + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut failed = Vec::new();
    for provider in providers {
        let attempt = async {
            let stream = open(provider.clone())
                .await
                .map_err(|error| FetchError::Open(error.into()))?;
            fetch_unbounded(stream, id, limits.max_size).await
        };
        let result = tokio::time::timeout(limits.timeout, attempt)
            .await
            .unwrap_or(Err(FetchError::Timeout(limits.timeout)));
        match result {
            Ok(bytes) => {
                return Ok(Fetched {
                    bytes,
                    provider,
                    failed,
                });
            }
            Err(error) => failed.push(Attempt { provider, error }),
        }
    }
    Err(FetchFailed {
        id: *id,
        attempts: failed,
    })
}

/// [`fetch`] without the deadline.
async fn fetch_unbounded<S>(stream: S, id: &ContentId, max_size: u64) -> Result<Vec<u8>, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    framed.send(Bytes::from(id.to_bytes())).await?;

    let header = match framed.next().await {
        None => return Err(FetchError::NoAnswer),
        Some(frame) => frame.map_err(header_error)?,
    };
    let size = match header.split_first() {
        Some((&NOT_HERE, [])) => return Err(FetchError::NotFound),
        Some((&FOUND, rest)) => match unsigned_varint::decode::u64(rest) {
            Ok((size, [])) => size,
            _ => return Err(FetchError::Malformed("the size is not one varint")),
        },
        _ => return Err(FetchError::Malformed("unknown answer")),
    };
    if size > max_size {
        // Dropping the stream resets it: the provider stops sending.
        return Err(FetchError::TooLarge {
            announced: size,
            max: max_size,
        });
    }

    let bytes = read_body(&mut framed, id, size).await?;
    // Tell the provider we are done (FIN); the component is whole either way.
    let _ = framed.close().await;
    Ok(bytes)
}

/// Why a component's bytes, sent after its size, could not be taken whole: what
/// [`read_body`] finds wrong, for each wire to name in its own terms.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// More bytes than announced.
    Oversent { announced: u64 },
    /// The stream ended before the whole component arrived.
    Truncated { received: u64, announced: u64 },
    /// A frame with no bytes.
    EmptyChunk,
    /// A frame over [`MAX_FRAME`].
    FrameTooLong,
    /// The bytes are not the component named.
    Mismatch(ContentMismatch),
    /// The stream failed.
    Io(io::Error),
}

/// Reads the `size` bytes of the component `id` from `framed`, in frames of at most
/// [`MAX_FRAME`], and checks them against `id`. The buffer grows with what arrives
/// (never past `size`, which the caller has checked against its cap): a peer that
/// announces a large size and sends nothing costs one frame's worth of memory.
pub(crate) async fn read_body<S>(
    framed: &mut Framed<S, UviBytes<Bytes>>,
    id: &ContentId,
    size: u64,
) -> Result<Vec<u8>, BodyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = Vec::with_capacity(size.min(MAX_FRAME as u64) as usize);
    while (bytes.len() as u64) < size {
        let received = bytes.len() as u64;
        let truncated = BodyError::Truncated {
            received,
            announced: size,
        };
        let chunk = match framed.next().await {
            None => return Err(truncated),
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) => {
                return Err(match error.kind() {
                    // The stream ended inside a frame.
                    io::ErrorKind::UnexpectedEof => truncated,
                    // `UviBytes` refuses a frame over its maximum with `PermissionDenied`.
                    io::ErrorKind::PermissionDenied => BodyError::FrameTooLong,
                    _ => BodyError::Io(error),
                });
            }
        };
        if chunk.is_empty() {
            return Err(BodyError::EmptyChunk);
        }
        if received + chunk.len() as u64 > size {
            return Err(BodyError::Oversent { announced: size });
        }
        bytes.extend_from_slice(&chunk);
    }
    id.verify(&bytes).map_err(BodyError::Mismatch)?;
    Ok(bytes)
}

impl From<BodyError> for FetchError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::Oversent { announced } => Self::Oversent { announced },
            BodyError::Truncated {
                received,
                announced,
            } => Self::Truncated {
                received,
                announced,
            },
            BodyError::EmptyChunk => Self::Malformed("an empty chunk"),
            BodyError::FrameTooLong => Self::Malformed("a frame over 64 KiB"),
            BodyError::Mismatch(mismatch) => Self::Mismatch(mismatch),
            BodyError::Io(error) => Self::Io(error),
        }
    }
}

/// The codec's errors reading the answer's header, in the protocol's terms.
fn header_error(error: io::Error) -> FetchError {
    match error.kind() {
        // The stream ended inside the header's frame.
        io::ErrorKind::UnexpectedEof => FetchError::NoAnswer,
        // `UviBytes` refuses a frame over its maximum with `PermissionDenied`.
        io::ErrorKind::PermissionDenied => FetchError::Malformed("a frame over 64 KiB"),
        _ => FetchError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::AsyncWriteExt as _;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    use super::*;

    type Pipe = Compat<tokio::io::DuplexStream>;

    /// A component spanning several frames, with a short last one.
    fn component() -> Vec<u8> {
        (0..3 * MAX_FRAME + 1000)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    fn limits() -> FetchLimits {
        FetchLimits {
            max_size: 1 << 20,
            timeout: Duration::from_secs(10),
        }
    }

    /// The requester's end of a pipe whose other end runs [`serve`] with `holds`.
    fn provider(holds: Option<Vec<u8>>) -> Pipe {
        let (near, far) = tokio::io::duplex(16 << 10);
        tokio::spawn(serve(far.compat(), move |_| async move { holds }));
        near.compat()
    }

    /// The requester's end of a pipe whose other end reads the request, then writes
    /// `answer` raw and, if `then_close`, closes; otherwise it stays open, silent.
    fn scripted(answer: Vec<u8>, then_close: bool) -> Pipe {
        let (near, far) = tokio::io::duplex(16 << 10);
        tokio::spawn(async move {
            let mut far = far.compat();
            read_request(&mut far).await.unwrap();
            // The requester may hang up early (that is what some tests check).
            let _ = far.write_all(&answer).await;
            if then_close {
                let _ = far.close().await;
            } else {
                std::future::pending::<()>().await;
            }
        });
        near.compat()
    }

    /// `payload` as one frame.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut length = unsigned_varint::encode::usize_buffer();
        [
            unsigned_varint::encode::usize(payload.len(), &mut length),
            payload,
        ]
        .concat()
    }

    fn found(size: u64) -> Vec<u8> {
        let mut buffer = unsigned_varint::encode::u64_buffer();
        frame(&[&[FOUND], unsigned_varint::encode::u64(size, &mut buffer)].concat())
    }

    #[tokio::test]
    async fn an_honest_provider_gives_the_component() {
        let bytes = component();
        let id = ContentId::of(&bytes);
        let got = fetch(provider(Some(bytes.clone())), &id, &limits())
            .await
            .unwrap();
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn the_wire_is_as_documented() {
        // Request: one frame holding the binary CID.
        let id = ContentId::of(b"hi");
        let (near, far) = tokio::io::duplex(1024);
        let request = frame(&id.to_bytes());
        assert_eq!(&request[..5], &[36, 0x01, 0x55, 0x12, 0x20]);
        let mut near = near.compat();
        near.write_all(&request).await.unwrap();
        let served = serve(far.compat(), |_| async { Some(b"hi".to_vec()) })
            .await
            .unwrap();
        assert_eq!(served, Served { id, size: Some(2) });
        let mut answer = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut near, &mut answer)
            .await
            .unwrap();
        assert_eq!(answer, [&found(2)[..], &frame(b"hi")].concat());
        assert_eq!(answer, [2, FOUND, 2, 2, b'h', b'i']);

        let (near, far) = tokio::io::duplex(1024);
        let mut near = near.compat();
        near.write_all(&request).await.unwrap();
        let served = serve(far.compat(), |_| async { None::<Vec<u8>> })
            .await
            .unwrap();
        assert_eq!(served, Served { id, size: None });
        let mut answer = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut near, &mut answer)
            .await
            .unwrap();
        assert_eq!(answer, [1, NOT_HERE]);
    }

    #[tokio::test]
    async fn an_empty_component_travels_too() {
        let id = ContentId::of(b"");
        assert_eq!(
            fetch(provider(Some(Vec::new())), &id, &limits())
                .await
                .unwrap(),
            b""
        );
    }

    #[tokio::test]
    async fn not_here_is_not_found() {
        let id = ContentId::of(b"x");
        let error = fetch(provider(None), &id, &limits()).await.unwrap_err();
        assert!(matches!(error, FetchError::NotFound), "{error}");
    }

    #[tokio::test]
    async fn a_liar_is_caught_by_the_hash() {
        let bytes = component();
        let id = ContentId::of(&bytes);
        let mut lie = bytes.clone();
        lie[MAX_FRAME + 5] ^= 1;
        let error = fetch(provider(Some(lie.clone())), &id, &limits())
            .await
            .unwrap_err();
        let FetchError::Mismatch(mismatch) = error else {
            panic!("expected a mismatch, got {error}");
        };
        assert_eq!(mismatch.expected, id);
        assert_eq!(mismatch.actual, ContentId::of(&lie));
    }

    #[tokio::test]
    async fn an_announced_size_over_the_cap_is_refused_before_any_byte() {
        // Announces 1 TiB and then sends nothing: the requester must not wait for it.
        let id = ContentId::of(b"x");
        let liar = scripted(found(1 << 40), false);
        let error = fetch(liar, &id, &limits()).await.unwrap_err();
        assert!(
            matches!(error, FetchError::TooLarge { announced, max } if announced == 1 << 40 && max == 1 << 20),
            "{error}"
        );
        // An honest provider of a component over the cap: refused the same way.
        let bytes = component();
        let small = FetchLimits {
            max_size: bytes.len() as u64 - 1,
            ..limits()
        };
        let error = fetch(
            provider(Some(bytes.clone())),
            &ContentId::of(&bytes),
            &small,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn more_bytes_than_announced_are_refused() {
        let id = ContentId::of(b"abcd");
        let answer = [found(4), frame(b"abcdef")].concat();
        let error = fetch(scripted(answer, false), &id, &limits())
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::Oversent { announced: 4 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_frame_over_64_kib_is_malformed() {
        let bytes = vec![0; MAX_FRAME + 1];
        let id = ContentId::of(&bytes);
        let answer = [found(bytes.len() as u64), frame(&bytes)].concat();
        let error = fetch(scripted(answer, false), &id, &limits())
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Malformed(_)), "{error}");
    }

    #[tokio::test]
    async fn a_truncated_stream_is_truncated() {
        let id = ContentId::of(&[9; 100]);
        // Ends between frames.
        let answer = [found(100), frame(&[9; 50])].concat();
        let error = fetch(scripted(answer, true), &id, &limits())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                FetchError::Truncated {
                    received: 50,
                    announced: 100
                }
            ),
            "{error}"
        );
        // Ends inside a frame.
        let mut answer = [found(100), frame(&[9; 100])].concat();
        answer.truncate(answer.len() - 30);
        let error = fetch(scripted(answer, true), &id, &limits())
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::Truncated { announced: 100, .. }),
            "{error}"
        );
        // Ends before answering.
        let error = fetch(scripted(Vec::new(), true), &id, &limits())
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NoAnswer), "{error}");
    }

    #[tokio::test]
    async fn garbage_answers_are_malformed() {
        let id = ContentId::of(b"x");
        for answer in [
            frame(&[7]),
            frame(&[NOT_HERE, 0]),
            frame(&[FOUND]),
            frame(&[FOUND, 1, 1]),
        ] {
            let error = fetch(scripted(answer.clone(), false), &id, &limits())
                .await
                .unwrap_err();
            assert!(
                matches!(error, FetchError::Malformed(_)),
                "{answer:?}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_provider_times_out() {
        let id = ContentId::of(b"x");
        let quick = FetchLimits {
            timeout: Duration::from_millis(50),
            ..limits()
        };
        let error = fetch(scripted(Vec::new(), false), &id, &quick)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Timeout(_)), "{error}");
    }

    #[tokio::test]
    async fn a_provider_refuses_a_request_that_is_not_a_component_cid() {
        let (near, far) = tokio::io::duplex(1024);
        let mut near = near.compat();
        near.write_all(&frame(b"not a cid")).await.unwrap();
        let error = serve(far.compat(), |_| async { Some(Vec::new()) })
            .await
            .unwrap_err();
        assert!(matches!(error, ServeError::BadRequest(_)), "{error}");

        let (near, far) = tokio::io::duplex(1024);
        let mut near = near.compat();
        near.write_all(&frame(&[0; MAX_REQUEST + 1])).await.unwrap();
        let error = serve(far.compat(), |_| async { Some(Vec::new()) })
            .await
            .unwrap_err();
        assert!(matches!(error, ServeError::RequestTooLong), "{error}");

        let (near, far) = tokio::io::duplex(1024);
        drop(near);
        let error = serve(far.compat(), |_| async { Some(Vec::new()) })
            .await
            .unwrap_err();
        assert!(matches!(error, ServeError::NoRequest), "{error}");
    }

    /// How the providers in the `fetch_from_any` tests behave.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Honest,
        Absent,
        Liar,
        Silent,
        Unreachable,
        Truncating,
    }

    impl std::fmt::Display for Kind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            std::fmt::Debug::fmt(self, f)
        }
    }

    /// An opener over in-memory providers of `bytes`, counting the streams opened.
    fn opener(
        bytes: Vec<u8>,
        opened: Arc<AtomicUsize>,
    ) -> impl FnMut(Kind) -> std::future::Ready<io::Result<Pipe>> {
        move |kind| {
            opened.fetch_add(1, Ordering::Relaxed);
            let mut lie = bytes.clone();
            lie[0] ^= 1;
            std::future::ready(match kind {
                Kind::Honest => Ok(provider(Some(bytes.clone()))),
                Kind::Absent => Ok(provider(None)),
                Kind::Liar => Ok(provider(Some(lie))),
                Kind::Silent => Ok(scripted(Vec::new(), false)),
                Kind::Truncating => Ok(scripted(
                    [found(bytes.len() as u64), frame(&bytes[..10])].concat(),
                    true,
                )),
                Kind::Unreachable => {
                    Err(io::Error::new(io::ErrorKind::ConnectionRefused, "no route"))
                }
            })
        }
    }

    /// Fetches `bytes` from `providers` in order; the provider that gave them and the
    /// failures before it, as kinds.
    async fn fetch_in_turn(
        providers: &[Kind],
        timeout: Duration,
    ) -> Result<(Kind, Vec<Kind>), FetchFailed<Kind>> {
        let bytes = component();
        let id = ContentId::of(&bytes);
        let opened = Arc::new(AtomicUsize::new(0));
        let limits = FetchLimits {
            timeout,
            ..limits()
        };
        let fetched = fetch_from_any(
            &id,
            providers.iter().copied(),
            opener(bytes.clone(), opened.clone()),
            &limits,
        )
        .await?;
        assert_eq!(fetched.bytes, bytes);
        let tried = opened.load(Ordering::Relaxed);
        assert_eq!(
            tried,
            fetched.failed.len() + 1,
            "stops at the first that gives it"
        );
        Ok((
            fetched.provider,
            fetched.failed.iter().map(|a| a.provider).collect(),
        ))
    }

    #[tokio::test]
    async fn fetch_from_any_moves_past_providers_that_fail() {
        let timeout = Duration::from_secs(10);
        use Kind::*;
        assert_eq!(
            fetch_in_turn(&[Honest, Liar], timeout).await.unwrap(),
            (Honest, vec![])
        );
        assert_eq!(
            fetch_in_turn(&[Absent, Honest], timeout).await.unwrap(),
            (Honest, vec![Absent])
        );
        assert_eq!(
            fetch_in_turn(&[Liar, Honest], timeout).await.unwrap(),
            (Honest, vec![Liar])
        );
        assert_eq!(
            fetch_in_turn(&[Unreachable, Truncating, Honest], timeout)
                .await
                .unwrap(),
            (Honest, vec![Unreachable, Truncating])
        );
    }

    #[tokio::test]
    async fn fetch_from_any_moves_past_a_slow_provider() {
        // Long enough for an honest in-memory transfer on a loaded machine; the silent
        // provider costs this once.
        let timeout = Duration::from_secs(1);
        assert_eq!(
            fetch_in_turn(&[Kind::Silent, Kind::Honest], timeout)
                .await
                .unwrap(),
            (Kind::Honest, vec![Kind::Silent])
        );
    }

    #[tokio::test]
    async fn fetch_from_any_says_why_each_provider_failed() {
        use Kind::*;
        let failed = fetch_in_turn(&[Absent, Liar, Unreachable], Duration::from_secs(10))
            .await
            .unwrap_err();
        let reasons: Vec<_> = failed
            .attempts
            .iter()
            .map(|a| (a.provider, &a.error))
            .collect();
        assert!(matches!(
            reasons[..],
            [
                (Absent, FetchError::NotFound),
                (Liar, FetchError::Mismatch(_)),
                (Unreachable, FetchError::Open(_))
            ]
        ));
        let message = failed.to_string();
        assert!(message.starts_with("no provider gave bafkrei"), "{message}");
        for expected in [
            "Absent: the provider does not have it",
            "Liar: the provider sent the wrong bytes",
            "Unreachable: cannot open a stream: no route",
        ] {
            assert!(message.contains(expected), "{message}");
        }

        let none = fetch_in_turn(&[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            none.to_string().starts_with("no provider of bafkrei"),
            "{none}"
        );
    }
}
