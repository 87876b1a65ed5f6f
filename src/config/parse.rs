//! Parsers for the values the flags and the file spell as text: protocol IDs, peer
//! IDs, and the `PROTOCOL=…` forms of `--allow`, `--grant-dial` and `--cell-mode`.

use anyhow::{Context as _, bail};
use libp2p::{PeerId, StreamProtocol};

use crate::cell::{DialGrant, DialSetting, Mode};

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

/// A list of peer IDs in a config file (`deployers = ["12D3KooW…"]`).
pub fn deserialize_peers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
    use serde::Deserialize as _;
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|peer| {
            peer.parse()
                .map_err(|e| serde::de::Error::custom(format!("`{peer}` is not a peer ID: {e}")))
        })
        .collect()
}

/// A `dial` key's setting as a grant: `true` anything, `false` or absent nothing, a
/// list only those protocols.
pub fn dial_grant(setting: Option<&DialSetting>) -> anyhow::Result<DialGrant> {
    Ok(match setting {
        None | Some(DialSetting::All(false)) => DialGrant::Denied,
        Some(DialSetting::All(true)) => DialGrant::Any,
        Some(DialSetting::Only(protocols)) => DialGrant::Only(
            protocols
                .iter()
                .map(|p| parse_protocol(p))
                .collect::<Result<_, _>>()?,
        ),
    })
}
