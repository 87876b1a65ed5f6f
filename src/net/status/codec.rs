//! The `P+status` framing as a `tokio-util` codec: [`StatusCodec`] encodes the
//! framing bytes a node writes ([`Marker`]) and decodes an answer into [`Part`]s.

use std::io;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{CUT_SHORT, MAX_REASON, Outcome};

/// The framing bytes a node writes around the guest's, encoded by [`StatusCodec`].
#[derive(Debug, Clone, Copy)]
pub enum Marker<'a> {
    /// The length in front of a frame of this many payload bytes (1 to `u32::MAX`).
    Frame(usize),
    /// The `end` of an answer: the outcome trailer.
    End(&'a Outcome),
}

/// A piece of an answer as [`StatusCodec`] decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Some of the guest's bytes (never empty; a frame may come in several parts).
    Payload(Bytes),
    /// The answer is over: the trailer's outcome, or a failure if the stream ended
    /// before it.
    End(Outcome),
}

/// The `P+status` framing as a `tokio-util` codec: it encodes [`Marker`]s and
/// decodes an answer into [`Part`]s. Decoding never holds a whole frame: payload is
/// handed on as it arrives, so memory stays bounded whatever length a peer sends.
#[derive(Debug, Default)]
pub struct StatusCodec {
    state: Decode,
}

/// Where decoding stands in an answer.
#[derive(Debug, Default, Clone, Copy)]
enum Decode {
    /// Before a frame's length (or the trailer's zero).
    #[default]
    Length,
    /// Inside a frame, with this many payload bytes to come.
    Payload(usize),
    /// Before the trailer's code.
    Code,
    /// Inside a failure's reason, which ends at EOF or at [`MAX_REASON`].
    Reason,
    /// The answer is over; anything after it is ignored.
    Over,
}

impl StatusCodec {
    /// Whether decoding stands between frames: the last payload part ended a frame.
    pub fn between_frames(&self) -> bool {
        matches!(self.state, Decode::Length)
    }

    /// Ends the answer with a failure whose reason is `reason`'s bytes.
    fn fail(&mut self, reason: &[u8]) -> Part {
        self.state = Decode::Over;
        Part::End(Outcome::Failure(
            String::from_utf8_lossy(reason).into_owned(),
        ))
    }
}

impl Encoder<Marker<'_>> for StatusCodec {
    type Error = io::Error;

    fn encode(&mut self, marker: Marker<'_>, dst: &mut BytesMut) -> io::Result<()> {
        match marker {
            Marker::Frame(len) => {
                let len = u32::try_from(len)
                    .ok()
                    .filter(|&len| len > 0)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("a frame holds 1 to 2^32 - 1 bytes, not {len}"),
                        )
                    })?;
                dst.put_u32(len);
            }
            Marker::End(outcome) => {
                dst.put_u32(0);
                match outcome {
                    Outcome::Success => dst.put_u8(0),
                    Outcome::Failure(reason) => {
                        dst.put_u8(1);
                        let line = reason.lines().next().unwrap_or("failed");
                        let mut cut = line.len().min(MAX_REASON);
                        while !line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        dst.extend_from_slice(&line.as_bytes()[..cut]);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Decoder for StatusCodec {
    type Item = Part;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Part>> {
        loop {
            match self.state {
                Decode::Length => {
                    if src.len() < 4 {
                        return Ok(None);
                    }
                    self.state = match src.get_u32() as usize {
                        0 => Decode::Code,
                        len => Decode::Payload(len),
                    };
                }
                Decode::Payload(left) => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(src.len());
                    self.state = match left - n {
                        0 => Decode::Length,
                        left => Decode::Payload(left),
                    };
                    return Ok(Some(Part::Payload(src.split_to(n).freeze())));
                }
                Decode::Code => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    if src.get_u8() == 0 {
                        self.state = Decode::Over;
                        return Ok(Some(Part::End(Outcome::Success)));
                    }
                    self.state = Decode::Reason;
                }
                Decode::Reason => {
                    if src.len() < MAX_REASON {
                        return Ok(None);
                    }
                    let reason = src.split_to(MAX_REASON);
                    return Ok(Some(self.fail(&reason)));
                }
                Decode::Over => {
                    src.clear();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Part>> {
        if let Some(part) = self.decode(src)? {
            return Ok(Some(part));
        }
        Ok(match self.state {
            Decode::Over => None,
            // The end of the stream ends the reason.
            Decode::Reason => {
                let reason = src.split();
                Some(self.fail(&reason))
            }
            Decode::Length | Decode::Payload(_) | Decode::Code => {
                src.clear();
                Some(self.fail(CUT_SHORT.as_bytes()))
            }
        })
    }
}
