//! Writes a partial answer, then exits with status 1 without reading its input.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct ExitEarly;

impl exports::wasi::cli::run::Guest for ExitEarly {
    fn run() -> Result<(), ()> {
        let connection = wetware::streams::streams::create_connection();
        let output = connection.get_output_stream();
        let _ = output.blocking_write_and_flush(b"partial");
        std::process::exit(1)
    }
}

export!(ExitEarly);
