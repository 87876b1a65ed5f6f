//! [`NodeConfig`]: everything `ww run` needs, once the file and the flags are merged,
//! the defaults filled in and the result checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::{Multiaddr, PeerId};

use super::cells::check_cell_protocol;
use super::{CacheSetting, CellSpec, Settings};
use crate::cell::DialGrant;
use crate::limits::Limits;
use crate::net::NetOptions;

/// Where the node listens unless told otherwise.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/2025", "/ip4/0.0.0.0/udp/2025/quic-v1"];
/// The largest component a node stores, fetches or accepts unless told otherwise.
pub const DEFAULT_MAX_COMPONENT: u64 = crate::content::store::DEFAULT_MAX_COMPONENT;
/// How long running guests may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// The token every admin request must carry, if any (always set when `admin` is
    /// not loopback).
    pub admin_token: Option<String>,
    /// Where compiled cells are cached, if anywhere.
    pub cache: Option<PathBuf>,
    /// Where components (`content/`) and deployed cells (`deployed.json`) are kept.
    pub data_dir: PathBuf,
    /// Peers allowed to deploy and undeploy cells.
    pub deployers: Vec<PeerId>,
    /// The largest component stored, fetched or deployed, in bytes.
    pub max_component: u64,
    /// The most a deployed cell is granted.
    pub deploy_ceiling: Limits,
    /// What a deployed cell may be granted to dial.
    pub deploy_dial: DialGrant,
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
            data_dir,
            deployers,
            max_component,
            admin,
            admin_token,
            bootstrap,
            no_mdns,
            dht,
            relay,
            autonat_private,
            external_addresses,
            limits,
            shutdown_grace_s,
            cache,
            mdns,
            deploy_limits,
            deploy_dial,
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
        let data_dir = match data_dir {
            Some(dir) => dir,
            None => identity
                .parent()
                .map(|dir| {
                    if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    }
                })
                .context("the identity file has no directory; pass --data-dir")?
                .to_path_buf(),
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
        let deploy_ceiling = deploy_limits.apply(limits);
        deploy_ceiling.check().context("[deploy_limits]")?;
        let deploy_dial = super::parse::dial_grant(deploy_dial.as_ref()).context("deploy_dial")?;
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
        check_admin_token(admin, admin_token.as_deref())?;
        Ok(Self {
            listen,
            identity,
            shutdown_grace: shutdown_grace_s.map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
            limits,
            cells: all,
            admin,
            admin_token,
            data_dir,
            deployers,
            max_component: max_component.unwrap_or(DEFAULT_MAX_COMPONENT),
            deploy_ceiling,
            deploy_dial,
            cache: self::cache_dir(no_cache, cache_dir, cache),
            network: NetOptions {
                bootstrap,
                mdns: !no_mdns && mdns.unwrap_or(true),
                dht: dht.unwrap_or_default(),
                client: false,
                relay,
                autonat_private,
                external: external_addresses,
            },
        })
    }

    /// The limits that apply to `cell`: the node's, with the cell's own on top.
    pub fn cell_limits(&self, cell: &CellSpec) -> Limits {
        cell.limits.apply(self.limits)
    }

    /// The largest memory any cell may use — a configured one, or one deployed
    /// within the node's limits — which sizes the instance pool.
    pub fn max_memory_bytes(&self) -> usize {
        self.cells
            .iter()
            .map(|cell| self.cell_limits(cell).memory_bytes())
            .chain([
                self.limits.memory_bytes(),
                self.deploy_ceiling.memory_bytes(),
            ])
            .max()
            .unwrap_or(0)
    }
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

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// An admin endpoint off loopback needs a token; a token must be long enough and
/// URL-safe (it travels in `?token=`).
fn check_admin_token(admin: Option<SocketAddr>, token: Option<&str>) -> anyhow::Result<()> {
    if let Some(token) = token {
        let url_safe = |c: char| c.is_ascii_alphanumeric() || "-_.~".contains(c);
        if token.len() < MIN_ADMIN_TOKEN_LEN || !token.chars().all(url_safe) {
            bail!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters from A-Z, a-z, 0-9, '-', '_', '.', '~'"
            );
        }
    }
    if let Some(addr) = admin
        && !addr.ip().is_loopback()
        && token.is_none()
    {
        bail!(
            "the admin endpoint on {addr} is not loopback: give it a token (--admin-token or admin_token in the config)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::DialGrant;
    use crate::cell::builtin;
    use crate::config::{parse_allow, parse_dial_grant, parse_protocol};
    use crate::net::DhtMode;
    use libp2p::{PeerId, StreamProtocol};

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
    fn deployment_settings_have_safe_defaults_and_merge() {
        let config = NodeConfig::merge(Settings::default(), flags(vec![])).unwrap();
        assert!(config.deployers.is_empty(), "nobody may deploy by default");
        assert_eq!(config.deploy_dial, DialGrant::Denied);
        assert_eq!(config.deploy_ceiling, config.limits);
        assert_eq!(config.max_component, 64 << 20);
        assert_eq!(
            config.data_dir,
            Path::new("."),
            "beside the identity file `id`"
        );

        let (one, two) = (PeerId::random(), PeerId::random());
        let file: Settings = toml::from_str(&format!(
            r#"
            data_dir = "/var/lib/ww"
            max_component = "1MiB"
            deployers = ["{one}"]
            deploy_dial = ["/x/sha/1"]
            limits = {{ memory_mb = 128 }}
            deploy_limits = {{ memory_mb = 256, cpu_ms = 500 }}
            [cells.c]
            protocol = "/x/c/1"
            content = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
            "#
        ))
        .unwrap();
        let mut given = flags(vec![]);
        given.deployers.push(two);
        let config = NodeConfig::merge(file, given).unwrap();
        assert_eq!(config.data_dir, Path::new("/var/lib/ww"));
        assert_eq!(config.max_component, 1 << 20);
        assert_eq!(config.deployers, [one, two]);
        assert_eq!(
            config.deploy_dial,
            DialGrant::Only(vec![StreamProtocol::new("/x/sha/1")])
        );
        assert_eq!(
            (
                config.deploy_ceiling.memory_mb,
                config.deploy_ceiling.cpu_ms
            ),
            (256, 500)
        );
        assert_eq!(
            config.max_memory_bytes(),
            256 << 20,
            "the pool fits a deployed cell"
        );
        assert!(matches!(
            config.cells[0].source,
            crate::config::CellSource::Content(_)
        ));

        let bad: Result<Settings, _> = toml::from_str(r#"deployers = ["nobody"]"#);
        assert!(bad.unwrap_err().to_string().contains("not a peer ID"));
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
    fn an_admin_endpoint_off_loopback_needs_a_good_token() {
        let merge = |file: &str| {
            let file = toml::from_str::<Settings>(file).unwrap();
            NodeConfig::merge(file, flags(vec![])).map_err(|e| e.to_string())
        };
        let error = merge("admin = \"0.0.0.0:2026\"").unwrap_err();
        assert!(error.contains("not loopback"), "{error}");
        let token = "admin_token = \"0123456789abcdef\"";
        let config = merge(&format!("admin = \"0.0.0.0:2026\"\n{token}")).unwrap();
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef"));
        // Loopback needs none, but takes one.
        assert_eq!(
            merge("admin = \"127.0.0.1:2026\"").unwrap().admin_token,
            None
        );
        assert!(merge(&format!("admin = \"[::1]:2026\"\n{token}")).is_ok());
        for bad in [
            "short",
            "0123456789abcdef with spaces",
            "0123456789abcdef&x=1",
        ] {
            let error = merge(&format!("admin_token = \"{bad}\"")).unwrap_err();
            assert!(error.contains("at least 16 characters"), "{bad}: {error}");
        }
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
}
