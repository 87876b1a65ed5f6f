//! Cells that move: components named by their content, kept in a store, fetched
//! from peers.
//!
//! - [`id`]: [`ContentId`], the CID (v1, raw, SHA-256 — `bafkrei…`) of a component's
//!   bytes; the same bytes have the same name on every node.
//! - [`store`]: [`Store`], the node's components on disk, one file per CID, checked
//!   against its name on every read.
//!
//! The wire that moves components between nodes is [`crate::net::code`].

pub mod id;
pub mod store;

pub use id::{ContentId, ContentMismatch, ParseContentIdError};
pub use store::{Corruption, Store, StoreError};
