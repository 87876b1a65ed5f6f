//! `ww run`'s settings as one type, [`Settings`], that clap reads from the flags and
//! serde from the config file, and the one place the flags are laid over the file
//! ([`Settings::over`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Deserialize;

use super::parse::{parse_allow, parse_cell_mode, parse_dial_grant};
use super::{CellEntry, CellSpec, NodeConfig};
use crate::cell::{DialGrant, DialSetting, Mode};
use crate::limits::LimitOverrides;
use crate::net::DhtMode;

/// `ww run`'s settings: clap reads them from the flags, serde from the config file,
/// and [`Settings::over`] lays the flags over the file. A field only one side can set
/// is skipped by the other (`#[serde(skip)]`: a flag the file may not spell;
/// `#[arg(skip)]`: a key with no flag).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
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
    /// Where the node keeps its components and deployed cells [default: the identity
    /// file's directory].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Accept cells deployed (`ww deploy`) by this peer; repeatable. Nobody may deploy
    /// unless given.
    #[arg(long = "deployer", value_name = "PEERID")]
    #[serde(default, deserialize_with = "super::parse::deserialize_peers")]
    pub deployers: Vec<PeerId>,
    /// The largest component this node stores, fetches or accepts in a deployment (a
    /// size: 64MiB, 512k) [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = crate::limits::parse_size)]
    #[serde(default, deserialize_with = "crate::limits::deserialize_size")]
    pub max_component: Option<u64>,
    /// Serve the dashboard (/), /healthz, /metrics and /status over HTTP on this
    /// address (e.g. 127.0.0.1:2026); off unless given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Require this token on every admin request (`Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` for the dashboard); required when `--admin` is not a loopback
    /// address. At least 16 characters from A–Z, a–z, 0–9, `-`, `_`, `.`, `~`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WW_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
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
    /// Let AutoNAT test (and help others test) reachability on addresses that are not
    /// globally routable: private, documentation and benchmarking ranges. For labs and
    /// private WANs; off by default, as in libp2p, since on the internet such an
    /// address says nothing about who can reach the node.
    #[arg(long)]
    #[serde(default)]
    pub autonat_private: bool,
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
    /// The most a deployed cell is granted (`[deploy_limits]`, over `[limits]`).
    #[arg(skip)]
    #[serde(default)]
    pub deploy_limits: LimitOverrides,
    /// What a deployed cell may be granted to dial: `true` (anything it asks for),
    /// `false` (nothing; the default), or a list of protocols.
    #[arg(skip)]
    pub deploy_dial: Option<DialSetting>,
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
    /// `listen`, `identity`, `admin`, `dht`, the data and cache directories and
    /// `max_component` replace the values below; cells, `allow`, `grant-dial`,
    /// `cell-mode`, `bootstrap`, deployers and external addresses add to them; `--no-mdns`, `--relay`,
    /// `--autonat-private` and `--no-cache` win;
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
            data_dir: self.data_dir.or(below.data_dir),
            deployers: added(below.deployers, self.deployers),
            max_component: self.max_component.or(below.max_component),
            admin: self.admin.or(below.admin),
            admin_token: self.admin_token.or(below.admin_token),
            bootstrap: added(below.bootstrap, self.bootstrap),
            no_mdns: self.no_mdns || below.no_mdns,
            dht: self.dht.or(below.dht),
            relay: self.relay || below.relay,
            autonat_private: self.autonat_private || below.autonat_private,
            external_addresses: added(below.external_addresses, self.external_addresses),
            limits: self.limits.over(below.limits),
            shutdown_grace_s: self.shutdown_grace_s.or(below.shutdown_grace_s),
            cache: self.cache.or(below.cache),
            mdns: self.mdns.or(below.mdns),
            deploy_limits: self.deploy_limits.over(below.deploy_limits),
            deploy_dial: self.deploy_dial.or(below.deploy_dial),
            cells: below.cells.into_iter().chain(self.cells).collect(),
        }
    }
}

/// `below`, then `above`.
fn added<T>(mut below: Vec<T>, above: Vec<T>) -> Vec<T> {
    below.extend(above);
    below
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CellSource;

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
                "admin_token = \"file-token-0123456789\"".into(),
                vec!["--admin-token".into(), "flag-token-0123456789".into()],
                Box::new(|c| format!("{:?}", c.admin_token)),
                "Some(\"file-token-0123456789\")".into(),
                "Some(\"flag-token-0123456789\")".into(),
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
                "autonat_private = false".into(),
                vec!["--autonat-private".into()],
                Box::new(move |c| network(c).autonat_private.to_string()),
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
                _ => panic!("a file cell"),
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
