//! A component's name is its content: the CID of its bytes.
//!
//! ww names a component the way IPFS names a raw block: a CIDv1 with the `raw` codec
//! (0x55) over the SHA-256 multihash (0x12) of the bytes, printed in base32 lower case
//! (`bafkrei…`). The same bytes have the same name on every node, whoever built or
//! sent them, so a node can take a component from any peer and check it is the one it
//! asked for.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use cid::multihash::Multihash;
use sha2::{Digest as _, Sha256};

/// The multicodec of a raw block: the CID names the bytes themselves.
pub const RAW_CODEC: u64 = 0x55;
/// The multihash code of SHA-256.
pub const SHA2_256: u64 = 0x12;
/// The length of a SHA-256 digest.
const DIGEST_LEN: usize = 32;

/// The name of a component: CIDv1, raw codec, SHA-256 of its bytes (`bafkrei…`).
///
/// Only that form can be built or parsed, so two names are equal exactly when they
/// name the same bytes. Holds just the 32-byte digest (the rest of the CID is fixed).
/// Serialized (serde) as its string form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; DIGEST_LEN]);

impl ContentId {
    /// The name of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The SHA-256 of the bytes.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Whether `bytes` are the bytes this names.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }

    /// `Ok` if `bytes` are the bytes this names, otherwise what they are instead.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), ContentMismatch> {
        let actual = Self::of(bytes);
        if actual == *self {
            Ok(())
        } else {
            Err(ContentMismatch {
                expected: *self,
                actual,
                len: bytes.len() as u64,
            })
        }
    }

    /// The CID itself.
    pub fn cid(&self) -> Cid {
        let hash =
            Multihash::wrap(SHA2_256, &self.0).expect("a 32-byte digest fits a 64-byte multihash");
        Cid::new_v1(RAW_CODEC, hash)
    }

    /// The binary form (as on the wire): version, codec, multihash.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.cid().to_bytes()
    }

    /// Parses the binary form, accepting only a raw SHA-256 CIDv1.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseContentIdError> {
        let cid = Cid::try_from(bytes).map_err(|error| ParseContentIdError::NotACid {
            reason: error.to_string(),
        })?;
        // `Cid::try_from` stops after the multihash; trailing bytes are not part of it.
        if cid.encoded_len() != bytes.len() {
            return Err(ParseContentIdError::NotACid {
                reason: format!("{} bytes after the CID", bytes.len() - cid.encoded_len()),
            });
        }
        Self::try_from(cid)
    }
}

impl TryFrom<Cid> for ContentId {
    type Error = ParseContentIdError;

    /// Accepts a CID only if it is the form [`ContentId::of`] makes.
    fn try_from(cid: Cid) -> Result<Self, Self::Error> {
        if cid.version() != cid::Version::V1 {
            return Err(ParseContentIdError::NotV1);
        }
        if cid.codec() != RAW_CODEC {
            return Err(ParseContentIdError::WrongCodec { codec: cid.codec() });
        }
        let hash = cid.hash();
        if hash.code() != SHA2_256 || hash.size() as usize != DIGEST_LEN {
            return Err(ParseContentIdError::WrongHash {
                code: hash.code(),
                size: hash.size(),
            });
        }
        let digest = hash.digest().try_into().expect("the length was checked");
        Ok(Self(digest))
    }
}

impl From<ContentId> for Cid {
    fn from(id: ContentId) -> Self {
        id.cid()
    }
}

impl fmt::Display for ContentId {
    /// Base32 lower case, the usual IPFS form: `bafkrei…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.cid(), f)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = ParseContentIdError;

    /// Parses any multibase form of a raw SHA-256 CIDv1 (`bafkrei…` is the usual one).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        // A CIDv0 is base58 without a multibase prefix: 46 characters starting `Qm`.
        if text.len() == 46 && text.starts_with("Qm") {
            return Err(ParseContentIdError::NotV1);
        }
        // Not `Cid::from_str`: it also takes `/ipfs/CID` (and any text ending in it)
        // and ignores bytes after the CID. A name is exactly one CID.
        let (_, bytes) =
            cid::multibase::decode(text).map_err(|error| ParseContentIdError::NotACid {
                reason: error.to_string(),
            })?;
        Self::from_bytes(&bytes)
    }
}

