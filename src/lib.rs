//! # ww
//!
//! A libp2p node that hosts WebAssembly *cells*. Each cell is a component (WASI
//! preview 2) bound to a libp2p protocol ID; every stream a peer opens on that
//! protocol runs a fresh instance of the cell, which reaches the stream through the
//! `wetware:streams` interface (`wit/streams.wit`).
//!
//! # Layout
//! The modules follow the data path of a stream:
//! - [`net`]: the swarm (TCP + noise + yamux, QUIC, relay; identify, ping, the DHTs,
//!   mDNS, AutoNAT, DCUtR) and [`net::router`], which accepts streams on cell
//!   protocols without losing any; a [`net::network::Network`] handle asks a swarm to
//!   dial, look up and open, and [`net::control`] answers on the swarm's side;
//!   [`net::discovery`] joins the DHTs and announces the node's cells;
//!   [`net::status`] is the `+status`/`+call` wire that tells a peer how a cell ended;
//!   [`net::client`] is a peer that only asks.
//! - [`node`]: wiring — runs the swarm and routes each stream, in a task of its own, to
//!   its protocol's handler (the cells, or the stats protocol);
//!   [`admission`] decides whether and when a stream may start an instance.
//! - [`cell`]: the wasmtime engine, the `wetware:streams` host, one instance per stream.
//! - [`config`], [`limits`], [`identity`]: the node's settings, what guests and
//!   peers may use, and the node's persistent peer ID.
//! - [`dial`]: `ww dial` and `ww find`, a stream between this terminal and a remote
//!   cell, and the nodes that serve a cell; [`devnet`]: a local multi-node cluster.
//! - [`metrics`], [`admin`]: what the node counts, and the HTTP endpoint showing it.
//! - [`bench`], [`suite`]: `ww bench`, a load generator for any node, and the
//!   side-by-side suite against raw TCP and native rust-libp2p.

pub mod admin;
pub mod admission;
pub mod bench;
pub mod cell;
pub mod config;
pub mod content;
pub mod devnet;
pub mod dial;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod node;
pub mod suite;
