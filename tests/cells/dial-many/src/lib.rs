//! Dials the same peer and protocol N times, holding every stream it opens.
//!
//! The first line is `PEER PROTOCOL N\n`. Attempt `i` (counted from 0) answers with the
//! line `ok <i>` or `failed <i>: <error>` (`limit-reached`, `unreachable: <text>`, …).
//! The streams stay open until the cell returns, so the attempts show how many a cell
//! may hold at once. A malformed first line gets `error: …` and aborts the stream.
wit_bindgen::generate!({ world: "dialing-cell", path: "../../../wit", generate_all });

#[path = "../../../../protocols/shared/dialing.rs"]
mod dialing;

use dialing::{FirstLine, describe, read_line, refuse, write_all};
use wetware::streams::dialer::dial;
use wetware::streams::streams::create_connection;

struct DialMany;

impl exports::wasi::cli::run::Guest for DialMany {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();

        let Some(FirstLine { line, .. }) = read_line(&input).map_err(drop)? else {
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
