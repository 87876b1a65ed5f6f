//! [`PeerNames`]: peers' base58 names, made once per peer instead of once per stream.
//!
//! A stream needs its peer's name in text several times (the log span, the open-stream
//! count the dashboard keys by it, the guest's arguments), and `PeerId`'s `Display`
//! encodes base58 afresh each time (~2.6 µs here) — more than the rest of the node's
//! accept path together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

/// Most names kept; when full, the cache starts over (so many peers opening streams
/// cost bounded memory, and a name is at worst made again).
const MAX_NAMES: usize = 4096;

/// A bounded cache of peers' names (`PeerId`'s `Display`).
#[derive(Default)]
pub(super) struct PeerNames(Mutex<HashMap<PeerId, Arc<str>>>);

impl PeerNames {
    /// `peer` in base58, as `PeerId`'s `Display` writes it.
    pub(super) fn get(&self, peer: &PeerId) -> Arc<str> {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = names.get(peer) {
            return name.clone();
        }
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        let name: Arc<str> = peer.to_string().into();
        names.insert(*peer, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_display_and_stay_bounded() {
        let names = PeerNames::default();
        let peer = PeerId::random();
        assert_eq!(&*names.get(&peer), peer.to_string());
        assert!(Arc::ptr_eq(&names.get(&peer), &names.get(&peer)));
        for _ in 0..MAX_NAMES + 10 {
            names.get(&PeerId::random());
        }
        assert!(names.0.lock().unwrap().len() <= MAX_NAMES);
        assert_eq!(&*names.get(&peer), peer.to_string());
    }
}
