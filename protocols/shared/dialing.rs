//! Text plumbing shared by the cells that dial (`fanout`, `forward`, and the tests'
//! `dial-many`): the first line of a request, whole writes, one-line errors.
//!
//! Compiled into each of them with `#[path]`, against that cell's own `wit-bindgen`
//! bindings (generated at its crate root), so no crate has to export bindings to
//! another. Each cell uses part of it.
#![allow(dead_code)]

use crate::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::wetware::streams::dialer::DialError;

/// Longest first line, newline included.
pub const MAX_LINE: usize = 1024;

/// The first line of a request and what was read past it.
pub struct FirstLine {
    /// The line without its `\n`.
    pub line: Vec<u8>,
    /// The start of what follows the line.
    pub rest: Vec<u8>,
}

/// Reads the first line of `input`, never more than `MAX_LINE` bytes. `None` if there
/// is no newline within them or before EOF.
pub fn read_line(input: &InputStream) -> Result<Option<FirstLine>, StreamError> {
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
            let rest = buffer.split_off(start + at + 1);
            buffer.pop();
            return Ok(Some(FirstLine { line: buffer, rest }));
        }
    }
    Ok(None)
}

/// Writes all of `bytes`, waiting whenever the stream is full, then flushes. Unlike
/// `blocking-write-and-flush` this takes any length.
pub fn write_all(output: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
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

/// Answers a request the cell cannot serve with `line` and fails the stream, with
/// `line` as the reason.
pub fn refuse(output: &OutputStream, line: &str) -> Result<(), ()> {
    // The stream fails either way; a failed write changes nothing.
    let _ = write_all(output, format!("{line}\n").as_bytes());
    fail(line)
}

/// Fails the stream with `reason`: the node takes the last line a cell wrote to
/// stderr as the reason for its failure (`run returned an error: <reason>`), which a
/// `+status` peer or the cell that dialed this one reads.
pub fn fail(reason: &str) -> Result<(), ()> {
    eprintln!("{}", one_line(reason));
    Err(())
}

/// A `dial-error` as an answer shows it: the case in kebab case, then `: <text>` for
/// the cases that carry one.
pub fn describe(error: &DialError) -> String {
    match error {
        DialError::NotAllowed => "not-allowed".to_string(),
        DialError::LimitReached => "limit-reached".to_string(),
        DialError::HopLimitReached => "hop-limit-reached".to_string(),
        DialError::InvalidPeer(text) => format!("invalid-peer: {}", one_line(text)),
        DialError::InvalidProtocol(text) => format!("invalid-protocol: {}", one_line(text)),
        DialError::NoProviders => "no-providers".to_string(),
        DialError::Unreachable(text) => format!("unreachable: {}", one_line(text)),
    }
}

/// `text` with its line breaks turned into spaces, so it cannot break line framing.
pub fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
