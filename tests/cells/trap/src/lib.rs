//! Traps as soon as it has its connection, before reading anything.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Trap;

impl exports::wasi::cli::run::Guest for Trap {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        eprintln!("about to trap");
        core::arch::wasm32::unreachable()
    }
}

export!(Trap);
