//! Version 1 of the hot-swap test cell (see `../../versioned.rs`).
const VERSION: u32 = 1;
include!("../../versioned.rs");
