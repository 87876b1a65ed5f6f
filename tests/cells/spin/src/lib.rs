//! Loops forever without touching its stream: only the CPU limit can stop it.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Spin;

impl exports::wasi::cli::run::Guest for Spin {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Spin);
