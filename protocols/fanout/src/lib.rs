//! `/ww/fanout/0.1.0`: sends one request to every node that provides a protocol and
//! answers with what each of them replied.
//!
//! # Wire format
//! The peer sends a first line naming the protocol to fan out to, then the body, and
//! closes its write side:
//! ```text
//! /ww/echo/0.1.0\n
//! <body, any bytes, until EOF>
//! ```
//! Once it has the whole body, the cell asks the DHT for the providers of that protocol
//! and opens a stream to each in turn (sorted by peer ID, so the order is stable). It
//! sends the body, closing its write side after the last byte, while it reads the reply
//! to EOF. The answer holds one section per provider:
//! ```text
//! == 12D3KooWA… 5 bytes\n
//! <the 5 bytes of its reply>\n
//! == 12D3KooWB… failed: unreachable: <why>\n
//! ```
//! A provider that cannot be dialled, or whose stream fails mid-way, gets a `failed`
//! line and the cell goes on with the next. `<why>` is the `dial-error` case in kebab
//! case (`not-allowed`, `limit-reached`, `hop-limit-reached`, `unreachable: <text>`,
//! …), or `sending: <text>`, `receiving: <text>` or `reply over 16 MiB` for a stream
//! that failed. Once every section is written, a fan-out in which any provider failed
//! fails the stream (a `+status` peer, or a cell that dialed this one, sees it), with
//! the reason `N of M providers failed; first: <peer>: <why>`. With no providers at all
//! the answer is `no providers of PROTOCOL\n`, a success.
//!
//! A first line that is not a protocol ID (no newline within 1 KiB, or not starting
//! with `/`), a body over 16 MiB, or a failure to list the providers gets a one-line
//! `error: …` answer and fails the stream with that line as the reason.
//!
//! # Limits
//! The body and each reply are held in memory (up to 16 MiB each; a longer reply fails
//! that provider). Listing the providers costs one of the node's `max_dials` and every
//! provider one more, so `max_dials` caps how many are reached: the rest fail with
//! `limit-reached`.

wit_bindgen::generate!({
    world: "dialing-cell",
    path: "../../wit",
    generate_all,
});

#[path = "../../shared/dialing.rs"]
mod dialing;

use dialing::{FirstLine, describe, fail, one_line, read_line, refuse, write_all};
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wetware::streams::dialer::{DialError, dial, providers};
use wetware::streams::streams::{Connection, create_connection};

/// Largest body the cell buffers to send to the providers.
const MAX_BODY: usize = 16 << 20;
/// Largest reply the cell buffers from one provider.
const MAX_REPLY: usize = 16 << 20;
/// Largest chunk read per call.
const CHUNK: u64 = 64 * 1024;

struct Fanout;

impl exports::wasi::cli::run::Guest for Fanout {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();

        let Some(FirstLine {
            line,
            rest: mut body,
        }) = read_line(&input).map_err(drop)?
        else {
            return refuse(
                &output,
                "error: no first line (a protocol ID and a newline, within 1 KiB)",
            );
        };
        let protocol = match String::from_utf8(line) {
            Ok(protocol) if protocol.starts_with('/') => protocol,
            _ => {
                return refuse(
                    &output,
                    "error: the first line must be a protocol ID (`/…`)",
                );
            }
        };
        match read_to_end(&input, &mut body, MAX_BODY) {
            Ok(true) => {}
            Ok(false) => return refuse(&output, "error: the body is over 16 MiB"),
            Err(_) => return Err(()),
        }
        // Our peer has closed its side: release that half before the long part.
        drop(input);

        let mut peers = match providers(&protocol) {
            Ok(peers) => peers,
            Err(DialError::NoProviders) => Vec::new(),
            Err(error) => {
                let line = format!("error: providers of {protocol}: {}", describe(&error));
                return refuse(&output, &line);
            }
        };
        peers.sort_unstable();
        peers.dedup();
        if peers.is_empty() {
            let line = format!("no providers of {protocol}\n");
            return write_all(&output, line.as_bytes()).map_err(drop);
        }

        let mut failures = Vec::new();
        for peer in &peers {
            match ask(peer, &protocol, &body) {
                Ok(reply) => {
                    let header = format!("== {peer} {} bytes\n", reply.len());
                    write_all(&output, header.as_bytes()).map_err(drop)?;
                    write_all(&output, &reply).map_err(drop)?;
                    write_all(&output, b"\n").map_err(drop)?;
                }
                Err(reason) => {
                    let line = format!("== {peer} failed: {reason}\n");
                    write_all(&output, line.as_bytes()).map_err(drop)?;
                    failures.push(format!("{peer}: {reason}"));
                }
            }
        }
        match failures.first() {
            None => Ok(()),
            Some(first) => fail(&format!(
                "{} of {} providers failed; first: {first}",
                failures.len(),
                peers.len()
            )),
        }
    }
}

