//! The whole of a stdio echo cell: copy stdin to stdout with nothing but std.
fn main() -> std::io::Result<()> {
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())?;
    Ok(())
}
