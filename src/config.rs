//! `ww run`'s settings: one type, [`Settings`], that clap reads from the flags and
//! serde from a TOML file; [`Settings::over`] lays the flags over the file, and
//! [`NodeConfig::merge`] fills in the defaults and checks the result. A file:
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/2025", "/ip4/0.0.0.0/udp/2025/quic-v1"]
//! identity = "/var/lib/ww/identity.key"   # default: ~/.local/share/ww/identity.key
//! shutdown_grace_s = 10                     # how long running guests get on shutdown
//! admin = "127.0.0.1:2026"                  # /healthz, /metrics, /status; off if absent
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Deserialize;

use crate::cell::builtin::{self, Builtin};
use crate::cell::{DialGrant, DialSetting, Mode};
use crate::limits::{LimitOverrides, Limits};
use crate::net::{DhtMode, NetOptions};

/// Where the node listens unless told otherwise.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/2025", "/ip4/0.0.0.0/udp/2025/quic-v1"];
/// How long running guests may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `ww run`'s settings: clap reads them from the flags, serde from the config file,
/// and [`Settings::over`] lays the flags over the file. A field only one side can set
/// is skipped by the other (`#[serde(skip)]`: a flag the file may not spell;
/// `#[arg(skip)]`: a key with no flag).
#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; repeatable [default: /ip4/0.0.0.0/tcp/2025 and
    /// /ip4/0.0.0.0/udp/2025/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(default)]
    pub listen: Vec<Multiaddr>,
    /// Serve a component (FILE.wasm, or builtin:NAME for a cell compiled into ww) on a
    /// protocol; repeatable.
    #[arg(long, value_name = "PROTOCOL=FILE.wasm|builtin:NAME", value_parser = CellSpec::parse_flag)]
    #[serde(skip)]
    pub cell: Vec<CellSpec>,
    /// A TOML config file (see the README).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The identity file, created if missing [default: ~/.local/share/ww/identity.key].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Only let this peer open streams on this cell (repeatable; the cell then
    /// refuses everyone else).
    #[arg(long, value_name = "PROTOCOL=PEERID", value_parser = parse_allow)]
    #[serde(skip)]
    pub allow: Vec<(StreamProtocol, PeerId)>,
    /// Force how the cell on PROTOCOL reaches its stream (stdio or connection);
    /// detected from its imports otherwise. Repeatable.
    #[arg(long, value_name = "PROTOCOL=MODE", value_parser = parse_cell_mode)]
    #[serde(skip)]
    pub cell_mode: Vec<(StreamProtocol, Mode)>,
    /// Let the cell on PROTOCOL open streams to other nodes (any protocol, or only
    /// the listed ones); repeatable.
    #[arg(long, value_name = "PROTOCOL[=TARGET,…]", value_parser = parse_dial_grant)]
    #[serde(skip)]
    pub grant_dial: Vec<(StreamProtocol, DialGrant)>,
    /// Cache compiled cells here [default: ~/.cache/ww/cells]; the last one given wins.
    #[arg(long, value_name = "DIR", overrides_with = "cache_dir")]
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
    /// Compile every cell at start-up; read and write no cache.
    #[arg(long)]
    #[serde(skip)]
    pub no_cache: bool,
    /// Serve /healthz, /metrics and /status over HTTP on this address (e.g.
    /// 127.0.0.1:2026); off unless given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Join the network (the DHT) through this peer, a full address ending in
    /// /p2p/<peer-id>; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(default)]
    pub bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    #[serde(skip)]
    pub no_mdns: bool,
    /// Answer WAN DHT queries: auto (once reachable), server (always) or client
    /// (never) [default: auto]. The LAN DHT (non-global addresses) is always answered.
    #[arg(long = "dht-mode", value_enum, value_name = "MODE")]
    pub dht: Option<DhtMode>,
    /// Relay connections for peers that cannot be reached directly (circuit relay v2).
    #[arg(long)]
    #[serde(default)]
    pub relay: bool,
    /// An address others can reach this node at (a public IP, a port forward);
    /// repeatable. Makes the node a DHT server in auto mode and lets it relay.
    #[arg(long = "external-address", value_name = "MULTIADDR")]
    #[serde(default)]
    pub external_addresses: Vec<Multiaddr>,
    /// Node-wide limits (`[limits]`; a flag per key).
    #[command(flatten)]
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Seconds running guests get to finish on shutdown.
    #[arg(skip)]
    pub shutdown_grace_s: Option<u64>,
    /// Where compiled cells are cached; `false` turns the cache off.
    #[arg(skip)]
    pub cache: Option<CacheSetting>,
    /// Whether to find peers on the local network (default: yes).
    #[arg(skip)]
    pub mdns: Option<bool>,
    /// Cells by name (`[cells.<name>]`).
    #[arg(skip)]
    #[serde(default)]
    pub cells: BTreeMap<String, CellEntry>,
}