export!(Fanout);

/// Sends `body` to `protocol` on `peer` and returns its whole reply, or why it failed.
fn ask(peer: &str, protocol: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let connection = dial(peer, protocol).map_err(|error| describe(&error))?;
    exchange(&connection, body)
}

/// Writes `body` to a dialled stream while reading its reply, and returns the reply once
/// the remote closes its side.
///
/// Both directions move together so that a remote cell that replies as it reads (like
/// echo) cannot deadlock with us: were we to write everything first, a body larger
/// than the stream's buffers would leave it blocked writing a reply that we do not read,
/// and us blocked writing a body that it no longer reads. Our write side is closed as
/// soon as the body is out and flushed, so the remote reads EOF.
///
/// The remote's EOF ends the exchange, even with part of the body unsent: what it sent
/// is its reply. A failed write fails the provider, as a failed read does; so a remote
/// that stops reading early fails or succeeds depending on which we notice first.
fn exchange(connection: &Connection, body: &[u8]) -> Result<Vec<u8>, String> {
    let input = connection.get_input_stream();
    let readable = input.subscribe();
    let mut sender = Some(Sender::new(connection.get_output_stream()));
    let mut rest = body;
    let mut reply = Vec::new();
    loop {
        let mut waiting: Vec<&Pollable> = vec![&readable];
        waiting.extend(sender.as_ref().map(|sender| &sender.ready));
        poll(&waiting);

        // Both calls below never block: whichever side is not ready makes no progress.
        if let Some(sending) = &mut sender {
            match sending.advance(&mut rest) {
                Ok(false) => {}
                // Sent and flushed; dropping the stream closes our write side.
                Ok(true) | Err(StreamError::Closed) => sender = None,
                Err(error) => return Err(format!("sending: {}", reason(error))),
            }
        }
        match input.read(CHUNK) {
            Ok(chunk) if reply.len() + chunk.len() > MAX_REPLY => {
                return Err("reply over 16 MiB".to_string());
            }
            Ok(chunk) => reply.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(reply),
            Err(error) => return Err(format!("receiving: {}", reason(error))),
        }
    }
}

/// The write half of a dialled stream while the body goes out.
struct Sender {
    /// Ready when `stream` takes more bytes or has finished a flush. A child of
    /// `stream`, so it is declared first to be dropped first.
    ready: Pollable,
    stream: OutputStream,
    /// The whole body has been written and a flush requested.
    flushing: bool,
}

impl Sender {
    fn new(stream: OutputStream) -> Self {
        Self {
            ready: stream.subscribe(),
            stream,
            flushing: false,
        }
    }

    /// Writes as much of `rest` as the stream takes now, without blocking, and requests
    /// a flush after the last byte. Returns `true` once that flush has completed.
    fn advance(&mut self, rest: &mut &[u8]) -> Result<bool, StreamError> {
        // Zero while the stream is full or a flush is under way.
        let permit = self.stream.check_write()?;
        if permit == 0 {
            return Ok(false);
        }
        if self.flushing {
            return Ok(true);
        }
        let n = rest
            .len()
            .min(usize::try_from(permit).unwrap_or(usize::MAX));
        if n > 0 {
            self.stream.write(&rest[..n])?;
            *rest = &rest[n..];
        }
        if rest.is_empty() {
            self.stream.flush()?;
            self.flushing = true;
        }
        Ok(false)
    }
}

/// Appends everything left in `input` to `buffer`. Returns `false`, having stopped
/// reading, if `buffer` would grow past `limit` bytes.
fn read_to_end(
    input: &InputStream,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, StreamError> {
    loop {
        match input.blocking_read(CHUNK) {
            Ok(chunk) if buffer.len() + chunk.len() > limit => return Ok(false),
            Ok(chunk) => buffer.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(true),
            Err(error) => return Err(error),
        }
    }
}

/// What went wrong on a stream, for a `failed` line.
fn reason(error: StreamError) -> String {
    match error {
        StreamError::Closed => "closed".to_string(),
        StreamError::LastOperationFailed(error) => one_line(&error.to_debug_string()),
    }
}
