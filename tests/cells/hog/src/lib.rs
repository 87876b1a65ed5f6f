//! Allocates (and touches) memory without end: the memory cap must stop it.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

struct Hog;

impl exports::wasi::cli::run::Guest for Hog {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(Hog);