/// The `cache` key: a directory, or `false` for no cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CacheSetting {
    /// Cache compiled cells in this directory.
    Dir(PathBuf),
    /// `false`: compile every cell at every start; `true`: the default directory.
    Enabled(bool),
}

/// One `[cells.<name>]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellEntry {
    /// The libp2p protocol the cell is served on.
    pub protocol: String,
    /// A component file.
    pub wasm: Option<PathBuf>,
    /// The name of a cell compiled into ww.
    pub builtin: Option<String>,
    /// Peers allowed to open streams; everyone if absent.
    pub allow: Option<Vec<String>>,
    /// `"stdio"` or `"connection"`; detected from the component if absent.
    pub mode: Option<Mode>,
    /// What the cell may dial: `true` (anything), `false`, or a list of protocols.
    pub dial: Option<DialSetting>,
    /// Limits for this cell only.
    #[serde(default)]
    pub limits: LimitOverrides,
}

impl Settings {
    /// Reads and parses a config file. Relative cell paths are made relative to the
    /// file's directory.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut file: Settings = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for entry in file.cells.values_mut() {
            if let Some(wasm) = entry.wasm.as_mut().filter(|wasm| wasm.is_relative()) {
                *wasm = base.join(&*wasm);
            }
        }
        Ok(file)
    }

    /// The node's configuration: these settings (the flags) over those of the
    /// `--config` file, if one is given.
    pub fn into_config(self) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        NodeConfig::merge(file, self)
    }

    /// These settings laid over `below`'s — the flags over the file — in one place:
    /// `listen`, `identity`, `admin`, `dht` and the cache directory replace the
    /// values below; cells, `allow`, `grant-dial`, `cell-mode`, `bootstrap` and
    /// external addresses add to them; `--no-mdns`, `--relay` and `--no-cache` win;
    /// limits set here override those set below, key by key.
    pub fn over(self, below: Settings) -> Settings {
        Settings {
            listen: if self.listen.is_empty() {
                below.listen
            } else {
                self.listen
            },
            cell: added(below.cell, self.cell),
            config: self.config.or(below.config),
            identity: self.identity.or(below.identity),
            allow: added(below.allow, self.allow),
            cell_mode: added(below.cell_mode, self.cell_mode),
            grant_dial: added(below.grant_dial, self.grant_dial),
            cache_dir: self.cache_dir.or(below.cache_dir),
            no_cache: self.no_cache || below.no_cache,
            admin: self.admin.or(below.admin),
            bootstrap: added(below.bootstrap, self.bootstrap),
            no_mdns: self.no_mdns || below.no_mdns,
            dht: self.dht.or(below.dht),
            relay: self.relay || below.relay,
            external_addresses: added(below.external_addresses, self.external_addresses),
            limits: self.limits.over(below.limits),
            shutdown_grace_s: self.shutdown_grace_s.or(below.shutdown_grace_s),
            cache: self.cache.or(below.cache),
            mdns: self.mdns.or(below.mdns),
            cells: below.cells.into_iter().chain(self.cells).collect(),
        }
    }
}

/// `below`, then `above`.
fn added<T>(mut below: Vec<T>, above: Vec<T>) -> Vec<T> {
    below.extend(above);
    below
}

