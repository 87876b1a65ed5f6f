// Shared by `version-1` and `version-2`: two components that differ only in the
// version they announce, for the hot-swap tests. Each stream gets `v<VERSION>\n`,
// then an echo of what it sends.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

use wasi::io::streams::StreamError;
use wetware::streams::streams::create_connection;

struct Versioned;

impl exports::wasi::cli::run::Guest for Versioned {
    fn run() -> Result<(), ()> {
        let connection = create_connection();
        let input = connection.get_input_stream();
        let output = connection.get_output_stream();
        output
            .blocking_write_and_flush(format!("v{VERSION}\n").as_bytes())
            .map_err(|_| ())?;
        loop {
            match output.blocking_splice(&input, 64 * 1024) {
                Ok(_) => {}
                Err(StreamError::Closed) => return Ok(()),
                Err(StreamError::LastOperationFailed(_)) => return Err(()),
            }
        }
    }
}

export!(Versioned);
