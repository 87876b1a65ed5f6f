//! The cell host: one wasmtime [`Engine`](wasmtime::Engine) and
//! [`Linker`](wasmtime::component::Linker) per process, each cell compiled
//! and pre-instantiated once at start-up, and a fresh instance per peer stream.
//!
//! Per stream the only work is: a new `Store`, `instantiate_async` from the cell's
//! [`CellPre`], and `wasi:cli/run`. The stream's halves are handed to the guest
//! through `wetware:streams` (see `wit/streams.wit`) without channels or copies of
//! our own; see `io` for the close and backpressure rules.
//!
//! # Layout
//! `runtime` holds the [`Runtime`]: the engine, the linker, and loading a cell;
//! `world` what a component must import and export to be a cell, and its [`Mode`];
//! `instance` a loaded [`Cell`] serving one stream with a fresh instance, and how
//! it ended ([`Failure`]). The host side of the WIT interfaces is in `host`,
//! `streams` and [`dialer`]; `io` adapts a peer stream to `wasi:io`.

pub mod builtin;
pub mod cache;
pub mod dialer;
mod host;
mod instance;
mod io;
pub mod local;
pub mod meter;
mod runtime;
mod streams;
mod world;

pub use cache::Cache;
pub use dialer::{DialGrant, DialSetting};
pub use host::Host;
pub use instance::{Cell, Failure};
pub use io::{GuestLog, MeteredReader, PeerInputStream, PeerOutputStream, PeerWriter, SyncReader};
pub use meter::LimitExceeded;
pub use runtime::{CellOptions, EPOCH_TICK, MAX_WASM_STACK, PoolSize, Runtime, load_file};
pub use streams::{Cell as CellBindings, CellPre, Connection};
pub use world::{DIALER_INTERFACE, Mode, STREAMS_INTERFACE};