/// Where a cell's component comes from.
#[derive(Debug, Clone)]
pub enum CellSource {
    /// Compiled into the binary.
    Builtin(&'static Builtin),
    /// A component file.
    File(PathBuf),
}

/// A cell to serve.
#[derive(Debug, Clone)]
pub struct CellSpec {
    /// Name used in logs.
    pub name: String,
    /// The protocol it answers.
    pub protocol: StreamProtocol,
    /// The component.
    pub source: CellSource,
    /// Peers allowed to open streams; everyone if `None`.
    pub allow: Option<Vec<PeerId>>,
    /// Limits set for this cell only.
    pub limits: LimitOverrides,
    /// A forced mode; detected from the component if `None`.
    pub mode: Option<Mode>,
    /// What its instances may dial.
    pub dial: DialGrant,
}

impl CellSpec {
    /// Parses `--cell PROTOCOL=FILE.wasm`, or `--cell PROTOCOL=builtin:NAME` for a
    /// cell compiled into ww.
    pub fn parse_flag(flag: &str) -> anyhow::Result<Self> {
        let Some((protocol, file)) = flag.split_once('=') else {
            bail!("--cell wants PROTOCOL=FILE.wasm or PROTOCOL=builtin:NAME, got `{flag}`");
        };
        if let Some(name) = file.strip_prefix("builtin:") {
            return Ok(Self {
                name: name.to_string(),
                protocol: parse_protocol(protocol)?,
                source: CellSource::Builtin(find_builtin(name)?),
                allow: None,
                limits: LimitOverrides::default(),
                mode: None,
                dial: DialGrant::Denied,
            });
        }
        let path = PathBuf::from(file);
        let name = path
            .file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into());
        Ok(Self {
            name,
            protocol: parse_protocol(protocol)?,
            source: CellSource::File(path),
            allow: None,
            limits: LimitOverrides::default(),
            mode: None,
            dial: DialGrant::Denied,
        })
    }

    /// Every default built-in cell on its default protocol.
    pub fn builtins() -> Vec<Self> {
        builtin::BUILTINS
            .iter()
            .filter(|cell| cell.default)
            .map(|cell| Self {
                name: cell.name.to_string(),
                protocol: StreamProtocol::new(cell.protocol),
                source: CellSource::Builtin(cell),
                allow: None,
                limits: LimitOverrides::default(),
                mode: None,
                dial: DialGrant::Denied,
            })
            .collect()
    }

