//! Version 2 of the hot-swap test cell (see `../../versioned.rs`).
const VERSION: u32 = 2;
include!("../../versioned.rs");
