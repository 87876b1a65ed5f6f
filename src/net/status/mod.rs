//! The wire protocols of cell streams beyond the guest's own bytes: how a node tells
//! a peer how the instance behind a stream ended (`P+status`), and how a cell that
//! dials tells the remote node what is left of its chain of calls (`P+call`). This
//! module is the one place that knows these formats: the codec ([`StatusCodec`]),
//! the node's writer ([`AnswerWriter`]), the readers ([`read_answer`], [`Deframed`]),
//! what a client offers ([`offer`]), and the call header ([`CallHeader`]).
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
//!
//! # Why the writer is poll-based
//! The node writes the guest's bytes from inside `wasi:io` calls that must not wait
//! (`cell::io` drives them with `poll_write`), and it writes each chunk straight into
//! the stream, so the frame's payload is never copied. A `FramedWrite` sink would
//! copy every payload into its own buffer and add a second layer of buffering under
//! the guest's output budget; so [`AnswerWriter`] encodes only the framing bytes
//! with [`StatusCodec`] and writes the payload itself. Reading has no such
//! constraint: both readers are a `FramedRead` over the same codec.
//!
//! # Layout
//! `mod.rs` holds the protocol names, [`Outcome`] and [`offer`]; `codec` the
//! framing ([`StatusCodec`]); `writer` the node's side ([`AnswerWriter`]); `reader`
//! the peer's side ([`read_answer`], [`Deframed`]); `call` the `+call` header
//! ([`CallHeader`]).

mod call;
mod codec;
mod reader;
mod writer;

use libp2p::StreamProtocol;

pub use call::CallHeader;
pub use codec::{Marker, Part, StatusCodec};
pub use reader::{Deframed, read_answer};
pub use writer::AnswerWriter;

/// Appended to a cell's protocol ID to ask for the framed answer with a trailer.
pub const SUFFIX: &str = "+status";
/// Appended to a cell's protocol ID by a cell that dials: `+status` with a
/// [`CallHeader`] in front of the request.
pub const CALL_SUFFIX: &str = "+call";
/// Longest reason a trailer carries; longer ones are cut.
pub const MAX_REASON: usize = 1024;

/// What an answer that stops before its trailer means.
const CUT_SHORT: &str =
    "the stream ended without an outcome (the node aborted it, or the connection broke)";

/// How an instance ended, as the peer learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The instance finished cleanly.
    Success,
    /// The instance failed; the reason is one line of text.
    Failure(String),
}

/// Which variant of a cell protocol a stream was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `P`: the guest's bytes both ways, nothing else.
    Plain,
    /// `P+status`: a framed answer with an outcome trailer.
    Status,
    /// `P+call`: `P+status` whose request starts with a [`CallHeader`].
    Call,
}

impl Variant {
    /// Whether the node's answer is framed and ends with an outcome trailer.
    pub fn is_framed(self) -> bool {
        self != Self::Plain
    }
}

/// The status variant (`P+status`) of a cell protocol `P`.
pub fn status_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{SUFFIX}")).expect("starts with `/`")
}

/// The call variant (`P+call`) of a cell protocol `P`.
pub fn call_variant(protocol: &StreamProtocol) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{protocol}{CALL_SUFFIX}")).expect("starts with `/`")
}

/// Splits a negotiated protocol into the cell protocol and the variant.
pub fn parse(protocol: &StreamProtocol) -> (&str, Variant) {
    let name = protocol.as_ref();
    if let Some(base) = name.strip_suffix(SUFFIX) {
        (base, Variant::Status)
    } else if let Some(base) = name.strip_suffix(CALL_SUFFIX) {
        (base, Variant::Call)
    } else {
        (name, Variant::Plain)
    }
}

/// Who opens a stream on a cell protocol, which decides what it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A peer outside any chain of calls (`ww dial`, a test client).
    Peer,
    /// A cell's instance, part of a chain of calls.
    Cell,
}

/// The protocols to offer for a stream on the cell protocol `protocol`, best first:
/// a cell offers the call variant first (so the remote node learns what is left of
/// the chain, and the remote cell's failure reaches the caller); everyone offers the
/// status variant, then the plain protocol for peers that only speak that.
pub fn offer(protocol: &StreamProtocol, caller: Caller) -> Vec<StreamProtocol> {
    let mut offer = Vec::with_capacity(3);
    if caller == Caller::Cell {
        offer.push(call_variant(protocol));
    }
    offer.push(status_variant(protocol));
    offer.push(protocol.clone());
    offer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_variants() {
        let echo = StreamProtocol::new("/ww/echo/0.1.0");
        let framed = status_variant(&echo);
        assert_eq!(framed.as_ref(), "/ww/echo/0.1.0+status");
        assert_eq!(parse(&framed), ("/ww/echo/0.1.0", Variant::Status));
        assert_eq!(parse(&echo), ("/ww/echo/0.1.0", Variant::Plain));
        let call = call_variant(&echo);
        assert_eq!(call.as_ref(), "/ww/echo/0.1.0+call");
        assert_eq!(parse(&call), ("/ww/echo/0.1.0", Variant::Call));
        assert!(Variant::Call.is_framed() && Variant::Status.is_framed());
        assert!(!Variant::Plain.is_framed());
        assert_eq!(offer(&echo, Caller::Peer), [framed.clone(), echo.clone()]);
        assert_eq!(offer(&echo, Caller::Cell), [call, framed, echo]);
    }
}