    fn from_entry(name: &str, entry: &CellEntry) -> anyhow::Result<Self> {
        let source = match (&entry.wasm, &entry.builtin) {
            (Some(path), None) => CellSource::File(path.clone()),
            (None, Some(builtin)) => CellSource::Builtin(find_builtin(builtin)?),
            _ => bail!("give exactly one of `wasm = \"FILE\"` or `builtin = \"NAME\"`"),
        };
        let allow = match &entry.allow {
            None => None,
            Some(peers) => Some(
                peers
                    .iter()
                    .map(|p| parse_peer(p))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let dial = match &entry.dial {
            None | Some(DialSetting::All(false)) => DialGrant::Denied,
            Some(DialSetting::All(true)) => DialGrant::Any,
            Some(DialSetting::Only(protocols)) => DialGrant::Only(
                protocols
                    .iter()
                    .map(|p| parse_protocol(p))
                    .collect::<Result<_, _>>()
                    .context("dial")?,
            ),
        };
        Ok(Self {
            name: name.to_string(),
            protocol: parse_protocol(&entry.protocol)?,
            source,
            allow,
            limits: entry.limits,
            mode: entry.mode,
            dial,
        })
    }
}

/// A built-in cell by name, or an error listing them.
fn find_builtin(name: &str) -> anyhow::Result<&'static Builtin> {
    builtin::find(name).with_context(|| {
        let known: Vec<_> = builtin::BUILTINS.iter().map(|b| b.name).collect();
        format!(
            "no built-in cell `{name}` (there are: {})",
            known.join(", ")
        )
    })
}

/// Checks a protocol ID the way libp2p wants it: a string starting with `/`.
pub fn parse_protocol(protocol: &str) -> anyhow::Result<StreamProtocol> {
    StreamProtocol::try_from_owned(protocol.to_string())
        .map_err(|_| anyhow::anyhow!("invalid protocol ID `{protocol}`: it must start with `/`"))
}

/// Parses a peer ID, saying what is wrong with it.
pub fn parse_peer(peer: &str) -> anyhow::Result<PeerId> {
    peer.parse()
        .with_context(|| format!("invalid peer ID `{peer}`"))
}

/// Parses the `PROTOCOL=PEERID` form of `--allow`.
pub fn parse_allow(flag: &str) -> anyhow::Result<(StreamProtocol, PeerId)> {
    let Some((protocol, peer)) = flag.split_once('=') else {
        bail!("--allow wants PROTOCOL=PEERID, got `{flag}`");
    };
    Ok((parse_protocol(protocol)?, parse_peer(peer)?))
}

/// Where to cache compiled cells, from the flags and the file's `cache` key.
pub fn cache_dir(
    no_cache: bool,
    flag: Option<PathBuf>,
    file: Option<CacheSetting>,
) -> Option<PathBuf> {
    if no_cache {
        return None;
    }
    match (flag, file) {
        (Some(dir), _) | (None, Some(CacheSetting::Dir(dir))) => Some(dir),
        (None, Some(CacheSetting::Enabled(false))) => None,
        (None, Some(CacheSetting::Enabled(true)) | None) => crate::cell::Cache::default_dir(),
    }
}

/// Parses `--grant-dial PROTOCOL` (the cell on PROTOCOL may dial anything) or
/// `--grant-dial PROTOCOL=TARGET,TARGET…` (only those protocols).
pub fn parse_dial_grant(flag: &str) -> anyhow::Result<(StreamProtocol, DialGrant)> {
    match flag.split_once('=') {
        None => Ok((parse_protocol(flag)?, DialGrant::Any)),
        Some((protocol, targets)) => {
            let targets = targets
                .split(',')
                .map(parse_protocol)
                .collect::<anyhow::Result<_>>()?;
            Ok((parse_protocol(protocol)?, DialGrant::Only(targets)))
        }
    }
}

/// Parses the `PROTOCOL=MODE` form of `--cell-mode`.
pub fn parse_cell_mode(flag: &str) -> anyhow::Result<(StreamProtocol, Mode)> {
    let Some((protocol, mode)) = flag.split_once('=') else {
        bail!("--cell-mode wants PROTOCOL=stdio or PROTOCOL=connection, got `{flag}`");
    };
    let mode = match mode {
        "stdio" => Mode::Stdio,
        "connection" => Mode::Connection,
        other => bail!("unknown mode `{other}`: use `stdio` or `connection`"),
    };
    Ok((parse_protocol(protocol)?, mode))
}

/// Checks that a cell may be served on `protocol`: not a node protocol, and not
/// ending in the suffix that selects a cell's status variant.
fn check_cell_protocol(protocol: &StreamProtocol) -> anyhow::Result<()> {
    if let Some(what) = crate::net::reserved_by(protocol.as_ref()) {
        bail!("protocol {protocol} is reserved: the node itself speaks it ({what})");
    }
    if protocol.as_ref().ends_with(crate::net::status::SUFFIX) {
        let suffix = crate::net::status::SUFFIX;
        bail!("protocol {protocol} ends in `{suffix}`, which selects a cell's status variant");
    }
    Ok(())
}

/// Everything `ww run` needs, after merging the file and the flags.
#[derive(Debug)]
pub struct NodeConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// The identity file.
    pub identity: PathBuf,
    /// Time running guests get on shutdown.
    pub shutdown_grace: Duration,
    /// Node-wide limits.
    pub limits: Limits,
    /// Cells to serve, with distinct protocols.
    pub cells: Vec<CellSpec>,
    /// Where the admin HTTP endpoint listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Where compiled cells are cached, if anywhere.
    pub cache: Option<PathBuf>,
    /// Discovery, DHT, relaying.
    pub network: NetOptions,
}

