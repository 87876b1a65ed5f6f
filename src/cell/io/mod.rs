//! Byte plumbing between a peer stream and a guest, as `wasi:io` streams: the output
//! half that closes gracefully, and the guest's stdout/stderr turned into log lines.
//! What goes on the wire around the guest's bytes (`+status` frames, the outcome
//! trailer) is `net::status`'s business: [`PeerWriter`] writes through its
//! [`AnswerWriter`](crate::net::status::AnswerWriter).
//!
//! The input half ([`PeerInputStream`]) reads the peer stream in the guest's own task,
//! only when the guest asks, so a guest that stops reading stops the reads from the
//! peer (and yamux's window then stops the peer) without a task of its own per stream.
//!
//! # Layout
//! `writer` holds [`PeerWriter`], the write half both the guest and the host write
//! through; `output` the guest's output stream over it ([`PeerOutputStream`]);
//! `input` the read half ([`PeerInputStream`], with [`MeteredReader`] and
//! [`SyncReader`]); `log` the guest's stdout and stderr as log lines ([`GuestLog`]).

mod input;
mod log;
mod output;
mod writer;

pub use input::{MeteredReader, PeerInputStream, SyncReader};
pub use log::GuestLog;
pub use output::{OUTPUT_BUDGET, PeerOutputStream, flush};
pub use writer::PeerWriter;