impl serde::Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a text or byte string is not a [`ContentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseContentIdError {
    /// Not a CID at all.
    #[error("not a CID ({reason}); expected a CIDv1 like bafkrei…")]
    NotACid {
        /// What the CID parser said.
        reason: String,
    },
    /// A CIDv0 (`Qm…`): a dag-pb node, not a component's raw bytes.
    #[error("a CIDv0 (Qm…) names a dag-pb node; a component is named by a raw CIDv1 (bafkrei…)")]
    NotV1,
    /// A CID of something other than raw bytes.
    #[error(
        "the CID's codec is {codec:#x}, not raw (0x55): it names something other than a component's bytes"
    )]
    WrongCodec {
        /// The codec the CID has.
        codec: u64,
    },
    /// A CID of raw bytes, but not by their SHA-256.
    #[error("the CID's hash is multihash {code:#x} of {size} bytes, not SHA-256 (0x12, 32 bytes)")]
    WrongHash {
        /// The multihash code.
        code: u64,
        /// The digest length.
        size: u8,
    },
}

/// Bytes that are not the ones a [`ContentId`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, but the {len} bytes are {actual}")]
pub struct ContentMismatch {
    /// The name asked for.
    pub expected: ContentId,
    /// The name of the bytes at hand.
    pub actual: ContentId,
    /// How many bytes there were.
    pub len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ipfs add --raw-leaves --cid-version 1` of "hello world" (no newline), as
    /// published by IPFS docs and tools.
    const HELLO_WORLD: &str = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";

    #[test]
    fn names_bytes_as_ipfs_does() {
        let id = ContentId::of(b"hello world");
        assert_eq!(id.to_string(), HELLO_WORLD);
        assert_eq!(id.cid().codec(), RAW_CODEC);
        assert_eq!(id.cid().hash().code(), SHA2_256);
        assert_eq!(
            id.cid().hash().digest(),
            Sha256::digest(b"hello world").as_slice()
        );
    }

    #[test]
    fn round_trips_text_bytes_and_serde() {
        let id = ContentId::of(b"a component");
        assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
        assert_eq!(ContentId::from_bytes(&id.to_bytes()).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ContentId>(&json).unwrap(), id);
        // Other multibases of the same CID name the same bytes.
        let base58 = id
            .cid()
            .to_string_of_base(cid::multibase::Base::Base58Btc)
            .unwrap();
        assert_eq!(base58.parse::<ContentId>().unwrap(), id);
    }

    #[test]
    fn verifies_bytes() {
        let id = ContentId::of(b"hello world");
        assert!(id.matches(b"hello world"));
        assert!(id.verify(b"hello world").is_ok());
        let mismatch = id.verify(b"hello worle").unwrap_err();
        assert_eq!(mismatch.expected, id);
        assert_eq!(mismatch.actual, ContentId::of(b"hello worle"));
        assert_eq!(mismatch.len, 11);
        assert!(!id.matches(b""));
    }

    #[test]
    fn rejects_other_cids_and_junk() {
        // dag-pb CIDv1 of the same digest: codec 0x70.
        let digest = Sha256::digest(b"x");
        let dag_pb = Cid::new_v1(0x70, Multihash::wrap(SHA2_256, &digest).unwrap());
        assert_eq!(
            dag_pb.to_string().parse::<ContentId>(),
            Err(ParseContentIdError::WrongCodec { codec: 0x70 })
        );
        // raw, but blake2b-256 (0xb220).
        let blake = Cid::new_v1(RAW_CODEC, Multihash::wrap(0xb220, &digest).unwrap());
        assert_eq!(
            blake.to_string().parse::<ContentId>(),
            Err(ParseContentIdError::WrongHash {
                code: 0xb220,
                size: 32
            })
        );
        // raw, "SHA-256" but a short digest.
        let short = Cid::new_v1(RAW_CODEC, Multihash::wrap(SHA2_256, &digest[..20]).unwrap());
        assert!(matches!(
            short.to_string().parse::<ContentId>(),
            Err(ParseContentIdError::WrongHash { size: 20, .. })
        ));
        // CIDv0.
        let v0 = Cid::new_v0(Multihash::wrap(SHA2_256, &digest).unwrap()).unwrap();
        assert!(v0.to_string().starts_with("Qm"));
        assert_eq!(
            v0.to_string().parse::<ContentId>(),
            Err(ParseContentIdError::NotV1)
        );
        let path = format!("/ipfs/{HELLO_WORLD}");
        let trailing = format!("{HELLO_WORLD}aa");
        for junk in ["", "hello", "bafkrei", &path, &trailing] {
            assert!(
                matches!(
                    junk.parse::<ContentId>(),
                    Err(ParseContentIdError::NotACid { .. })
                ),
                "{junk:?}"
            );
        }
        // One character changed in the base32 text: still a CID, but no longer
        // a SHA-256 of anything we asked for; must not parse as HELLO_WORLD.
        let mut altered = HELLO_WORLD.to_owned();
        altered.replace_range(10..11, "a");
        assert_ne!(
            altered.parse::<ContentId>().ok(),
            Some(ContentId::of(b"hello world"))
        );
        // Trailing bytes after a binary CID.
        let mut bytes = ContentId::of(b"x").to_bytes();
        bytes.push(0);
        assert!(matches!(
            ContentId::from_bytes(&bytes),
            Err(ParseContentIdError::NotACid { .. })
        ));
        assert!(serde_json::from_str::<ContentId>("\"Qmfoo\"").is_err());
    }
}
