//! Dials, and lists providers, as its first line says, holding every stream it opens.
//!
//! The first line is one or more steps separated by `;`: `PEER PROTOCOL N` dials
//! `PROTOCOL` on `PEER` N times, `providers PROTOCOL` lists its providers once.
//! Attempt `i` (counted from 0 across all steps) answers with the line `ok <i>`
//! (`providers <i>: <count>` for a listing) or `failed <i>: <error>` (`limit-reached`,
//! `invalid-peer: <text>`, `unreachable: <text>`, …). The streams stay open until the
//! cell returns, so the attempts show how many a cell may hold at once. A malformed
//! first line gets `error: …` and fails the stream.
wit_bindgen::generate!({ world: "dialing-cell", path: "../../../wit", generate_all });

#[path = "../../../../protocols/shared/dialing.rs"]
mod dialing;

use dialing::{FirstLine, describe, read_line, refuse, write_all};
use wetware::streams::dialer::{dial, providers};
use wetware::streams::streams::create_connection;

struct DialMany;

/// One step of the first line.
enum Step<'a> {
    Dial {
        peer: &'a str,
        protocol: &'a str,
        attempts: u32,
    },
    Providers(&'a str),
}

fn parse(step: &str) -> Option<Step<'_>> {
    match step.split_whitespace().collect::<Vec<_>>()[..] {
        ["providers", protocol] => Some(Step::Providers(protocol)),
        [peer, protocol, attempts] => Some(Step::Dial {
            peer,
            protocol,
            attempts: attempts.parse().ok()?,
        }),
        _ => None,
    }
}

impl exports::wasi::cli::run::Guest for DialMany {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();

        let Some(FirstLine { line, .. }) = read_line(&input).map_err(drop)? else {
            return refuse(&output, "error: no first line within 1 KiB");
        };
        let line = String::from_utf8(line).unwrap_or_default();
        let Some(steps) = line.split(';').map(parse).collect::<Option<Vec<_>>>() else {
            return refuse(
                &output,
                "error: each step must be `PEER PROTOCOL N` or `providers PROTOCOL`",
            );
        };

        // Dropped only when `run` returns: every stream opened stays open until then.
        let mut held = Vec::new();
        let mut i = 0;
        for step in steps {
            match step {
                Step::Dial {
                    peer,
                    protocol,
                    attempts,
                } => {
                    for _ in 0..attempts {
                        let line = match dial(peer, protocol) {
                            Ok(remote) => {
                                held.push(remote);
                                format!("ok {i}\n")
                            }
                            Err(error) => format!("failed {i}: {}\n", describe(&error)),
                        };
                        write_all(&output, line.as_bytes()).map_err(drop)?;
                        i += 1;
                    }
                }
                Step::Providers(protocol) => {
                    let line = match providers(protocol) {
                        Ok(peers) => format!("providers {i}: {}\n", peers.len()),
                        Err(error) => format!("failed {i}: {}\n", describe(&error)),
                    };
                    write_all(&output, line.as_bytes()).map_err(drop)?;
                    i += 1;
                }
            }
        }
        Ok(())
    }
}

export!(DialMany);
