//! Takes its connection and waits for input that never comes, writing nothing:
//! only the idle limit ends it.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Sleepy;

impl exports::wasi::cli::run::Guest for Sleepy {
    fn run() -> Result<(), ()> {
        let connection = wetware::streams::streams::create_connection();
        let input = connection.get_input_stream();
        loop {
            match input.blocking_read(1) {
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

export!(Sleepy);