impl NodeConfig {
    /// Merges a config file's settings with the flags' (see [`Settings::over`]) and
    /// fills in the defaults. With no cell anywhere, the built-in cells are served.
    pub fn merge(file: Settings, flags: Settings) -> anyhow::Result<Self> {
        let Settings {
            listen,
            cell,
            config: _,
            identity,
            allow,
            cell_mode,
            grant_dial,
            cache_dir,
            no_cache,
            admin,
            bootstrap,
            no_mdns,
            dht,
            relay,
            external_addresses,
            limits,
            shutdown_grace_s,
            cache,
            mdns,
            cells,
        } = flags.over(file);
        let listen = if listen.is_empty() {
            DEFAULT_LISTEN
                .iter()
                .map(|a| a.parse().expect("valid"))
                .collect()
        } else {
            listen
        };
        let twice = (1..listen.len()).find(|&i| listen[..i].contains(&listen[i]));
        if let Some(i) = twice {
            bail!("listen address {} is given twice", listen[i]);
        }
        let identity = match identity {
            Some(path) => path,
            None => crate::identity::default_path()?,
        };
        let mut all = Vec::new();
        for (name, entry) in &cells {
            all.push(CellSpec::from_entry(name, entry).with_context(|| format!("[cells.{name}]"))?);
        }
        all.extend(cell);
        if all.is_empty() {
            all = CellSpec::builtins();
        }
        for (protocol, peer) in allow {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--allow {protocol}={peer}: no cell is served on {protocol}");
            };
            cell.allow.get_or_insert_with(Vec::new).push(peer);
        }
        for (protocol, mode) in cell_mode {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--cell-mode {protocol}: no cell is served on {protocol}");
            };
            cell.mode = Some(mode);
        }
        for (protocol, grant) in grant_dial {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--grant-dial {protocol}: no cell is served on {protocol}");
            };
            cell.dial = grant;
        }
        let limits = limits.apply(Limits::DEFAULT);
        limits.check().context("[limits]")?;
        for (i, cell) in all.iter().enumerate() {
            check_cell_protocol(&cell.protocol).with_context(|| format!("cell `{}`", cell.name))?;
            cell.limits
                .apply(limits)
                .check()
                .with_context(|| format!("cell `{}` limits", cell.name))?;
            if let Some(other) = all[..i]
                .iter()
                .find(|other| other.protocol == cell.protocol)
            {
                bail!(
                    "cells `{}` and `{}` both claim protocol {}",
                    other.name,
                    cell.name,
                    cell.protocol
                );
            }
        }
        if let Some(addr) = bootstrap
            .iter()
            .find(|addr| crate::net::discovery::peer_of(addr).is_none())
        {
            bail!("bootstrap address {addr} does not end in /p2p/<peer-id>");
        }
        Ok(Self {
            listen,
            identity,
            shutdown_grace: shutdown_grace_s.map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
            limits,
            cells: all,
            admin,
            cache: self::cache_dir(no_cache, cache_dir, cache),
            network: NetOptions {
                bootstrap,
                mdns: !no_mdns && mdns.unwrap_or(true),
                dht: dht.unwrap_or_default(),
                client: false,
                relay,
                external: external_addresses,
            },
        })
    }

    /// The limits that apply to `cell`: the node's, with the cell's own on top.
    pub fn cell_limits(&self, cell: &CellSpec) -> Limits {
        cell.limits.apply(self.limits)
    }

    /// The largest memory any cell may use, which sizes the instance pool.
    pub fn max_memory_bytes(&self) -> usize {
        self.cells
            .iter()
            .map(|cell| self.cell_limits(cell).memory_bytes())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(cell: Vec<CellSpec>) -> Settings {
        Settings {
            identity: Some("id".into()),
            cell,
            ..Settings::default()
        }
    }

    #[test]
    fn limits_and_allowlists_merge() {
        let peer = PeerId::random();
        let file: Settings = toml::from_str(&format!(
            r#"
            limits = {{ cpu_ms = 100, idle_s = 5 }}
            [cells.e]
            protocol = "/x/echo/1"
            builtin = "echo"
            allow = ["{peer}"]
            limits = {{ memory_mb = 8, max_instances = 2 }}
            [cells.s]
            protocol = "/x/sha/1"
            builtin = "sha256"
            "#
        ))
        .unwrap();
        let other = PeerId::random();
        let mut given = flags(vec![]);
        given.limits.cpu_ms = Some(50);
        given.allow.push((StreamProtocol::new("/x/sha/1"), other));
        let config = NodeConfig::merge(file, given).unwrap();
        assert_eq!((config.limits.cpu_ms, config.limits.idle_s), (50, 5));
        let [echo, sha] = &config.cells[..] else {
            panic!()
        };
        let echo_limits = config.cell_limits(echo);
        assert_eq!(
            (
                echo_limits.memory_mb,
                echo_limits.max_instances,
                echo_limits.cpu_ms
            ),
            (8, 2, 50)
        );
        assert_eq!(echo.allow.as_deref(), Some(&[peer][..]));
        assert_eq!(sha.allow.as_deref(), Some(&[other][..]));
        assert_eq!(config.max_memory_bytes(), 64 << 20);

        let mut bad = flags(vec![]);
        bad.allow.push((StreamProtocol::new("/nobody/1"), other));
        let error = NodeConfig::merge(Settings::default(), bad).unwrap_err();
        assert!(
            error.to_string().contains("no cell is served on /nobody/1"),
            "{error}"
        );
        assert!(parse_allow("/x=notapeer").is_err());
    }

    #[test]
    fn file_cells_and_flags_merge() {
        let file: Settings = toml::from_str(
            r#"
            listen = ["/ip4/127.0.0.1/tcp/0"]
            [cells.e]
            protocol = "/x/echo/1"
            builtin = "echo"
            "#,
        )
        .unwrap();
        let flag = CellSpec::parse_flag("/x/mine/1=mine.wasm").unwrap();
        let flags = Settings {
            identity: Some("id".into()),
            cell: vec![flag],
            ..Settings::default()
        };
        let config = NodeConfig::merge(file, flags).unwrap();
        assert_eq!(
            config.listen,
            vec!["/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>().unwrap()]
        );
        let protocols: Vec<_> = config
            .cells
            .iter()
            .map(|c| c.protocol.to_string())
            .collect();
        assert_eq!(protocols, ["/x/echo/1", "/x/mine/1"]);
    }

    #[test]
    fn no_cells_means_builtins() {
        let config = NodeConfig::merge(Settings::default(), flags(vec![])).unwrap();
        let defaults = builtin::BUILTINS.iter().filter(|b| b.default).count();
        assert_eq!(config.cells.len(), defaults);
        assert_eq!(config.listen.len(), 2);
    }

    #[test]
    fn bad_input_is_named() {
        assert!(CellSpec::parse_flag("no-equals").is_err());
        let error = CellSpec::parse_flag("echo=x.wasm").unwrap_err().to_string();
        assert!(error.contains("must start with `/`"), "{error}");
        let twice = vec![
            CellSpec::parse_flag("/a=x.wasm").unwrap(),
            CellSpec::parse_flag("/a=y.wasm").unwrap(),
        ];
        let error = NodeConfig::merge(Settings::default(), flags(twice)).unwrap_err();
        assert!(error.to_string().contains("both claim"), "{error}");
        let unknown =
            toml::from_str::<Settings>("[cells.x]\nprotocol = \"/x\"\nbuiltin = \"nope\"").unwrap();
        let error = NodeConfig::merge(unknown, flags(vec![])).unwrap_err();
        assert!(
            format!("{error:#}").contains("no built-in cell `nope`"),
            "{error:#}"
        );
    }

    #[test]
    fn the_nodes_own_protocols_cannot_be_cells() {
        for protocol in [
            "/ww/kad/1.0.0",
            "/ww/stats/0.1.0",
            "/ipfs/id/1.0.0",
            "/ipfs/id/push/1.0.0",
            "/ipfs/ping/1.0.0",
            "/libp2p/circuit/relay/0.2.0/hop",
            "/libp2p/autonat/1.0.0",
            "/libp2p/dcutr",
        ] {
            let cell = CellSpec::parse_flag(&format!("{protocol}=builtin:echo")).unwrap();
            let error = NodeConfig::merge(Settings::default(), flags(vec![cell])).unwrap_err();
            assert!(
                format!("{error:#}").contains("is reserved"),
                "{protocol}: {error:#}"
            );
        }
        let fine = CellSpec::parse_flag("/ww/kadabra/1=builtin:echo").unwrap();
        NodeConfig::merge(Settings::default(), flags(vec![fine])).unwrap();
    }

    #[test]
    fn dial_grants_and_network_settings_merge() {
        let file: Settings = toml::from_str(
            r#"
            bootstrap = ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE"]
            dht = "server"
            [cells.a]
            protocol = "/a/1"
            builtin = "fanout"
            dial = true
            [cells.b]
            protocol = "/b/1"
            builtin = "forward"
            dial = ["/ww/echo/0.1.0"]
            [cells.c]
            protocol = "/c/1"
            builtin = "echo"
            "#,
        )
        .unwrap();
        let mut flags = flags(vec![]);
        flags.no_mdns = true;
        flags.grant_dial = vec![parse_dial_grant("/c/1=/x/1,/y/1").unwrap()];
        let config = NodeConfig::merge(file, flags).unwrap();
        let grant = |p: &str| {
            let cell = config.cells.iter().find(|c| c.protocol.as_ref() == p);
            cell.unwrap().dial.clone()
        };
        let only =
            |ps: &[&str]| DialGrant::Only(ps.iter().map(|p| parse_protocol(p).unwrap()).collect());
        assert_eq!(grant("/a/1"), DialGrant::Any);
        assert_eq!(grant("/b/1"), only(&["/ww/echo/0.1.0"]));
        assert_eq!(
            grant("/c/1"),
            only(&["/x/1", "/y/1"]),
            "the flag replaces the file's"
        );
        assert_eq!(config.network.bootstrap.len(), 1);
        assert_eq!(config.network.dht, DhtMode::Server);
        assert!(!config.network.mdns, "--no-mdns wins");

        let bad: Settings = toml::from_str(r#"bootstrap = ["/ip4/127.0.0.1/tcp/1"]"#).unwrap();
        let error = NodeConfig::merge(bad, flags_default()).unwrap_err();
        assert!(
            format!("{error:#}").contains("does not end in /p2p/"),
            "{error:#}"
        );
        assert!(parse_dial_grant("/c/1=notaprotocol").is_err());
    }

    fn flags_default() -> Settings {
        flags(vec![])
    }

    /// Flags as `ww run` parses them.
    fn parse_flags(args: &[&str]) -> Settings {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            settings: Settings,
        }
        let argv = std::iter::once("run").chain(args.iter().copied());
        <Run as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .settings
    }

    #[test]
    fn flags_override_the_file_field_by_field() {
        let peer = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";
        let other = "12D3KooWLGhcp8wj3zMXSsyBzGjG8SViuQLpSy4b8m7JBMGfTtHn";
        let (first, second) = (
            format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}"),
            format!("/ip4/127.0.0.1/tcp/2/p2p/{peer}"),
        );
        let cell = "[cells.e]\nprotocol = \"/x/e/1\"\nbuiltin = \"echo\"\n";
        let the_cell = |c: &NodeConfig| c.cells[0].clone();
        let network = |c: &NodeConfig| c.network.clone();
        let join = |addrs: Vec<Multiaddr>| {
            let addrs: Vec<_> = addrs.iter().map(ToString::to_string).collect();
            addrs.join(" ")
        };
        type View = Box<dyn Fn(&NodeConfig) -> String>;
        // The file alone, then the file with the flags: what the node gets.
        let cases: Vec<(String, Vec<String>, View, String, String)> = vec![
            (
                "listen = [\"/ip4/127.0.0.1/tcp/1\"]".into(),
                vec!["--listen".into(), "/ip4/127.0.0.1/tcp/2".into()],
                Box::new(move |c| join(c.listen.clone())),
                "/ip4/127.0.0.1/tcp/1".into(),
                "/ip4/127.0.0.1/tcp/2".into(),
            ),
            (
                "identity = \"file.key\"".into(),
                vec!["--identity".into(), "flag.key".into()],
                Box::new(|c| c.identity.display().to_string()),
                "file.key".into(),
                "flag.key".into(),
            ),
            (
                "admin = \"127.0.0.1:1\"".into(),
                vec!["--admin".into(), "127.0.0.1:2".into()],
                Box::new(|c| format!("{:?}", c.admin)),
                "Some(127.0.0.1:1)".into(),
                "Some(127.0.0.1:2)".into(),
            ),
            (
                "cache = \"/file-cache\"".into(),
                vec!["--cache-dir".into(), "/flag-cache".into()],
                Box::new(|c| format!("{:?}", c.cache)),
                "Some(\"/file-cache\")".into(),
                "Some(\"/flag-cache\")".into(),
            ),
            (
                "cache = \"/file-cache\"".into(),
                vec!["--no-cache".into()],
                Box::new(|c| format!("{:?}", c.cache)),
                "Some(\"/file-cache\")".into(),
                "None".into(),
            ),
            (
                "dht = \"server\"".into(),
                vec!["--dht-mode".into(), "client".into()],
                Box::new(move |c| format!("{:?}", network(c).dht)),
                "Server".into(),
                "Client".into(),
            ),
            (
                format!("bootstrap = [\"{first}\"]"),
                vec!["--bootstrap".into(), second.clone()],
                Box::new(move |c| join(network(c).bootstrap)),
                first.clone(),
                format!("{first} {second}"),
            ),
            (
                "external_addresses = [\"/ip4/192.0.2.1/tcp/1\"]".into(),
                vec!["--external-address".into(), "/ip4/192.0.2.2/tcp/2".into()],
                Box::new(move |c| join(network(c).external)),
                "/ip4/192.0.2.1/tcp/1".into(),
                "/ip4/192.0.2.1/tcp/1 /ip4/192.0.2.2/tcp/2".into(),
            ),
            (
                "mdns = true".into(),
                vec!["--no-mdns".into()],
                Box::new(move |c| network(c).mdns.to_string()),
                "true".into(),
                "false".into(),
            ),
            (
                "relay = false".into(),
                vec!["--relay".into()],
                Box::new(move |c| network(c).relay.to_string()),
                "false".into(),
                "true".into(),
            ),
            (
                "limits = { cpu_ms = 5, idle_s = 6 }".into(),
                vec!["--cpu-ms".into(), "7".into()],
                Box::new(|c| format!("{} {}", c.limits.cpu_ms, c.limits.idle_s)),
                "5 6".into(),
                "7 6".into(),
            ),
            (
                format!("{cell}limits = {{ cpu_ms = 3 }}"),
                vec!["--cpu-ms".into(), "7".into()],
                Box::new(move |c| {
                    let node = c.limits.cpu_ms;
                    format!("{node} {}", c.cell_limits(&the_cell(c)).cpu_ms)
                }),
                "10000 3".into(),
                "7 3".into(),
            ),
            (
                cell.into(),
                vec!["--cell".into(), "/x/f/1=builtin:echo".into()],
                Box::new(|c| {
                    let protocols: Vec<_> =
                        c.cells.iter().map(|c| c.protocol.to_string()).collect();
                    protocols.join(" ")
                }),
                "/x/e/1".into(),
                "/x/e/1 /x/f/1".into(),
            ),
            (
                format!("{cell}allow = [\"{peer}\"]"),
                vec!["--allow".into(), format!("/x/e/1={other}")],
                Box::new(move |c| format!("{:?}", the_cell(c).allow.unwrap_or_default().len())),
                "1".into(),
                "2".into(),
            ),
            (
                format!("{cell}dial = true"),
                vec!["--grant-dial".into(), "/x/e/1=/y/1".into()],
                Box::new(move |c| format!("{:?}", the_cell(c).dial)),
                "Any".into(),
                "Only([\"/y/1\"])".into(),
            ),
            (
                format!("{cell}mode = \"stdio\""),
                vec!["--cell-mode".into(), "/x/e/1=connection".into()],
                Box::new(move |c| format!("{:?}", the_cell(c).mode)),
                "Some(Stdio)".into(),
                "Some(Connection)".into(),
            ),
        ];
        for (file, args, view, alone, overridden) in cases {
            let merged = |args: &[String]| {
                let file: Settings = toml::from_str(&file).unwrap();
                let mut flags = parse_flags(&args.iter().map(String::as_str).collect::<Vec<_>>());
                if file.identity.is_none() {
                    flags.identity.get_or_insert("id".into());
                }
                NodeConfig::merge(file, flags).unwrap()
            };
            assert_eq!(view(&merged(&[])), alone, "{file} alone");
            assert_eq!(view(&merged(&args)), overridden, "{file} with {args:?}");
        }
    }

    #[test]
    fn the_config_flag_reads_a_file_whose_paths_are_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ww.toml");
        let text = "identity = \"id\"\n[cells.x]\nprotocol = \"/x/1\"\nwasm = \"cells/x.wasm\"\n";
        std::fs::write(&path, text).unwrap();
        let config = path.to_str().unwrap();
        let flags = parse_flags(&["--config", config, "--cell", "/y/1=y.wasm"]);
        let config = flags.into_config().unwrap();
        let sources: Vec<_> = config
            .cells
            .iter()
            .map(|cell| match &cell.source {
                CellSource::File(path) => path.clone(),
                CellSource::Builtin(_) => panic!("a file cell"),
            })
            .collect();
        assert_eq!(sources, [dir.path().join("cells/x.wasm"), "y.wasm".into()]);

        std::fs::write(&path, "bogus = 1\n").unwrap();
        let flags = parse_flags(&["--config", path.to_str().unwrap()]);
        let error = format!("{:#}", flags.into_config().unwrap_err());
        assert!(
            error.contains("invalid config file") && error.contains("bogus"),
            "{error}"
        );
    }

    #[test]
    fn a_flag_is_not_a_file_key() {
        for key in [
            "config = \"x\"",
            "no_mdns = true",
            "cache_dir = \"x\"",
            "cell = []",
        ] {
            let error = toml::from_str::<Settings>(key).unwrap_err().to_string();
            assert!(error.contains("unknown field"), "{key}: {error}");
        }
    }
}
