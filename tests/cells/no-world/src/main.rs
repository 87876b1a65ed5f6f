//! A plain WASI command that does not import `wetware:streams`: ww must refuse it at
//! start-up and say what is missing.
fn main() {
    println!("hello from a command that is not a cell");
}
