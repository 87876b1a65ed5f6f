//! Takes its connection and sleeps for a minute without touching it, then succeeds:
//! only a wall-clock limit (its own or its caller's deadline) ends it sooner, and its
//! peer closing or resetting the stream does not.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

use wasi::clocks::monotonic_clock::subscribe_duration;

struct Nap;

impl exports::wasi::cli::run::Guest for Nap {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        subscribe_duration(60_000_000_000).block();
        Ok(())
    }
}

export!(Nap);
