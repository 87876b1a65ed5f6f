//! `/ww/forward/0.1.0`: forwards its stream to a cell on another node — one hop in a
//! chain of cells.
//!
//! The first line names where to: `PEER PROTOCOL\n` dials `PROTOCOL` on `PEER`, and
//! `any PROTOCOL\n` dials any provider of it. On success the rest of the input goes to
//! the remote and the remote's answer comes back, both at once, each direction closing
//! its write side when its source ends. A stream that fails on the way fails ours,
//! with the error as the reason: a remote cell's failure arrives as `the remote cell
//! failed: <its reason>`, so a refusal deep in a chain reaches the origin's `+status`
//! trailer with its text. A failed dial fails the stream with the reason
//! `dial failed: <error>` (`not-allowed`, `hop-limit-reached`, `unreachable: <text>`,
//! …) and no answer bytes. A malformed first line gets `error: …` and fails the
//! stream with that reason.
wit_bindgen::generate!({ world: "dialing-cell", path: "../../wit", generate_all });

#[path = "../../shared/dialing.rs"]
mod dialing;

use dialing::{FirstLine, describe, fail, read_line, refuse, write_all};
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wetware::streams::dialer::{dial, dial_any};
use wetware::streams::streams::create_connection;

/// Largest chunk moved per splice.
const CHUNK: u64 = 64 * 1024;

struct Forward;

impl exports::wasi::cli::run::Guest for Forward {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();

        let Some(FirstLine { line, rest }) = read_line(&input).map_err(drop)? else {
            return refuse(&output, "error: no first line within 1 KiB");
        };
        let line = String::from_utf8(line).unwrap_or_default();
        let dialed = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["any", protocol] => dial_any(protocol),
            [peer, protocol] => dial(peer, protocol),
            _ => {
                return refuse(
                    &output,
                    "error: the first line must be `PEER PROTOCOL` or `any PROTOCOL`",
                );
            }
        };
        let remote = match dialed {
            Ok(remote) => remote,
            Err(error) => return fail(&format!("dial failed: {}", describe(&error))),
        };

        // Each pipe closes its write side (the remote's or our peer's EOF) when its
        // source ends; both move at once, so neither side can stall the other. If
        // sending fails (most often because the remote cell has already ended), the
        // remote's answer still decides: its failure is the better reason.
        let remote_output = remote.get_output_stream();
        let mut send_failed = write_all(&remote_output, &rest).err().map(reason);
        let mut pipes = [
            send_failed
                .is_none()
                .then(|| Pipe::new(input, remote_output)),
            Some(Pipe::new(remote.get_input_stream(), output)),
        ];
        while pipes.iter().any(Option::is_some) {
            let waiting: Vec<&Pollable> = pipes.iter().flatten().map(Pipe::waits_on).collect();
            poll(&waiting);
            for (i, slot) in pipes.iter_mut().enumerate() {
                if let Some(pipe) = slot {
                    match pipe.advance() {
                        Ok(true) => *slot = None,
                        Ok(false) => {}
                        Err(error) if i == 0 => {
                            send_failed = Some(reason(error));
                            *slot = None;
                        }
                        Err(error) => return fail(&reason(error)),
                    }
                }
            }
        }
        match send_failed {
            Some(why) => fail(&format!("sending: {why}")),
            None => Ok(()),
        }
    }
}

export!(Forward);

/// What went wrong on a stream, as a failure's reason. A remote cell's failure reads
/// `the remote cell failed: <its reason>`.
fn reason(error: StreamError) -> String {
    match error {
        StreamError::Closed => "closed".to_string(),
        // The text's first line; what follows (`Caused by: …`) repeats it.
        StreamError::LastOperationFailed(error) => {
            let text = error.to_debug_string();
            text.lines().next().unwrap_or("failed").to_string()
        }
    }
}

/// One direction of the copy: `from` into `to`, then a flush, then `to` is closed.
struct Pipe {
    /// Children of the streams below, declared first to be dropped first.
    readable: Pollable,
    writable: Pollable,
    from: InputStream,
    to: OutputStream,
    /// `from` has ended and `to` is flushing.
    closing: bool,
}

impl Pipe {
    fn new(from: InputStream, to: OutputStream) -> Self {
        Self {
            readable: from.subscribe(),
            writable: to.subscribe(),
            from,
            to,
            closing: false,
        }
    }

    /// What to wait for before `advance` can make progress: room in `to` (or the end
    /// of its flush) when it has none, else bytes in `from`.
    fn waits_on(&self) -> &Pollable {
        match self.to.check_write() {
            Ok(0) => &self.writable,
            // A closed or failed stream makes `writable` ready at once.
            Ok(_) if !self.closing => &self.readable,
            _ => &self.writable,
        }
    }

    /// Moves what can be moved without blocking. Returns `true` once the pipe is done.
    fn advance(&mut self) -> Result<bool, StreamError> {
        if self.closing {
            return match self.to.check_write() {
                Ok(0) => Ok(false),
                Ok(_) | Err(StreamError::Closed) => Ok(true),
                Err(error) => Err(error),
            };
        }
        match self.to.splice(&self.from, CHUNK) {
            Ok(_) => Ok(false),
            // `from` ended (or `to` was closed): flush what is left, then close.
            Err(StreamError::Closed) => match self.to.flush() {
                Ok(()) => {
                    self.closing = true;
                    Ok(false)
                }
                Err(StreamError::Closed) => Ok(true),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        }
    }
}
