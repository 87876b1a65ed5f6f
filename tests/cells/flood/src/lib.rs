//! Writes without end, whether or not the peer reads.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Flood;

impl exports::wasi::cli::run::Guest for Flood {
    fn run() -> Result<(), ()> {
        let connection = wetware::streams::streams::create_connection();
        let output = connection.get_output_stream();
        let chunk = [b'x'; 4096];
        loop {
            output.blocking_write_and_flush(&chunk).map_err(|_| ())?;
        }
    }
}

export!(Flood);
