//! The node's configuration: a TOML file, overridden and extended by `ww run` flags.
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

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Addresses to listen on.
    #[serde(default)]
    pub listen: Vec<Multiaddr>,
    /// The identity file.
    pub identity: Option<PathBuf>,
    /// Seconds running guests get to finish on shutdown.
    pub shutdown_grace_s: Option<u64>,
    /// Where the admin HTTP endpoint listens; off if absent.
    pub admin: Option<SocketAddr>,
    /// Where compiled cells are cached; `false` turns the cache off.
    pub cache: Option<CacheSetting>,
    /// Peers to join the network through.
    #[serde(default)]
    pub bootstrap: Vec<Multiaddr>,
    /// Whether to find peers on the local network (default: yes).
    pub mdns: Option<bool>,
    /// Whether to answer DHT queries.
    pub dht: Option<DhtMode>,
    /// Whether to relay connections for other peers (default: no).
    pub relay: Option<bool>,
    /// Addresses others can reach this node at.
    #[serde(default)]
    pub external_addresses: Vec<Multiaddr>,
    /// Node-wide limits.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Cells by name.
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

impl File {
    /// Reads and parses a config file. Relative cell paths are made relative to the
    /// file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut file: File = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for entry in file.cells.values_mut() {
            if let Some(wasm) = entry.wasm.as_mut().filter(|wasm| wasm.is_relative()) {
                *wasm = base.join(&*wasm);
            }
        }
        Ok(file)
    }
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

