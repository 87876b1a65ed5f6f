//! `/ww/echo/0.1.0`: copies every byte the peer sends back to it, until the peer closes
//! its write side; then closes ours.
//!
//! The copy is a `splice`: the host moves the bytes from the input stream to the output
//! stream without passing them through this guest's linear memory.

wit_bindgen::generate!({
    world: "cell",
    path: "../../wit",
    generate_all,
});

use wasi::io::streams::StreamError;
use wetware::streams::streams::create_connection;

/// Largest chunk moved per splice call.
const CHUNK: u64 = 64 * 1024;

struct Echo;

impl exports::wasi::cli::run::Guest for Echo {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();
        loop {
            match output.blocking_splice(&input, CHUNK) {
                Ok(_) => {}
                // The peer closed its write side (or stopped reading ours): we are done.
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => return Err(()),
            }
        }
        // Dropping the output stream flushes it and closes our write side.
        drop(output);
        Ok(())
    }
}

export!(Echo);
