//! The circuit relays a node knows, and on which of them it holds (or should take) a
//! reservation. A node that AutoNAT finds unreachable listens through every relay it
//! knows, and through each one it learns of later; a bounded number of relays is
//! remembered. No swarm here: the node feeds identify and AutoNAT in and listens on
//! the circuit addresses that come out.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat};

use super::discovery;

/// Relays remembered at most. Past this, a new relay replaces the longest-known one
/// not reserved on (or is ignored if every one is).
pub const MAX_KNOWN_RELAYS: usize = 16;

/// A relay as this node knows it.
#[derive(Debug)]
struct Known {
    /// A direct address of it (no `/p2p/`).
    addr: Multiaddr,
    /// Orders relays by when they were learned, for eviction.
    learned: u64,
    /// Whether this node was told to listen through it.
    reserved: bool,
}

/// The relays a node knows, bounded by [`MAX_KNOWN_RELAYS`].
#[derive(Debug, Default)]
pub struct Relays {
    known: HashMap<PeerId, Known>,
    /// Whether AutoNAT's latest verdict is "private".
    private: bool,
    next: u64,
}

impl Relays {
    /// What identify says about `peer`: whether it offers the relay hop protocol and
    /// where it listens. A relay is remembered at its first direct address, and
    /// forgotten once it no longer offers the hop. Returns a circuit address to listen
    /// on at once if this node is unreachable and the relay is new to it.
    pub fn on_identify(
        &mut self,
        peer: PeerId,
        offers_hop: bool,
        listen_addrs: &[Multiaddr],
    ) -> Option<Multiaddr> {
        let direct = listen_addrs.iter().find(|a| !discovery::is_relayed(a));
        let (true, Some(addr)) = (offers_hop, direct) else {
            self.known.remove(&peer);
            return None;
        };
        let addr = discovery::without_peer(addr.clone());
        if let Some(known) = self.known.get_mut(&peer) {
            known.addr = addr;
        } else {
            if self.known.len() >= MAX_KNOWN_RELAYS && !self.evict_one() {
                return None;
            }
            let learned = self.next;
            self.next += 1;
            let reserved = false;
            self.known.insert(
                peer,
                Known {
                    addr,
                    learned,
                    reserved,
                },
            );
        }
        if self.private {
            self.reserve(peer)
        } else {
            None
        }
    }

    /// AutoNAT's verdict changed. Returns the circuit addresses to listen on: those
    /// of every known relay not reserved on yet, if this node is unreachable.
    pub fn on_reachability(&mut self, status: &autonat::NatStatus) -> Vec<Multiaddr> {
        self.private = *status == autonat::NatStatus::Private;
        if !self.private {
            return Vec::new();
        }
        let peers: Vec<PeerId> = self.known.keys().copied().collect();
        peers
            .into_iter()
            .filter_map(|peer| self.reserve(peer))
            .collect()
    }

    /// How many relays are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no relay is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Marks `peer` reserved on and returns its circuit address, unless it already was.
    fn reserve(&mut self, peer: PeerId) -> Option<Multiaddr> {
        let known = self.known.get_mut(&peer)?;
        if known.reserved {
            return None;
        }
        known.reserved = true;
        Some(
            known
                .addr
                .clone()
                .with(Protocol::P2p(peer))
                .with(Protocol::P2pCircuit),
        )
    }

    /// Forgets the longest-known relay not reserved on; false if every one is.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .known
            .iter()
            .filter(|(_, known)| !known.reserved)
            .min_by_key(|(_, known)| known.learned)
            .map(|(peer, _)| *peer);
        oldest.is_some_and(|peer| self.known.remove(&peer).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    fn circuit(relay: PeerId, port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap()
    }

    const PRIVATE: autonat::NatStatus = autonat::NatStatus::Private;

    #[test]
    fn a_private_node_reserves_on_known_relays_and_on_each_one_learned_later() {
        let mut relays = Relays::default();
        let (early, late) = (PeerId::random(), PeerId::random());
        assert_eq!(
            relays.on_identify(early, true, &[addr(1)]),
            None,
            "reachable so far"
        );
        assert_eq!(relays.on_reachability(&PRIVATE), vec![circuit(early, 1)]);
        assert_eq!(
            relays.on_identify(late, true, &[circuit(early, 1), addr(2)]),
            Some(circuit(late, 2)),
            "a relay learned after the verdict is reserved on at once, at a direct address"
        );
        assert_eq!(relays.on_identify(late, true, &[addr(2)]), None, "once");
        assert_eq!(
            relays.on_reachability(&PRIVATE),
            vec![],
            "no reservation twice"
        );
        let public = autonat::NatStatus::Public(addr(9));
        assert_eq!(relays.on_reachability(&public), vec![]);
        let newest = PeerId::random();
        assert_eq!(
            relays.on_identify(newest, true, &[addr(3)]),
            None,
            "reachable again"
        );
    }

    #[test]
    fn a_relay_that_stops_offering_the_hop_is_forgotten() {
        let mut relays = Relays::default();
        let relay = PeerId::random();
        relays.on_identify(relay, true, &[addr(1)]);
        assert_eq!(relays.len(), 1);
        relays.on_identify(relay, false, &[addr(1)]);
        assert!(relays.is_empty());
        relays.on_identify(relay, true, &[circuit(PeerId::random(), 2)]);
        assert!(
            relays.is_empty(),
            "a relay with no direct address is of no use"
        );
    }

    #[test]
    fn known_relays_are_capped_and_the_oldest_unreserved_goes_first() {
        let mut relays = Relays::default();
        let first = PeerId::random();
        relays.on_identify(first, true, &[addr(1)]);
        relays.on_reachability(&PRIVATE);
        let mut later = Vec::new();
        for port in 2..=MAX_KNOWN_RELAYS as u16 {
            let peer = PeerId::random();
            relays.on_identify(peer, true, &[addr(port)]);
            later.push(peer);
        }
        assert_eq!(relays.len(), MAX_KNOWN_RELAYS);
        // All reserved on (the node is private): a further relay finds no room.
        assert_eq!(
            relays.on_identify(PeerId::random(), true, &[addr(100)]),
            None
        );
        assert_eq!(relays.len(), MAX_KNOWN_RELAYS);

        let mut reachable = Relays::default();
        let mut peers = Vec::new();
        for port in 1..=MAX_KNOWN_RELAYS as u16 + 1 {
            let peer = PeerId::random();
            reachable.on_identify(peer, true, &[addr(port)]);
            peers.push(peer);
        }
        assert_eq!(reachable.len(), MAX_KNOWN_RELAYS);
        assert!(!reachable.known.contains_key(&peers[0]), "the oldest went");
        assert!(reachable.known.contains_key(&peers[MAX_KNOWN_RELAYS]));
        assert_eq!(later.len(), MAX_KNOWN_RELAYS - 1);
    }
}
