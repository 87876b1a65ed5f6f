//! Calls `create-connection` twice: a guest error (a trap), never a host panic.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Twice;

impl exports::wasi::cli::run::Guest for Twice {
    fn run() -> Result<(), ()> {
        let _first = wetware::streams::streams::create_connection();
        let _second = wetware::streams::streams::create_connection();
        Ok(())
    }
}

export!(Twice);
