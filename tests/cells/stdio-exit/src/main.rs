//! Reads its first line, prints a partial answer, and exits with status 1.
use std::io::{BufRead, Write};

fn main() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    print!("partial");
    let _ = std::io::stdout().flush();
    std::process::exit(1);
}
