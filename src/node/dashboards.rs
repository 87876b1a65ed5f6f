//! Other nodes' dashboards: this node tells its admin endpoint's address on
//! [`net::dashboard::PROTOCOL`] (when it has one), and asks each peer that serves the
//! protocol (identify says so) for its own, so the dashboard's Cluster panel can link
//! to it.
//!
//! What a peer says is trusted only as far as it must be: the answer comes over a
//! connection to that peer (its own word, not a third party's), is a bare socket
//! address of at most [`net::dashboard::MAX_ANSWER`] bytes, and the link is a URL this
//! module builds from it ([`link`]), `http://IP:PORT/`, nothing else. A peer is asked
//! at most once per [`ASK_INTERVAL`], at most [`MAX_ASKING`] peers at once, only
//! peers the cluster view holds (itself bounded); an answer must come within
//! [`ASK_TIMEOUT`].
//!
//! A loopback address is only useful to a viewer on the same machine: the link is
//! kept when the peer's address is not loopback, or when this node reaches the peer
//! over loopback (a devnet on one host). A peer that stops serving the protocol
//! loses its link at its next identify.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tokio::sync::Semaphore;

use super::Handler;
use crate::admin::NetworkView;
use crate::admin::state::ConnectionView;
use crate::net::router::InboundStream;
use crate::net::{self, Behaviour};

/// How often one peer is asked, at most.
pub const ASK_INTERVAL: Duration = Duration::from_secs(600);
/// Peers asked at once, at most; identify comes again later for those skipped.
pub const MAX_ASKING: usize = 8;
/// How long a peer may take to open the stream and answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers remembered as asked, at most (twice the cluster view's cap).
const MAX_ASKED: usize = 2 * super::view::MAX_CLUSTER;

/// Serves [`net::dashboard::PROTOCOL`]: the admin endpoint's bound address.
pub(super) struct Tell(pub SocketAddr);

impl Handler for Tell {
    fn accept(&self, inbound: InboundStream, _closing: bool) -> BoxFuture<'static, ()> {
        let address = self.0;
        let mut stream = inbound.stream;
        async move {
            if let Err(error) = net::dashboard::send_address(&mut stream, address).await {
                tracing::debug!(%error, "dashboard address not delivered");
            }
        }
        .boxed()
    }
}

/// Asks peers where their dashboards are, within the bounds above.
pub(super) struct Ask {
    /// When each peer was last asked.
    asked: HashMap<PeerId, Instant>,
    /// One permit per question in flight.
    slots: Arc<Semaphore>,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            asked: HashMap::new(),
            slots: Arc::new(Semaphore::new(MAX_ASKING)),
        }
    }
}

impl Ask {
    /// `peer` identified itself with `info`: if it serves the protocol, is in the
    /// cluster view and was not asked lately, asks it (in a task of its own) and
    /// notes the link in `view`.
    pub(super) fn on_identify(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        view: &Arc<RwLock<NetworkView>>,
        peer: PeerId,
        info: &identify::Info,
    ) {
        let key = peer.to_string();
        if !info.protocols.contains(&net::dashboard::PROTOCOL) {
            // No dashboard (any more): no link.
            let mut view = view.write().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = view.cluster.get_mut(&key) {
                known.dashboard = None;
            }
            return;
        }
        let in_cluster = view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cluster
            .contains_key(&key);
        if !in_cluster || !self.due(peer, Instant::now()) {
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return;
        };
        self.asked.insert(peer, Instant::now());
        let opening = swarm
            .behaviour_mut()
            .router
            .open_stream(peer, vec![net::dashboard::PROTOCOL]);
        let view = view.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let asked = async {
                let (mut stream, _) = opening
                    .await
                    .map_err(|_| "not connected".to_string())?
                    .map_err(|error| error.to_string())?;
                net::dashboard::read_address(&mut stream)
                    .await
                    .map_err(|error| error.to_string())
            };
            let address = match tokio::time::timeout(ASK_TIMEOUT, asked).await {
                Ok(Ok(address)) => address,
                Ok(Err(error)) => {
                    return tracing::debug!(%peer, %error, "no dashboard address from peer");
                }
                Err(_) => return tracing::debug!(%peer, "dashboard address: no answer in time"),
            };
            let mut view = view.write().unwrap_or_else(|e| e.into_inner());
            let connections: Vec<ConnectionView> = view
                .peers
                .get(&key)
                .map(|p| p.connections.values().cloned().collect())
                .unwrap_or_default();
            if let Some(known) = view.cluster.get_mut(&key) {
                known.dashboard = link(address, &connections);
            }
        });
    }

    /// Whether `peer` may be asked `now`; forgets old questions when too many are
    /// remembered (and refuses while all are recent).
    fn due(&mut self, peer: PeerId, now: Instant) -> bool {
        let recent = |at: &Instant| now.duration_since(*at) < ASK_INTERVAL;
        if self.asked.get(&peer).is_some_and(recent) {
            return false;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.retain(|_, at| recent(at));
        }
        self.asked.len() < MAX_ASKED
    }
}

