//! Round-trip times: the latest one ping measured to each connected peer (kept on
//! the swarm's side, in [`RoundTrips`]), and [`rank`], the one place that orders a
//! protocol's providers by them, closest first.
//!
//! libp2p's ping runs on every connection: its first ping goes out as soon as the
//! connection is up (one round trip to negotiate `/ipfs/ping/1.0.0`, then the ping's
//! own), and one every 15 s after. The time it reports covers the ping alone, so a
//! provider reached during a lookup has a measurement about two round trips later;
//! [`Network::providers`](super::network::Network::providers) waits that long, up to
//! [`RTT_WAIT`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures::channel::mpsc;
use libp2p::PeerId;

use super::network::Provider;

/// How long a provider lookup waits, at most, for the first ping of the providers it
/// has just connected to, so they can be ranked by a measured round trip. Two round
/// trips of a 300 ms path fit.
pub const RTT_WAIT: Duration = Duration::from_secs(1);

/// Orders providers closest first: reached ones with a measured round trip, by it
/// (ascending); then reached ones without one; then those that could not be reached.
/// Providers that tie keep their order (the sort is stable).
pub fn rank(providers: &mut [Provider]) {
    providers.sort_by_key(|p| (p.reached.is_err(), p.rtt.is_none(), p.rtt));
}

/// Providers in their order with their round trips, for logs: `PEER=12.3ms`, `PEER=?`
/// when none was measured, `PEER=unreachable`; separated by `,` (no space: one word
/// for whoever reads logs with a script).
pub struct Ranking<'a>(pub &'a [Provider]);

impl fmt::Display for Ranking<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, provider) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=", provider.peer)?;
            match (&provider.reached, provider.rtt) {
                (Err(_), _) => f.write_str("unreachable")?,
                (Ok(_), rtt) => write!(f, "{}", Rtt(rtt))?,
            }
        }
        Ok(())
    }
}

/// A round trip for people: `12.3ms`, or `?` if none was measured.
#[derive(Debug, Clone, Copy)]
pub struct Rtt(pub Option<Duration>);

impl fmt::Display for Rtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rtt) => write!(f, "{:.1}ms", rtt.as_secs_f64() * 1000.0),
            None => f.write_str("?"),
        }
    }
}

/// The swarm's side: the latest round trip to each connected peer, and the requests
/// waiting for a peer's first one.
#[derive(Default)]
pub struct RoundTrips {
    /// The latest measurement per peer; a peer's entry goes with its last connection,
    /// so the map is bounded by the connection limits.
    latest: HashMap<PeerId, Duration>,
    /// Requests still waiting, each for the peers it asked about that were connected
    /// but not yet measured. One goes when nothing is left for it to wait for, or its
    /// asker has given up.
    waiting: Vec<Waiter>,
}

struct Waiter {
    peers: HashSet<PeerId>,
    reply: mpsc::Sender<(PeerId, Duration)>,
}

impl RoundTrips {
    /// The latest round trip measured to `peer`, if it is connected and was measured.
    pub fn get(&self, peer: &PeerId) -> Option<Duration> {
        self.latest.get(peer).copied()
    }

    /// Sends on `reply` the round trip of each of `peers` that is known, and later
    /// that of each one `is_connected` says is connected, as its first ping answers
    /// (or nothing, if the ping fails or the peer disconnects). `reply` closes once
    /// nothing is left to send; it needs room for one message per peer.
    pub fn ask(
        &mut self,
        peers: Vec<PeerId>,
        mut reply: mpsc::Sender<(PeerId, Duration)>,
        is_connected: impl Fn(&PeerId) -> bool,
    ) {
        let mut unmeasured = HashSet::new();
        for peer in peers {
            match self.get(&peer) {
                Some(rtt) => {
                    let _ = reply.try_send((peer, rtt));
                }
                None if is_connected(&peer) => {
                    unmeasured.insert(peer);
                }
                None => {}
            }
        }
        self.waiting.retain(|waiter| !waiter.reply.is_closed());
        if !unmeasured.is_empty() {
            self.waiting.push(Waiter {
                peers: unmeasured,
                reply,
            });
        }
    }

    /// Ping measured `rtt` to `peer`, which is connected.
    pub fn measured(&mut self, peer: PeerId, rtt: Duration) {
        self.latest.insert(peer, rtt);
        self.settle(peer, Some(rtt));
    }

