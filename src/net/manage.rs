//! `/ww/deploy/1.0.0` and `/ww/cells/1.0.0`: a deployer installs or removes a cell on
//! a running node, and anyone may ask a node which cells it serves.
//!
//! Like [`code`](super::code), whose framing this reuses, the wire is a few async
//! functions over any `AsyncRead + AsyncWrite` stream: [`send_request`] and
//! [`read_answer`] on the deployer's side, [`read_request`] and [`send_answer`] on the
//! node's; [`send_listing`] and [`read_listing`] for the cells.
//!
//! # Wire
//! Every message is a frame: an unsigned varint length, then that many bytes (at most
//! [`MAX_FRAME`], 64 KiB).
//! ```text
//! deployer → node   frame(JSON DeployRequest)
//!                   frame(≤ 64 KiB) … totalling `size`   deploy only: the component
//!                   end of its write side
//! node → deployer   frame(JSON DeployAnswer), end (a reset if the node refused
//!                   before reading the whole request)
//!
//! node → asker      frame(…) frame(…) …, end             one JSON array of CellListing,
//!                                                        at most MAX_LISTING bytes
//! ```
//!
//! # What the node trusts
//! The connection's peer ID (checked by the caller against its deployers) and nothing
//! the deployer says: [`read_request`] refuses an announced size over the node's cap
//! before reading a byte of the component, refuses more or fewer bytes than announced,
//! and checks the bytes against the announced CID. Neither side sets a deadline: wrap
//! each call in `tokio::time::timeout`, or a silent peer holds the stream.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncWrite, SinkExt as _, StreamExt as _};
use libp2p::StreamProtocol;

use super::code::{BodyError, framed, read_body};
use crate::content::ContentMismatch;

mod messages;

pub use messages::{CellListing, DeployAnswer, DeployRequest, DialRequest, Op};

/// The protocol a deployer installs and removes cells on.
pub const DEPLOY_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/deploy/1.0.0");
/// The protocol a node lists its cells on.
pub const CELLS_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/cells/1.0.0");
/// The largest frame either side sends or accepts; the JSON messages but the listing
/// fit in one.
pub const MAX_FRAME: usize = super::code::MAX_FRAME;
/// The largest cell listing a reader accepts, in bytes of JSON (a few thousand cells).
pub const MAX_LISTING: usize = 1 << 20;

/// Why a request, an answer or a listing could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The stream ended before the message (or inside its frame).
    #[error("the stream ended before the {0}")]
    Ended(&'static str),
    /// A frame over [`MAX_FRAME`].
    #[error("a frame over 64 KiB")]
    FrameTooLong,
    /// The message is not the JSON it should be.
    #[error("malformed {what}: {error}")]
    BadJson {
        /// Which message.
        what: &'static str,
        /// What the JSON parser said.
        #[source]
        error: serde_json::Error,
    },
    /// The message does not follow the protocol.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The deployer announced a component bigger than the node accepts.
    #[error("the component is {announced} bytes, over this node's cap of {max}")]
    TooLarge {
        /// The size announced.
        announced: u64,
        /// The reader's cap.
        max: u64,
    },
    /// More bytes than announced.
    #[error("more than the {announced} bytes announced")]
    Oversent {
        /// The size announced.
        announced: u64,
    },
    /// The stream ended before the whole component arrived.
    #[error("the stream ended after {received} of {announced} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// The size announced.
        announced: u64,
    },
    /// The bytes are not the component the request names.
    #[error("the bytes do not match the announced CID: {0}")]
    Mismatch(ContentMismatch),
    /// A listing over [`MAX_LISTING`].
    #[error("a cell listing over {MAX_LISTING} bytes")]
    ListingTooLarge,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<BodyError> for ManageError {
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
            BodyError::FrameTooLong => Self::FrameTooLong,
            BodyError::Mismatch(mismatch) => Self::Mismatch(mismatch),
            BodyError::Io(error) => Self::Io(error),
        }
    }
}

/// The codec's read errors in this protocol's terms; `what` is the message expected.
fn read_error(error: io::Error, what: &'static str) -> ManageError {
    match error.kind() {
        // `UviBytes` refuses a frame over its maximum with `PermissionDenied`.
        io::ErrorKind::PermissionDenied => ManageError::FrameTooLong,
        io::ErrorKind::UnexpectedEof => ManageError::Ended(what),
        _ => ManageError::Io(error),
    }
}

