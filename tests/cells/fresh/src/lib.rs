//! Proves that every stream gets a fresh instance: writes how many times `run` has
//! been called in this instance (always 1 if instances are fresh), a newline, then
//! echoes the input.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

use std::sync::atomic::{AtomicU32, Ordering};
use wasi::io::streams::StreamError;
use wetware::streams::streams::create_connection;

static RUNS: AtomicU32 = AtomicU32::new(0);

struct Fresh;

impl exports::wasi::cli::run::Guest for Fresh {
    fn run() -> Result<(), ()> {
        let runs = RUNS.fetch_add(1, Ordering::SeqCst) + 1;
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();
        output.blocking_write_and_flush(format!("{runs}\n").as_bytes()).map_err(|_| ())?;
        loop {
            match output.blocking_splice(&input, 64 * 1024) {
                Ok(_) => {}
                Err(StreamError::Closed) => return Ok(()),
                Err(StreamError::LastOperationFailed(_)) => return Err(()),
            }
        }
    }
}

export!(Fresh);
