//! Lookups that ask both DHTs (see [`discovery`](super::discovery)) and merge what
//! they find: a [`ProviderLookup`] for a cell's providers, a [`PeerSearch`] for a
//! peer's addresses. Each answers once every query it started has finished (and, for
//! providers, every dial it started has settled); [`Queries`] tells which lookup a
//! DHT query belongs to. No swarm here: `net::control` feeds them.

use std::collections::{HashMap, HashSet};

use futures::channel::oneshot;
use libp2p::{Multiaddr, PeerId, kad};

use super::discovery::Dht;
use super::network::{DhtPeer, Provider};

/// Names a lookup across the queries it runs in both DHTs.
pub(super) type LookupId = u64;

/// Which lookup each running DHT query serves. Query IDs are only unique within one
/// DHT, so they are keyed with it.
#[derive(Default)]
pub(super) struct Queries {
    lookups: HashMap<(Dht, kad::QueryId), LookupId>,
    next: LookupId,
}

impl Queries {
    /// A new lookup served by `queries`.
    pub(super) fn start(
        &mut self,
        queries: impl IntoIterator<Item = (Dht, kad::QueryId)>,
    ) -> LookupId {
        let id = self.next;
        self.next += 1;
        for query in queries {
            self.lookups.insert(query, id);
        }
        id
    }

    /// The lookup a query serves, if any; forgets the query if it is `last` heard of.
    pub(super) fn lookup_of(
        &mut self,
        dht: Dht,
        query: kad::QueryId,
        last: bool,
    ) -> Option<LookupId> {
        if last {
            self.lookups.remove(&(dht, query))
        } else {
            self.lookups.get(&(dht, query)).copied()
        }
    }
}

/// A provider lookup in progress: the providers found so far, each once whichever
/// DHT found it, and the dials still out.
pub(super) struct ProviderLookup {
    reply: oneshot::Sender<Vec<Provider>>,
    seen: HashSet<PeerId>,
    found: Vec<Provider>,
    /// Providers being dialed (by us or by a DHT query itself).
    dialing: HashSet<PeerId>,
    /// DHT queries still running.
    queries_left: usize,
}

impl ProviderLookup {
    /// A lookup that answers `reply` once `queries` queries have finished.
    pub(super) fn new(reply: oneshot::Sender<Vec<Provider>>, queries: usize) -> Self {
        Self {
            reply,
            seen: HashSet::new(),
            found: Vec::new(),
            dialing: HashSet::new(),
            queries_left: queries,
        }
    }

    /// Whether `peer` is new to this lookup (from either DHT); notes it as seen.
    pub(super) fn first_sight(&mut self, peer: PeerId) -> bool {
        self.seen.insert(peer)
    }

    /// A provider whose outcome is known.
    pub(super) fn settled(&mut self, provider: Provider) {
        self.found.push(provider);
    }

    /// A provider being dialed; [`ProviderLookup::dialed`] settles it.
    pub(super) fn dialing(&mut self, peer: PeerId) {
        self.dialing.insert(peer);
    }

    /// A dial to `peer` settled. Returns whether this lookup was waiting for it.
    pub(super) fn dialed(
        &mut self,
        peer: PeerId,
        reached: Result<Option<Multiaddr>, String>,
    ) -> bool {
        if !self.dialing.remove(&peer) {
            return false;
        }
        self.found.push(Provider {
            peer,
            reached,
            was_connected: false,
            rtt: None,
        });
        true
    }

    /// One of its DHT queries finished.
    pub(super) fn query_finished(&mut self) {
        self.queries_left = self.queries_left.saturating_sub(1);
    }

    /// Whether every query has finished and every dial settled.
    pub(super) fn is_done(&self) -> bool {
        self.queries_left == 0 && self.dialing.is_empty()
    }

    /// Answers: providers we were connected to first, then the reachable ones, then
    /// the rest.
    pub(super) fn answer(mut self) {
        self.found
            .sort_by_key(|p| (!p.was_connected, p.reached.is_err()));
        let _ = self.reply.send(self.found);
    }
}

/// A search for one peer's addresses in both DHTs.
pub(super) struct PeerSearch {
    /// Who.
    pub(super) peer: PeerId,
    /// Its addresses, as the DHTs reported them, each once.
    addresses: Vec<Multiaddr>,
    /// DHT queries still running.
    queries_left: usize,
}

impl PeerSearch {
    /// A search for `peer` through `queries` queries.
    pub(super) fn new(peer: PeerId, queries: usize) -> Self {
        Self {
            peer,
            addresses: Vec::new(),
            queries_left: queries,
        }
    }

    /// A query finished with these closest peers. Returns the addresses found in
    /// all queries once none is left running.
    pub(super) fn query_finished(&mut self, peers: &[kad::PeerInfo]) -> Option<Vec<Multiaddr>> {
        let found = peers.iter().filter(|info| info.peer_id == self.peer);
        for addr in found.flat_map(|info| &info.addrs) {
            if !self.addresses.contains(addr) {
                self.addresses.push(addr.clone());
            }
        }
        self.queries_left = self.queries_left.saturating_sub(1);
        (self.queries_left == 0).then(|| std::mem::take(&mut self.addresses))
    }
}

/// A search for the DHT servers closest to a key, in both DHTs.
pub(super) struct PeerWalk {
    reply: oneshot::Sender<Vec<DhtPeer>>,
    found: Vec<DhtPeer>,
    /// DHT queries still running.
    queries_left: usize,
}

impl PeerWalk {
    /// A walk that answers `reply` once `queries` queries have finished.
    pub(super) fn new(reply: oneshot::Sender<Vec<DhtPeer>>, queries: usize) -> Self {
        Self {
            reply,
            found: Vec::new(),
            queries_left: queries,
        }
    }

