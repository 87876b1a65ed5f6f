//! A plain WASI command (no wit-bindgen, no `wetware:streams`): answers without
//! reading its input, then exits 0.
fn main() {
    println!("hello from a command that never reads");
}
