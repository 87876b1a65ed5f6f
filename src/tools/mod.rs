//! Commands that drive nodes rather than being one: `ww bench`, `ww bench-suite` (and
//! its hidden baseline servers) and `ww devnet`. They live in the binary, not the
//! library, so `ww` the library holds only what a node needs.

pub mod bench;
pub mod devnet;
pub mod suite;