/// What `ww run` was told on its command line.
#[derive(Debug, Default)]
pub struct Flags {
    /// `--listen`: replaces the file's addresses.
    pub listen: Vec<Multiaddr>,
    /// `--identity`: replaces the file's.
    pub identity: Option<PathBuf>,
    /// `--cell`: added to the file's cells.
    pub cells: Vec<CellSpec>,
    /// `--cpu-ms` and friends: override the file's `[limits]`.
    pub limits: LimitOverrides,
    /// `--allow PROTOCOL=PEERID`: added to that cell's allowlist.
    pub allow: Vec<(StreamProtocol, PeerId)>,
    /// `--cell-mode PROTOCOL=MODE`: forces that cell's mode.
    pub modes: Vec<(StreamProtocol, Mode)>,
    /// `--grant-dial PROTOCOL[=TARGETS]`: replaces that cell's grant.
    pub dial_grants: Vec<(StreamProtocol, DialGrant)>,
    /// `--admin ADDR`: replaces the file's.
    pub admin: Option<SocketAddr>,
    /// `--cache-dir DIR`: replaces the file's.
    pub cache_dir: Option<PathBuf>,
    /// `--no-cache`: wins over everything.
    pub no_cache: bool,
    /// `--bootstrap`: added to the file's.
    pub bootstrap: Vec<Multiaddr>,
    /// `--no-mdns`: wins over the file.
    pub no_mdns: bool,
    /// `--dht-mode`: replaces the file's.
    pub dht: Option<DhtMode>,
    /// `--relay`: wins over the file.
    pub relay: bool,
    /// `--external-address`: added to the file's.
    pub external: Vec<Multiaddr>,
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
    /// Merges a config file (if any) with flags: `--listen` and `--identity` replace
    /// the file's values, `--cell` and `--allow` add to its cells, limit flags override
    /// its `[limits]` (a cell's own `limits` still win for that cell). With no cell
    /// anywhere, the built-in cells are served.
    pub fn merge(file: File, flags: Flags) -> anyhow::Result<Self> {
        let listen = match (flags.listen.is_empty(), file.listen.is_empty()) {
            (false, _) => flags.listen,
            (true, false) => file.listen,
            (true, true) => DEFAULT_LISTEN
                .iter()
                .map(|a| a.parse().expect("valid"))
                .collect(),
        };
        let twice = (1..listen.len()).find(|&i| listen[..i].contains(&listen[i]));
        if let Some(i) = twice {
            bail!("listen address {} is given twice", listen[i]);
        }
        let identity = match flags.identity.or(file.identity) {
            Some(path) => path,
            None => crate::identity::default_path()?,
        };
        let mut all = Vec::new();
        for (name, entry) in &file.cells {
            all.push(CellSpec::from_entry(name, entry).with_context(|| format!("[cells.{name}]"))?);
        }
        all.extend(flags.cells);
        if all.is_empty() {
            all = CellSpec::builtins();
        }
        for (protocol, peer) in flags.allow {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--allow {protocol}={peer}: no cell is served on {protocol}");
            };
            cell.allow.get_or_insert_with(Vec::new).push(peer);
        }
        for (protocol, mode) in flags.modes {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--cell-mode {protocol}: no cell is served on {protocol}");
            };
            cell.mode = Some(mode);
        }
        for (protocol, grant) in flags.dial_grants {
            let Some(cell) = all.iter_mut().find(|cell| cell.protocol == protocol) else {
                bail!("--grant-dial {protocol}: no cell is served on {protocol}");
            };
            cell.dial = grant;
        }
        let limits = flags.limits.apply(file.limits.apply(Limits::default()));
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
        let bootstrap = [file.bootstrap, flags.bootstrap].concat();
        if let Some(addr) = bootstrap
            .iter()
            .find(|addr| crate::net::discovery::peer_of(addr).is_none())
        {
            bail!("bootstrap address {addr} does not end in /p2p/<peer-id>");
        }
        let shutdown_grace = file
            .shutdown_grace_s
            .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs);
        Ok(Self {
            listen,
            identity,
            shutdown_grace,
            limits,
            cells: all,
            admin: flags.admin.or(file.admin),
            cache: cache_dir(flags.no_cache, flags.cache_dir, file.cache),
            network: NetOptions {
                bootstrap,
                mdns: !flags.no_mdns && file.mdns.unwrap_or(true),
                dht: flags.dht.or(file.dht).unwrap_or_default(),
                client: false,
                relay: flags.relay || file.relay.unwrap_or(false),
                external: [file.external_addresses, flags.external].concat(),
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

    fn flags(cells: Vec<CellSpec>) -> Flags {
        Flags {
            identity: Some("id".into()),
            cells,
            ..Flags::default()
        }
    }

    #[test]
    fn limits_and_allowlists_merge() {
        let peer = PeerId::random();
        let file: File = toml::from_str(&format!(
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
        let error = NodeConfig::merge(File::default(), bad).unwrap_err();
        assert!(
            error.to_string().contains("no cell is served on /nobody/1"),
            "{error}"
        );
        assert!(parse_allow("/x=notapeer").is_err());
    }

    #[test]
    fn file_cells_and_flags_merge() {
        let file: File = toml::from_str(
            r#"
            listen = ["/ip4/127.0.0.1/tcp/0"]
            [cells.e]
            protocol = "/x/echo/1"
            builtin = "echo"
            "#,
        )
        .unwrap();
        let flag = CellSpec::parse_flag("/x/mine/1=mine.wasm").unwrap();
        let flags = Flags {
            identity: Some("id".into()),
            cells: vec![flag],
            ..Flags::default()
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
        let config = NodeConfig::merge(File::default(), flags(vec![])).unwrap();
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
        let error = NodeConfig::merge(File::default(), flags(twice)).unwrap_err();
        assert!(error.to_string().contains("both claim"), "{error}");
        let unknown =
            toml::from_str::<File>("[cells.x]\nprotocol = \"/x\"\nbuiltin = \"nope\"").unwrap();
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
            let error = NodeConfig::merge(File::default(), flags(vec![cell])).unwrap_err();
            assert!(
                format!("{error:#}").contains("is reserved"),
                "{protocol}: {error:#}"
            );
        }
        let fine = CellSpec::parse_flag("/ww/kadabra/1=builtin:echo").unwrap();
        NodeConfig::merge(File::default(), flags(vec![fine])).unwrap();
    }

    #[test]
    fn dial_grants_and_network_settings_merge() {
        let file: File = toml::from_str(
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
        flags.dial_grants = vec![parse_dial_grant("/c/1=/x/1,/y/1").unwrap()];
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

        let bad: File = toml::from_str(r#"bootstrap = ["/ip4/127.0.0.1/tcp/1"]"#).unwrap();
        let error = NodeConfig::merge(bad, flags_default()).unwrap_err();
        assert!(
            format!("{error:#}").contains("does not end in /p2p/"),
            "{error:#}"
        );
        assert!(parse_dial_grant("/c/1=notaprotocol").is_err());
    }

    fn flags_default() -> Flags {
        flags(vec![])
    }
}