    /// A query finished with these closest peers: merges them (each peer once, each
    /// address once). Returns whether none is left running.
    pub(super) fn query_finished(&mut self, peers: &[kad::PeerInfo]) -> bool {
        for info in peers {
            let index = match self.found.iter().position(|p| p.peer == info.peer_id) {
                Some(index) => index,
                None => {
                    self.found.push(DhtPeer {
                        peer: info.peer_id,
                        addresses: Vec::new(),
                    });
                    self.found.len() - 1
                }
            };
            let addresses = &mut self.found[index].addresses;
            for addr in &info.addrs {
                if !addresses.contains(addr) {
                    addresses.push(addr.clone());
                }
            }
        }
        self.queries_left = self.queries_left.saturating_sub(1);
        self.queries_left == 0
    }

    /// Answers with the peers found.
    pub(super) fn answer(self) {
        let _ = self.reply.send(self.found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(
        peer: PeerId,
        was_connected: bool,
        reached: Result<Option<Multiaddr>, String>,
    ) -> Provider {
        Provider {
            peer,
            reached,
            was_connected,
            rtt: None,
        }
    }

    #[test]
    fn a_provider_lookup_answers_after_both_queries_and_its_dials() {
        let (reply, mut answer) = oneshot::channel();
        let mut lookup = ProviderLookup::new(reply, 2);
        let (connected, dialed, failed) = (PeerId::random(), PeerId::random(), PeerId::random());

        // The WAN DHT finds two providers, the LAN DHT the same two and a third.
        for peer in [dialed, failed] {
            assert!(lookup.first_sight(peer));
            lookup.dialing(peer);
        }
        lookup.query_finished();
        for peer in [dialed, failed] {
            assert!(!lookup.first_sight(peer), "seen in the other DHT already");
        }
        assert!(lookup.first_sight(connected));
        lookup.settled(provider(connected, true, Ok(None)));
        assert!(!lookup.is_done(), "one query still runs");
        lookup.query_finished();
        assert!(!lookup.is_done(), "dials are still out");

        assert!(lookup.dialed(failed, Err("refused".into())));
        assert!(!lookup.dialed(failed, Err("again".into())), "settled once");
        assert!(!lookup.is_done());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert!(lookup.dialed(dialed, Ok(Some(addr.clone()))));
        assert!(lookup.is_done());

        lookup.answer();
        let found = answer.try_recv().unwrap().expect("answered");
        let peers: Vec<PeerId> = found.iter().map(|p| p.peer).collect();
        assert_eq!(
            peers,
            [connected, dialed, failed],
            "connected, reached, failed"
        );
        assert_eq!(found[1].reached.as_ref().unwrap().as_ref(), Some(&addr));
    }

    #[test]
    fn a_peer_search_merges_the_addresses_both_dhts_found() {
        let (target, other) = (PeerId::random(), PeerId::random());
        let info = |peer_id, addrs: &[&str]| kad::PeerInfo {
            peer_id,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let mut search = PeerSearch::new(target, 2);
        let wan = [
            info(target, &["/ip4/8.8.8.8/tcp/1"]),
            info(other, &["/ip4/9.9.9.9/tcp/1"]),
        ];
        assert_eq!(
            search.query_finished(&wan),
            None,
            "the LAN query still runs"
        );
        let lan = [info(target, &["/ip4/10.0.0.1/tcp/1", "/ip4/8.8.8.8/tcp/1"])];
        let merged = search.query_finished(&lan).expect("both finished");
        let expected: Vec<Multiaddr> = ["/ip4/8.8.8.8/tcp/1", "/ip4/10.0.0.1/tcp/1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(merged, expected);
    }

    #[test]
    fn a_peer_walk_merges_both_dhts_and_answers_after_both() {
        let (reply, mut answer) = oneshot::channel();
        let mut walk = PeerWalk::new(reply, 2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let info = |peer_id, addrs: &[&str]| kad::PeerInfo {
            peer_id,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        assert!(!walk.query_finished(&[info(a, &["/ip4/127.0.0.1/tcp/1"])]));
        let lan = [
            info(b, &["/ip4/127.0.0.1/tcp/2"]),
            info(a, &["/ip4/127.0.0.1/tcp/1", "/ip4/10.0.0.1/tcp/1"]),
        ];
        assert!(walk.query_finished(&lan));
        walk.answer();
        let found = answer.try_recv().unwrap().expect("answered");
        let addrs = |p: &DhtPeer| {
            p.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].peer, found[1].peer), (a, b));
        assert_eq!(
            addrs(&found[0]),
            ["/ip4/127.0.0.1/tcp/1", "/ip4/10.0.0.1/tcp/1"]
        );
        assert_eq!(addrs(&found[1]), ["/ip4/127.0.0.1/tcp/2"]);
    }

    #[test]
    fn queries_map_to_their_lookup_per_dht() {
        let mut queries = Queries::default();
        // Both DHTs number their queries alike; only the pair names one.
        let mut wan = kad::Behaviour::new(
            PeerId::random(),
            kad::store::MemoryStore::new(PeerId::random()),
        );
        let q = wan.get_providers(kad::RecordKey::new(&b"k"));
        let first = queries.start([(Dht::Wan, q)]);
        let second = queries.start([(Dht::Lan, q)]);
        assert_ne!(first, second);
        assert_eq!(queries.lookup_of(Dht::Wan, q, false), Some(first));
        assert_eq!(queries.lookup_of(Dht::Lan, q, true), Some(second));
        assert_eq!(
            queries.lookup_of(Dht::Lan, q, false),
            None,
            "forgotten after the last step"
        );
        assert_eq!(queries.lookup_of(Dht::Wan, q, true), Some(first));
    }
}
