//! The node's configuration: a TOML file, overridden and extended by `ww run` flags.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/2025", "/ip4/0.0.0.0/udp/2025/quic-v1"]
//! identity = "/var/lib/ww/identity.key"   # default: ~/.local/share/ww/identity.key
//! shutdown_grace_s = 10                     # how long running guests get on shutdown
//!
//! [cells.echo]                              # any name; it shows in logs
//! protocol = "/ww/echo/0.1.0"
//! builtin = "echo"                          # a cell compiled into ww …
//!
//! [cells.mine]
//! protocol = "/my/app/1.0.0"
//! wasm = "cells/mine.wasm"                  # … or a component file, relative to this file
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::{Multiaddr, StreamProtocol};
use serde::Deserialize;

use crate::cell::builtin::{self, Builtin};

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
    /// Cells by name.
    #[serde(default)]
    pub cells: BTreeMap<String, CellEntry>,
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
}

impl CellSpec {
    /// Parses the `PROTOCOL=FILE.wasm` form of `--cell`.
    pub fn parse_flag(flag: &str) -> anyhow::Result<Self> {
        let Some((protocol, file)) = flag.split_once('=') else {
            bail!("--cell wants PROTOCOL=FILE.wasm, got `{flag}`");
        };
        let path = PathBuf::from(file);
        let name = path
            .file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into());
        Ok(Self {
            name,
            protocol: parse_protocol(protocol)?,
            source: CellSource::File(path),
        })
    }

    /// Every built-in cell on its default protocol.
    pub fn builtins() -> Vec<Self> {
        builtin::BUILTINS
            .iter()
            .map(|cell| Self {
                name: cell.name.to_string(),
                protocol: StreamProtocol::new(cell.protocol),
                source: CellSource::Builtin(cell),
            })
            .collect()
    }

    fn from_entry(name: &str, entry: &CellEntry) -> anyhow::Result<Self> {
        let source = match (&entry.wasm, &entry.builtin) {
            (Some(path), None) => CellSource::File(path.clone()),
            (None, Some(builtin)) => {
                CellSource::Builtin(builtin::find(builtin).with_context(|| {
                    let known: Vec<_> = builtin::BUILTINS.iter().map(|b| b.name).collect();
                    format!(
                        "no built-in cell `{builtin}` (there are: {})",
                        known.join(", ")
                    )
                })?)
            }
            _ => bail!("give exactly one of `wasm = \"FILE\"` or `builtin = \"NAME\"`"),
        };
        Ok(Self {
            name: name.to_string(),
            protocol: parse_protocol(&entry.protocol)?,
            source,
        })
    }
}

/// Checks a protocol ID the way libp2p wants it: a string starting with `/`.
pub fn parse_protocol(protocol: &str) -> anyhow::Result<StreamProtocol> {
    StreamProtocol::try_from_owned(protocol.to_string())
        .map_err(|_| anyhow::anyhow!("invalid protocol ID `{protocol}`: it must start with `/`"))
}

/// Checks that a cell may be served on `protocol`: not a node protocol, and not
/// ending in the suffix that selects a cell's status variant.
fn check_cell_protocol(protocol: &StreamProtocol) -> anyhow::Result<()> {
    if protocol == &crate::node::STATS_PROTOCOL {
        bail!("protocol {protocol} is the node's own");
    }
    if protocol.as_ref().ends_with(crate::net::outcome::SUFFIX) {
        let suffix = crate::net::outcome::SUFFIX;
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
    /// Cells to serve, with distinct protocols.
    pub cells: Vec<CellSpec>,
}

impl NodeConfig {
    /// Merges a config file (if any) with flags: `--listen` and `--identity` replace
    /// the file's values, `--cell` adds to its cells. With no cell anywhere, the
    /// built-in cells are served.
    pub fn merge(
        file: File,
        listen: Vec<Multiaddr>,
        identity: Option<PathBuf>,
        cells: Vec<CellSpec>,
    ) -> anyhow::Result<Self> {
        let listen = match (listen.is_empty(), file.listen.is_empty()) {
            (false, _) => listen,
            (true, false) => file.listen,
            (true, true) => DEFAULT_LISTEN
                .iter()
                .map(|a| a.parse().expect("valid"))
                .collect(),
        };
        let identity = match identity.or(file.identity) {
            Some(path) => path,
            None => crate::identity::default_path()?,
        };
        let mut all = Vec::new();
        for (name, entry) in &file.cells {
            all.push(CellSpec::from_entry(name, entry).with_context(|| format!("[cells.{name}]"))?);
        }
        all.extend(cells);
        if all.is_empty() {
            all = CellSpec::builtins();
        }
        for (i, cell) in all.iter().enumerate() {
            check_cell_protocol(&cell.protocol).with_context(|| format!("cell `{}`", cell.name))?;
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
        let shutdown_grace = file
            .shutdown_grace_s
            .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs);
        Ok(Self {
            listen,
            identity,
            shutdown_grace,
            cells: all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = NodeConfig::merge(file, vec![], Some("id".into()), vec![flag]).unwrap();
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
        let config = NodeConfig::merge(File::default(), vec![], Some("id".into()), vec![]).unwrap();
        assert_eq!(config.cells.len(), builtin::BUILTINS.len());
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
        let error =
            NodeConfig::merge(File::default(), vec![], Some("id".into()), twice).unwrap_err();
        assert!(error.to_string().contains("both claim"), "{error}");
        let unknown =
            toml::from_str::<File>("[cells.x]\nprotocol = \"/x\"\nbuiltin = \"nope\"").unwrap();
        let error = NodeConfig::merge(unknown, vec![], Some("id".into()), vec![]).unwrap_err();
        assert!(
            format!("{error:#}").contains("no built-in cell `nope`"),
            "{error:#}"
        );
    }
}
