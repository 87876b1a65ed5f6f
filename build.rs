//! Builds the cells under `protocols/` for `wasm32-wasip2` and leaves each component in
//! `OUT_DIR/<name>.wasm`, where `src/cell/builtin.rs` embeds it with `include_bytes!`.
//!
//! The guests are a cargo workspace of their own, built by a nested cargo with its own
//! target directory, so the host's build graph never compiles them for the host.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Crates under `protocols/` that are embedded in the binary.
const CELLS: &[&str] = &["calc", "echo", "fanout", "forward", "sha256"];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let protocols = manifest_dir.join("protocols");
    println!("cargo::rerun-if-changed=protocols");
    println!("cargo::rerun-if-changed=wit");

    ensure_target_installed();
    let target_dir = out_dir.join("protocols-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&protocols)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for cell in CELLS {
        build.args(["--package", cell]);
    }
    // Flags and settings meant for the host build must not leak into the guests'.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("failed to run cargo for the cells in protocols/");
    assert!(
        status.success(),
        "building the cells in protocols/ for {TARGET} failed ({status}); \
         is the target installed? `rustup target add {TARGET}`"
    );

    for cell in CELLS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{cell}.wasm"));
        let embedded = out_dir.join(format!("{cell}.wasm"));
        std::fs::copy(&built, &embedded)
            .unwrap_or_else(|e| panic!("copying {} failed: {e}", built.display()));
    }
}

/// A fresh machine may have the toolchain from `rust-toolchain.toml` without its
/// `wasm32-wasip2` standard library (rustup adds the listed targets only when it
/// installs the toolchain itself). Add it through rustup when that is the case, so
/// `cargo run` and `cargo test` need no set-up step.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output();
    let Ok(sysroot) = sysroot else { return };
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if PathBuf::from(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .exists()
    {
        return;
    }
    println!("cargo::warning=installing the {TARGET} target with rustup (once)");
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        add.arg("--toolchain").arg(toolchain);
    }
    match add.status() {
        Ok(status) if status.success() => {}
        other => println!("cargo::warning=`rustup target add {TARGET}` failed: {other:?}"),
    }
}
