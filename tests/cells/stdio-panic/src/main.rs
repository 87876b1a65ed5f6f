//! Panics (which aborts: a trap) after reading its first line.
use std::io::BufRead;

fn main() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    eprintln!("about to panic");
    panic!("this cell always panics");
}
