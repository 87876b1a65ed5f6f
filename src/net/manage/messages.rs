//! The messages of [`net::manage`](super)'s wire, as JSON: a deployer's request, the
//! node's answer, and a node's cells.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::{CELLS_PROTOCOL, DEPLOY_PROTOCOL};
use crate::cell::DialGrant;
use crate::content::ContentId;
use crate::limits::{LimitOverrides, Limits};

/// What a deployer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Serve the component that follows on the protocol (replacing what is there).
    Deploy,
    /// Stop serving what was deployed on the protocol.
    Undeploy,
}

/// Which protocols a deployed cell may dial, asked for or granted: JSON `"any"` or
/// `{"only": ["/a/1", …]}`; none is `null` (the field left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DialRequest {
    /// Any protocol.
    Any,
    /// Only these protocols.
    Only(Vec<String>),
}

impl DialRequest {
    /// The grant this names; an invalid protocol ID is an error naming it.
    pub fn to_grant(&self) -> Result<DialGrant, String> {
        match self {
            Self::Any => Ok(DialGrant::Any),
            Self::Only(protocols) => protocols
                .iter()
                .map(|p| {
                    StreamProtocol::try_from_owned(p.clone())
                        .map_err(|_| format!("`{p}` is not a protocol ID"))
                })
                .collect::<Result<_, _>>()
                .map(DialGrant::Only),
        }
    }

    /// How `grant` travels: `None` for no dialing at all.
    pub fn from_grant(grant: &DialGrant) -> Option<Self> {
        match grant {
            DialGrant::Denied => None,
            DialGrant::Any => Some(Self::Any),
            DialGrant::Only(protocols) => Some(Self::Only(
                protocols.iter().map(ToString::to_string).collect(),
            )),
        }
    }
}

impl std::fmt::Display for DialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Only(protocols) => f.write_str(&protocols.join(" ")),
        }
    }
}

/// A deployer's request: the first frame on [`DEPLOY_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Deploy or undeploy.
    pub op: Op,
    /// The cell's protocol (checked by the node).
    pub protocol: String,
    /// The component's CID: required for a deploy; for an undeploy, removes only that
    /// version if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentId>,
    /// The component's size in bytes, which follow the request (0 for an undeploy).
    #[serde(default)]
    pub size: u64,
    /// The limits asked for (only those set); the node grants at most its ceilings.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// The dialing asked for; none if left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial: Option<DialRequest>,
}

impl DeployRequest {
    /// A request to deploy `component` on `protocol`.
    pub fn deploy(
        protocol: &StreamProtocol,
        component: &[u8],
        limits: LimitOverrides,
        dial: Option<DialRequest>,
    ) -> Self {
        Self {
            op: Op::Deploy,
            protocol: protocol.to_string(),
            content: Some(ContentId::of(component)),
            size: component.len() as u64,
            limits,
            dial,
        }
    }

    /// A request to undeploy whatever was deployed on `protocol`.
    pub fn undeploy(protocol: &StreamProtocol) -> Self {
        Self {
            op: Op::Undeploy,
            protocol: protocol.to_string(),
            content: None,
            size: 0,
            limits: LimitOverrides::default(),
            dial: None,
        }
    }
}

/// The node's answer: one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
pub enum DeployAnswer {
    /// The component serves the protocol now.
    Deployed {
        /// The protocol.
        protocol: String,
        /// The component now serving it.
        content: ContentId,
        /// The limits its instances run under.
        granted: Limits,
        /// The dialing granted; none if left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dial: Option<DialRequest>,
        /// The version it replaced, if any (streams in flight finish on it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced: Option<ContentId>,
    },
    /// The protocol is no longer served (streams in flight finish).
    Undeployed {
        /// The protocol.
        protocol: String,
        /// The component that served it.
        content: ContentId,
    },
    /// Nothing changed, and why.
    Refused {
        /// Why, for the deployer to read.
        reason: String,
    },
}

/// One cell a node serves, as [`CELLS_PROTOCOL`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellListing {
    /// The cell's protocol.
    pub protocol: String,
    /// Its component.
    pub content: ContentId,
    /// `connection` or `stdio`.
    pub kind: String,
    /// Where it came from: `builtin`, `file`, `deployed` or `fetched`.
    pub source: String,
    /// Instances alive now.
    pub live: u64,
    /// When this version started serving, in seconds since the Unix epoch.
    pub since_unix_s: u64,
}
