//! `ww run`'s settings: one type, [`Settings`], that clap reads from the flags and
//! serde from a TOML file; [`Settings::over`] lays the flags over the file, and
//! [`NodeConfig::merge`] fills in the defaults and checks the result. A file:
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/2025", "/ip4/0.0.0.0/udp/2025/quic-v1"]
//! identity = "/var/lib/ww/identity.key"   # default: ~/.local/share/ww/identity.key
//! shutdown_grace_s = 10                     # how long running guests get on shutdown
//! admin = "127.0.0.1:2026"                  # dashboard, /healthz, /metrics, /status; off if absent
//! admin_token = "…"                         # required on every admin request; needed off loopback
//! cache = "/var/cache/ww"                   # compiled cells; false = none; default ~/.cache/ww/cells
//! bootstrap = ["/ip4/192.0.2.7/tcp/2025/p2p/12D3KooW…"]   # peers to join the DHT through
//! mdns = true                               # find peers on the local network
//! dht = "auto"                              # "server" to always answer DHT queries, "client" never
//! relay = false                             # relay connections for peers behind NAT
//! external_addresses = []                   # addresses others reach this node at
//!
//! [limits]                                  # node-wide; see `crate::limits` for every key
//! cpu_ms = 10000
//!
//! [cells.echo]                              # any name; it shows in logs
//! protocol = "/ww/echo/0.1.0"
//! builtin = "echo"                          # a cell compiled into ww …
//!
//! [cells.mine]
//! protocol = "/my/app/1.0.0"
//! wasm = "cells/mine.wasm"                  # … or a component file, relative to this file
//! allow = ["12D3KooW…"]                     # only these peers may open streams
//! mode = "stdio"                            # or "connection"; detected if absent
//! dial = ["/ww/echo/0.1.0"]                 # may open streams on these (true: any)
//! limits = { memory_mb = 256, max_instances = 10 }
//! ```
//!
//! # Layout
//! `settings` holds [`Settings`], the schema the flags and the file share, and how
//! they are laid over each other; `cells` a cell to serve ([`CellSpec`]), from a flag
//! or a `[cells.<name>]` table; `node_config` the merged, checked [`NodeConfig`] and
//! its defaults; `parse` the parsers of the flags' `PROTOCOL=…` forms.

mod cells;
mod node_config;
mod parse;
mod settings;

pub use cells::{CellEntry, CellSource, CellSpec, check_cell_protocol};
pub use node_config::{DEFAULT_LISTEN, DEFAULT_SHUTDOWN_GRACE, NodeConfig, cache_dir};
pub use parse::{parse_allow, parse_cell_mode, parse_dial_grant, parse_peer, parse_protocol};
pub use settings::{CacheSetting, Settings};