    /// A ping to `peer` failed: whoever waits for its first measurement stops waiting
    /// (the next ping is 15 s away). A measurement it had stays.
    pub fn failed(&mut self, peer: PeerId) {
        self.settle(peer, None);
    }

    /// The last connection to `peer` closed: forgets it.
    pub fn disconnected(&mut self, peer: PeerId) {
        self.latest.remove(&peer);
        self.settle(peer, None);
    }

    fn settle(&mut self, peer: PeerId, rtt: Option<Duration>) {
        self.waiting.retain_mut(|waiter| {
            if waiter.peers.remove(&peer)
                && let Some(rtt) = rtt
            {
                let _ = waiter.reply.try_send((peer, rtt));
            }
            !waiter.peers.is_empty() && !waiter.reply.is_closed()
        });
    }

    /// How many requests are waiting (for tests).
    #[cfg(test)]
    pub(super) fn waiters(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use futures::channel::mpsc::TryRecvError;
    use libp2p::Multiaddr;

    use super::*;

    fn provider(peer: PeerId, reached: bool, rtt_ms: Option<u64>) -> Provider {
        Provider {
            peer,
            reached: if reached {
                Ok(None::<Multiaddr>)
            } else {
                Err("refused".into())
            },
            was_connected: false,
            rtt: rtt_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn providers_rank_by_measured_round_trip_then_unknown_then_unreachable() {
        let peers: Vec<PeerId> = (0..7).map(|_| PeerId::random()).collect();
        let mut providers = vec![
            provider(peers[0], false, None),
            provider(peers[1], true, None),
            provider(peers[2], true, Some(100)),
            provider(peers[3], true, Some(20)),
            provider(peers[4], true, None),
            provider(peers[5], true, Some(100)),
            provider(peers[6], true, Some(60)),
        ];
        rank(&mut providers);
        let order: Vec<PeerId> = providers.iter().map(|p| p.peer).collect();
        let expected = [3, 6, 2, 5, 1, 4, 0].map(|i| peers[i]);
        assert_eq!(order, expected, "ties (2 and 5, 1 and 4) keep their order");
        let shown = Ranking(&providers[3..6]).to_string();
        assert_eq!(
            shown,
            format!("{}=100.0ms,{}=?,{}=?", peers[5], peers[1], peers[4])
        );
        assert_eq!(
            Ranking(&providers[6..]).to_string(),
            format!("{}=unreachable", peers[0])
        );
    }

    #[test]
    fn an_asker_gets_known_round_trips_at_once_and_first_pings_as_they_come() {
        let (known, pending, gone, unconnected) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut trips = RoundTrips::default();
        trips.measured(known, Duration::from_millis(5));
        let (reply, mut answers) = mpsc::channel(4);
        let connected = [known, pending, gone];
        trips.ask(vec![known, pending, gone, unconnected], reply, |peer| {
            connected.contains(peer)
        });
        assert_eq!(answers.try_recv(), Ok((known, Duration::from_millis(5))));
        assert!(
            answers.try_recv() == Err(TryRecvError::Empty),
            "nothing more yet, still open"
        );
        assert_eq!(trips.waiters(), 1);

        trips.disconnected(gone);
        assert!(
            answers.try_recv() == Err(TryRecvError::Empty),
            "a peer that left sends nothing"
        );
        trips.measured(pending, Duration::from_millis(7));
        assert_eq!(answers.try_recv(), Ok((pending, Duration::from_millis(7))));
        assert_eq!(
            answers.try_recv(),
            Err(TryRecvError::Closed),
            "nothing left"
        );
        assert_eq!(trips.waiters(), 0);
        assert_eq!(trips.get(&pending), Some(Duration::from_millis(7)));
    }

    #[tokio::test]
    async fn a_failed_ping_or_a_departed_asker_ends_the_wait_and_departure_forgets() {
        let peer = PeerId::random();
        let mut trips = RoundTrips::default();
        let (reply, answers) = mpsc::channel(1);
        trips.ask(vec![peer], reply, |_| true);
        trips.failed(peer);
        assert_eq!(answers.collect::<Vec<_>>().await, []);
        assert_eq!(trips.waiters(), 0);

        let (reply, answers) = mpsc::channel(1);
        trips.ask(vec![peer], reply, |_| true);
        drop(answers);
        trips.measured(peer, Duration::from_millis(3));
        assert_eq!(trips.waiters(), 0, "the asker gave up");
        trips.disconnected(peer);
        assert_eq!(trips.get(&peer), None);
    }
}