/// Sends `request`, then `component` (which must be `request.size` bytes; `None` for
/// an undeploy) in frames of [`MAX_FRAME`], then closes the write half. The answer
/// comes with [`read_answer`] on the same stream.
pub async fn send_request<S>(
    stream: &mut S,
    request: &DeployRequest,
    component: Option<&[u8]>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let size = component.map_or(0, |bytes| bytes.len() as u64);
    if size != request.size {
        let message = format!("{size} bytes for a request announcing {}", request.size);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    let mut framed = framed(stream);
    framed
        .feed(Bytes::from(serde_json::to_vec(request)?))
        .await?;
    for chunk in component.unwrap_or_default().chunks(MAX_FRAME) {
        framed.feed(Bytes::copy_from_slice(chunk)).await?;
    }
    framed.close().await
}

/// Reads a deployer's request, and for a deploy the component (`Some`, checked against
/// the request's CID); waits for the deployer to close its write side, so `stream`
/// can then go to [`send_answer`].
///
/// Refuses an announced size over `max_size` before reading a byte of the component,
/// a deploy without a CID, an undeploy with bytes, more or fewer bytes than announced,
/// and bytes that do not hash to the CID. The component's buffer grows with what
/// arrives, never past `max_size`. No deadline of its own: see the module docs.
pub async fn read_request<S>(
    stream: &mut S,
    max_size: u64,
) -> Result<(DeployRequest, Option<Vec<u8>>), ManageError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    let request = match framed.next().await {
        None => return Err(ManageError::Ended("request")),
        Some(frame) => frame.map_err(|error| read_error(error, "request"))?,
    };
    let request: DeployRequest =
        serde_json::from_slice(&request).map_err(|error| ManageError::BadJson {
            what: "request",
            error,
        })?;
    let size = request.size;
    let component = match (request.op, request.content) {
        (Op::Undeploy, _) if size > 0 => {
            return Err(ManageError::Malformed("an undeploy carries no component"));
        }
        (Op::Undeploy, _) => None,
        (Op::Deploy, None) => return Err(ManageError::Malformed("a deploy names its CID")),
        (Op::Deploy, Some(_)) if size > max_size => {
            return Err(ManageError::TooLarge {
                announced: size,
                max: max_size,
            });
        }
        (Op::Deploy, Some(id)) => Some(read_body(&mut framed, &id, size).await?),
    };
    match framed.next().await {
        None => Ok((request, component)),
        Some(Ok(_)) => Err(ManageError::Oversent { announced: size }),
        Some(Err(error)) => Err(read_error(error, "end of the request")),
    }
}

/// Sends the node's answer as one frame and flushes it. A refusal's reason too long
/// for a frame is cut to fit.
///
/// Does not close the stream: drop it then. A yamux stream whose deployer has sent
/// its whole request (and closed its side) then ends with a FIN; one whose deployer
/// is still sending (a refusal before the component was read) is reset, which stops
/// the deployer's writes, and the answer, sent first, is still read. Closing first
/// would leave such a deployer blocked on flow control until the connection closes.
pub async fn send_answer<S>(stream: &mut S, answer: &DeployAnswer) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut json = serde_json::to_vec(answer)?;
    if json.len() > MAX_FRAME
        && let DeployAnswer::Refused { reason } = answer
    {
        let mut end = MAX_FRAME / 2;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = format!("{}… (cut)", &reason[..end]);
        json = serde_json::to_vec(&DeployAnswer::Refused { reason })?;
    }
    framed(stream).send(Bytes::from(json)).await
}

/// Reads the node's answer to a request sent with [`send_request`].
pub async fn read_answer<S>(stream: &mut S) -> Result<DeployAnswer, ManageError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    let answer = match framed.next().await {
        None => return Err(ManageError::Ended("answer")),
        Some(frame) => frame.map_err(|error| read_error(error, "answer"))?,
    };
    serde_json::from_slice(&answer).map_err(|error| ManageError::BadJson {
        what: "answer",
        error,
    })
}

/// Sends a node's cells as one JSON array in frames of [`MAX_FRAME`], then closes the
/// write half. A listing over [`MAX_LISTING`] is an `InvalidData` error, sending nothing.
pub async fn send_listing<S>(stream: &mut S, cells: &[CellListing]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let json = serde_json::to_vec(cells)?;
    if json.len() > MAX_LISTING {
        let message = format!(
            "{} cells list in {} bytes, over {MAX_LISTING}",
            cells.len(),
            json.len()
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
    }
    let mut framed = framed(stream);
    for chunk in json.chunks(MAX_FRAME) {
        framed.feed(Bytes::copy_from_slice(chunk)).await?;
    }
    framed.close().await
}

/// Reads a node's cells, sent with [`send_listing`], to the end of the stream.
pub async fn read_listing<S>(stream: &mut S) -> Result<Vec<CellListing>, ManageError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(stream);
    let mut json = Vec::new();
    while let Some(frame) = framed.next().await {
        let chunk = frame.map_err(|error| read_error(error, "end of the listing"))?;
        if json.len() + chunk.len() > MAX_LISTING {
            return Err(ManageError::ListingTooLarge);
        }
        json.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&json).map_err(|error| ManageError::BadJson {
        what: "listing",
        error,
    })
}

#[cfg(test)]
mod tests;