/// The URL of a peer's dashboard that says it listens at `advertised`, reached over
/// `connections`; `None` if no viewer of this node could use it.
///
/// An unspecified IP (`0.0.0.0`, `::`) becomes the IP a direct connection reaches the
/// peer at; a loopback one is kept only if a direct connection to the peer is over
/// loopback too (both on this machine).
pub fn link(advertised: SocketAddr, connections: &[ConnectionView]) -> Option<String> {
    if advertised.port() == 0 {
        return None;
    }
    let direct: Vec<IpAddr> = connections
        .iter()
        .filter(|c| !c.relayed)
        .filter_map(|c| c.address.parse::<Multiaddr>().ok())
        .filter_map(|address| ip_of(&address))
        .collect();
    let ip = match advertised.ip() {
        ip if ip.is_unspecified() => *direct
            .iter()
            .find(|d| advertised.is_ipv6() || d.is_ipv4())?,
        ip => ip,
    };
    if ip.is_multicast() || (ip.is_loopback() && !direct.iter().any(IpAddr::is_loopback)) {
        return None;
    }
    Some(format!(
        "http://{}/",
        SocketAddr::new(ip, advertised.port())
    ))
}

/// The IP an address starts with, if it does.
fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    match address.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(address: &str, relayed: bool) -> ConnectionView {
        ConnectionView {
            direction: "outbound",
            address: address.into(),
            transport: "tcp",
            relayed,
            rtt_ms: None,
        }
    }

    fn at(address: &str) -> SocketAddr {
        address.parse().unwrap()
    }

    #[test]
    fn a_link_is_built_only_where_a_viewer_can_follow_it() {
        let local = [over("/ip4/127.0.0.1/tcp/4001", false)];
        let remote = [over("/ip4/10.0.0.7/tcp/4001", false)];
        let relayed = [over(
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit",
            true,
        )];
        // Loopback: only when the peer is reached over loopback.
        assert_eq!(
            link(at("127.0.0.1:2026"), &local).as_deref(),
            Some("http://127.0.0.1:2026/")
        );
        assert_eq!(link(at("127.0.0.1:2026"), &remote), None);
        assert_eq!(link(at("127.0.0.1:2026"), &relayed), None);
        assert_eq!(link(at("127.0.0.1:2026"), &[]), None);
        // Not loopback: always.
        assert_eq!(
            link(at("10.0.0.7:2026"), &local).as_deref(),
            Some("http://10.0.0.7:2026/")
        );
        assert_eq!(
            link(at("[2001:db8::1]:2026"), &[]).as_deref(),
            Some("http://[2001:db8::1]:2026/")
        );
        // Unspecified: the IP the peer is reached at, of the listener's family.
        assert_eq!(
            link(at("0.0.0.0:2026"), &remote).as_deref(),
            Some("http://10.0.0.7:2026/")
        );
        assert_eq!(link(at("0.0.0.0:2026"), &relayed), None);
        assert_eq!(
            link(at("0.0.0.0:2026"), &[over("/ip6/::1/tcp/1", false)]),
            None
        );
        assert_eq!(
            link(at("[::]:2026"), &[over("/ip6/::1/tcp/1", false)]).as_deref(),
            Some("http://[::1]:2026/")
        );
        // Nonsense.
        assert_eq!(link(at("10.0.0.7:0"), &remote), None);
        assert_eq!(link(at("224.0.0.1:80"), &remote), None);
    }

    #[test]
    fn a_peer_is_asked_once_per_interval_and_the_memory_is_bounded() {
        let mut ask = Ask::default();
        let now = Instant::now();
        let peer = PeerId::random();
        assert!(ask.due(peer, now));
        ask.asked.insert(peer, now);
        assert!(!ask.due(peer, now + ASK_INTERVAL / 2));
        assert!(ask.due(peer, now + ASK_INTERVAL));
        for _ in 1..MAX_ASKED {
            ask.asked.insert(PeerId::random(), now);
        }
        assert!(!ask.due(PeerId::random(), now), "full of recent questions");
        assert!(
            ask.due(PeerId::random(), now + ASK_INTERVAL),
            "old ones forgotten"
        );
        assert!(ask.asked.is_empty());
    }
}
