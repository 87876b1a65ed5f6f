//! A cell to serve ([`CellSpec`]): from a `--cell` flag, a `[cells.<name>]` table
//! ([`CellEntry`]), or the built-in defaults; and which protocols a cell may take.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use libp2p::{PeerId, StreamProtocol};
use serde::Deserialize;

use super::parse::{parse_peer, parse_protocol};
use crate::cell::builtin::{self, Builtin};
use crate::cell::{DialGrant, DialSetting, Mode};
use crate::content::ContentId;
use crate::limits::LimitOverrides;

/// One `[cells.<name>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellEntry {
    /// The libp2p protocol the cell is served on.
    pub protocol: String,
    /// A component file.
    pub wasm: Option<PathBuf>,
    /// The name of a cell compiled into ww.
    pub builtin: Option<String>,
    /// A component by its CID (`bafkrei…`), from the node's store or, if it is not
    /// there, from a node that provides it.
    pub content: Option<String>,
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

/// Where a cell's component comes from.
#[derive(Debug, Clone)]
pub enum CellSource {
    /// Compiled into the binary.
    Builtin(&'static Builtin),
    /// A component file.
    File(PathBuf),
    /// A component by its content: from the node's store, or fetched from a provider.
    Content(ContentId),
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
    /// Parses `--cell PROTOCOL=FILE.wasm`, `--cell PROTOCOL=builtin:NAME` for a cell
    /// compiled into ww, or `--cell PROTOCOL=CID` (`bafkrei…`) for a component by its
    /// content (a file named like a CID is given as `./bafkrei…`).
    pub fn parse_flag(flag: &str) -> anyhow::Result<Self> {
        let Some((protocol, file)) = flag.split_once('=') else {
            bail!(
                "--cell wants PROTOCOL=FILE.wasm, PROTOCOL=builtin:NAME or PROTOCOL=CID, got `{flag}`"
            );
        };
        if let Ok(content) = file.parse::<ContentId>() {
            return Ok(Self::content(parse_protocol(protocol)?, content));
        }
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

    /// The component `content` on `protocol`, with no options.
    pub fn content(protocol: StreamProtocol, content: ContentId) -> Self {
        Self {
            name: content.to_string(),
            protocol,
            source: CellSource::Content(content),
            allow: None,
            limits: LimitOverrides::default(),
            mode: None,
            dial: DialGrant::Denied,
        }
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

    pub(super) fn from_entry(name: &str, entry: &CellEntry) -> anyhow::Result<Self> {
        let source = match (&entry.wasm, &entry.builtin, &entry.content) {
            (Some(path), None, None) => CellSource::File(path.clone()),
            (None, Some(builtin), None) => CellSource::Builtin(find_builtin(builtin)?),
            (None, None, Some(content)) => CellSource::Content(content.parse().context("content")?),
            _ => bail!(
                "give exactly one of `wasm = \"FILE\"`, `builtin = \"NAME\"` or `content = \"CID\"`"
            ),
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
        let dial = super::parse::dial_grant(entry.dial.as_ref()).context("dial")?;
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

/// Checks that a cell may be served on `protocol`: not a node protocol, and not
/// ending in the suffix that selects a cell's status variant.
pub fn check_cell_protocol(protocol: &StreamProtocol) -> anyhow::Result<()> {
    if let Some(what) = crate::net::reserved_by(protocol.as_ref()) {
        bail!("protocol {protocol} is reserved: the node itself speaks it ({what})");
    }
    if protocol.as_ref().ends_with(crate::net::status::SUFFIX) {
        let suffix = crate::net::status::SUFFIX;
        bail!("protocol {protocol} ends in `{suffix}`, which selects a cell's status variant");
    }
    Ok(())
}
