//! `/ww/sha256/0.1.0`: reads the whole request, then answers with its SHA-256 digest as
//! 64 lowercase hex digits and a newline, the way `sha256sum` prints it.

wit_bindgen::generate!({
    world: "cell",
    path: "../../wit",
    generate_all,
});

use sha2::{Digest, Sha256};
use wasi::io::streams::StreamError;
use wetware::streams::streams::create_connection;

/// Largest chunk read per call.
const CHUNK: u64 = 64 * 1024;

struct Sha256Cell;

impl exports::wasi::cli::run::Guest for Sha256Cell {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let mut hasher = Sha256::new();
        loop {
            match input.blocking_read(CHUNK) {
                Ok(chunk) => hasher.update(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => return Err(()),
            }
        }
        let answer = format!("{:x}\n", hasher.finalize());
        let output = connection.get_output_stream();
        output
            .blocking_write_and_flush(answer.as_bytes())
            .map_err(|_| ())?;
        Ok(())
    }
}

export!(Sha256Cell);
