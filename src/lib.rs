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
//!   dial, look up and open, and [`net::control`] answers on the swarm's side,
//!   keeping the round trip ping measures to each peer, by which [`net::rtt`] ranks a
//!   protocol's providers closest first;
//!   [`net::discovery`] joins the DHTs and announces the node's cells;
//!   [`net::status`] is the `+status`/`+call` wire that tells a peer how a cell ended
//!   (its codec, the node's writer, the peer's readers, the call header);
//!   [`net::code`] is the `/ww/code/1.0.0` wire on which nodes exchange components;
//!   [`net::dashboard`] is the one on which a node tells where its dashboard is;
//!   [`net::client`] is a peer that only asks.
//! - [`node`]: wiring — runs the swarm and routes each stream, in a task of its own, to
//!   its protocol's handler (the cells it serves now, each a version that a deployment
//!   or a SIGHUP may swap; stats; the code exchange; deploy and the cell listing);
//!   [`admission`] decides whether and when a stream may start an instance.
//! - [`cell`]: the wasmtime runtime (engine, linker, loading, the world check), one
//!   instance per stream, the `wetware:streams` host and its `wasi:io` adapters.
//! - [`config`], [`limits`], [`identity`]: the node's settings (the schema flags and
//!   file share, the cells to serve, the merged config), what guests and peers may
//!   use, and the node's persistent peer ID.
//! - [`content`]: a component's name is its content ([`content::ContentId`], a CIDv1
//!   `bafkrei…`), and the store that keeps components by that name.
//! - [`manage`]: `ww deploy`, `ww undeploy`, `ww cells` and `ww id`, over
//!   [`net::manage`]'s wires.
//! - [`dial`]: `ww dial` and `ww find`, a stream between this terminal and a remote
//!   cell, and the nodes that serve a cell.
//! - [`metrics`], [`admin`]: what the node counts, and the HTTP endpoint showing it
//!   (metrics, status, the dashboard and its live feed).
//!
//! The tooling that drives nodes rather than being one — `ww bench` (a load
//! generator), `ww bench-suite` (the side-by-side suite against raw TCP and native
//! rust-libp2p) and `ww devnet` (a local multi-node cluster) — lives in the binary,
//! under `src/tools/`, behind the default `cli` feature.

pub mod admin;
pub mod admission;
pub mod cell;
pub mod config;
pub mod content;
pub mod dial;
pub mod identity;
pub mod limits;
pub mod manage;
pub mod metrics;
pub mod net;
pub mod node;
