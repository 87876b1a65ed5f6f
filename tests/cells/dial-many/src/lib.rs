//! Dials the same peer and protocol N times, holding every stream it opens.
//!
//! The first line is `PEER PROTOCOL N\n`. Attempt `i` (counted from 0) answers with the
//! line `ok <i>` or `failed <i>: <error>` (`limit-reached`, `unreachable: <text>`, …).
//! The streams stay open until the cell returns, so the attempts show how many a cell
//! may hold at once. A malformed first line gets `error: …` and aborts the stream.
wit_bindgen::generate!({ world: "dialing-cell", path: "../../../wit", generate_all });

use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wetware::streams::dialer::{DialError, dial};
use wetware::streams::streams::create_connection;

/// Longest first line, newline included.
const MAX_LINE: usize = 1024;

struct DialMany;

impl exports::wasi::cli::run::Guest for DialMany {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();

        let Some(line) = read_line(&input).map_err(drop)? else {
            return refuse(&output, "error: no first line within 1 KiB");
        };
        let line = String::from_utf8(line).unwrap_or_default();
        let (peer, protocol, attempts) = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [peer, protocol, attempts] => match attempts.parse::<u32>() {
                Ok(attempts) => (peer, protocol, attempts),
                Err(_) => return refuse(&output, "error: N must be a number"),
            },
            _ => return refuse(&output, "error: the first line must be `PEER PROTOCOL N`"),
        };

        // Dropped only when `run` returns: every stream opened stays open until then.
        let mut held = Vec::new();
        for i in 0..attempts {
            let line = match dial(peer, protocol) {
                Ok(remote) => {
                    held.push(remote);
                    format!("ok {i}\n")
                }
                Err(error) => format!("failed {i}: {}\n", describe(&error)),
            };
            write_all(&output, line.as_bytes()).map_err(drop)?;
        }
        Ok(())
    }
}

export!(DialMany);

/// Reads the first line and returns it without its `\n`. `None` if there is no newline
/// within `MAX_LINE` bytes or before EOF. Bytes past the line are not read.
fn read_line(input: &InputStream) -> Result<Option<Vec<u8>>, StreamError> {
    let mut buffer = Vec::new();
    while buffer.len() < MAX_LINE {
        let chunk = match input.blocking_read((MAX_LINE - buffer.len()) as u64) {
            Ok(chunk) => chunk,
            Err(StreamError::Closed) => return Ok(None),
            Err(error) => return Err(error),
        };
        let start = buffer.len();
        buffer.extend_from_slice(&chunk);
        if let Some(at) = buffer[start..].iter().position(|&byte| byte == b'\n') {
            buffer.truncate(start + at);
            return Ok(Some(buffer));
        }
    }
    Ok(None)
}

/// Writes all of `bytes`, waiting whenever the stream is full, then flushes.
fn write_all(output: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    let ready = output.subscribe();
    while !bytes.is_empty() {
        let permit = output.check_write()?;
        if permit == 0 {
            ready.block();
            continue;
        }
        let n = bytes
            .len()
            .min(usize::try_from(permit).unwrap_or(usize::MAX));
        output.write(&bytes[..n])?;
        bytes = &bytes[n..];
    }
    drop(ready);
    output.blocking_flush()
}

/// Answers a malformed request with `line` and aborts the stream.
fn refuse(output: &OutputStream, line: &str) -> Result<(), ()> {
    let _ = write_all(output, format!("{line}\n").as_bytes());
    Err(())
}

/// A `dial-error` as the answer shows it: the case in kebab case, then `: <text>` for
/// the cases that carry one.
fn describe(error: &DialError) -> String {
    match error {
        DialError::NotAllowed => "not-allowed".to_string(),
        DialError::LimitReached => "limit-reached".to_string(),
        DialError::InvalidPeer(text) => format!("invalid-peer: {}", one_line(text)),
        DialError::InvalidProtocol(text) => format!("invalid-protocol: {}", one_line(text)),
        DialError::NoProviders => "no-providers".to_string(),
        DialError::Unreachable(text) => format!("unreachable: {}", one_line(text)),
    }
}

/// `text` with its line breaks turned into spaces, so it stays on one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
