//! Recurses without end: the wasm stack limit must trap it.
wit_bindgen::generate!({ world: "cell", path: "../../../wit", generate_all });

#[inline(never)]
#[allow(unconditional_recursion)]
fn deeper(n: u64, pad: [u64; 16]) -> u64 {
    let pad = std::hint::black_box(pad);
    deeper(n + 1, pad) + pad[(n % 16) as usize]
}

struct Recurse;

impl exports::wasi::cli::run::Guest for Recurse {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        std::hint::black_box(deeper(0, [7; 16]));
        Ok(())
    }
}

export!(Recurse);
