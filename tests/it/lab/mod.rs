//! A simulated internet on one machine: network namespaces joined by point-to-point
//! links (each with a delay of its own), routers that source-NAT a LAN with nftables,
//! and `ww` processes running inside.
//!
//! The topology is a star, as the internet looks from an edge: a *core* namespace
//! routes between every site on the "internet" (198.51.100.0/24, a documentation
//! range). A site is a public host (say a relay), a NAT router, or a region's router;
//! a router has hosts behind it on a network of its own (198.18.N.0/24, inside the
//! benchmarking range), hidden behind its NAT or, for a region, routed to by the core. Every
//! link is a /30 of its own (as ISPs number point-to-point links), so routing is one
//! default route per namespace; the core knows no route to any LAN, so only the
//! routers' NAT reaches out of one. Nothing is connected to the host's own interfaces: no lab traffic can
//! leave the lab, and every address is inside a namespace the test made.
//!
//! Namespaces are named `wwlab-<pid>-<lab>-<name>`: a lab removes them when dropped,
//! and every new lab first removes those of test processes that are gone (killed
//! before they could clean up).
//!
//! Needs root (CI runs as root) and nftables (installed here if missing, as `.ci/run`
//! installs it): [`Lab::new`] says why a test is skipped when it cannot run.

pub mod link;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::{PATIENCE, WW};
use link::{DelayedLink, Side, in_netns};

/// The port every lab node listens on, TCP and QUIC.
pub const PORT: u16 = 2025;
/// Prefix of every namespace a lab makes.
const PREFIX: &str = "wwlab-";

/// How a router maps its LAN's connections onto its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping, as most home routers do: nftables' `masquerade`
    /// keeps a connection's source port when it is free, so one host port maps to
    /// one router port whatever the destination. Hole punching works through it.
    EndpointIndependent,
    /// Symmetric (endpoint-dependent) mapping: `masquerade fully-random` picks a new
    /// random port for every connection, so the port a peer observed is useless to
    /// anyone else. Hole punching cannot work through it.
    Symmetric,
}

/// A namespace with an address, where processes can run.
#[derive(Debug, Clone)]
pub struct Site {
    /// The namespace's name (for `ip netns exec`).
    pub netns: String,
    /// Its address: on the internet for public hosts and routers, on its LAN for a
    /// host behind a router.
    pub ip: Ipv4Addr,
}

/// A router that source-NATs its LAN onto its internet address.
#[derive(Debug)]
pub struct Router {
    /// The router itself: its WAN address is `site.ip`.
    pub site: Site,
    /// Which LAN: 198.18.`lan`.0/24.
    lan: u8,
    /// Hosts on the LAN so far.
    hosts: u8,
}

/// One simulated internet; everything it made is removed when it is dropped.
pub struct Lab {
    /// `wwlab-<pid>-<lab>-`.
    prefix: String,
    namespaces: Vec<String>,
    links: Vec<DelayedLink>,
    core: String,
    sites: u8,
    lans: u8,
}

impl Lab {
    /// A lab with its core, or `None` (having said why on stderr) where labs cannot
    /// run: not root, or no way to get `ip` and `nft`.
    pub fn new() -> Option<Lab> {
        if let Err(why) = prerequisites() {
            eprintln!("skipped: {why}");
            return None;
        }
        remove_leftovers();
        static LABS: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}-",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            core: format!("{prefix}core"),
            prefix,
            namespaces: Vec::new(),
            links: Vec::new(),
            sites: 0,
            lans: 0,
        };
        let core = lab.core.clone();
        lab.namespace(&core);
        forward(&core);
        Some(lab)
    }

    /// A host on the internet at 198.51.100.x, `delay` (one way) from the core.
    pub fn public_host(&mut self, name: &str, delay: Duration) -> Site {
        self.site(name, delay)
    }

    /// A router on the internet, `delay` (one way) from the core, NATing a LAN of
    /// its own with `nat`.
    pub fn router(&mut self, name: &str, nat: Nat, delay: Duration) -> Router {
        let site = self.site(name, delay);
        forward(&site.netns);
        let random = match nat {
            Nat::EndpointIndependent => "",
            Nat::Symmetric => " fully-random",
        };
        // Unsolicited packets from the internet are dropped, as a home router does,
        // whether they would reach the router itself or (they cannot: nothing is
        // DNATed) the LAN; replies to the LAN's own connections pass.
        nft(
            &site.netns,
            &format!(
                "table ip lab {{
                   chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"wan\" masquerade{random}; }}
                   chain input {{ type filter hook input priority filter; iifname \"wan\" ct state new drop; }}
                   chain forward {{ type filter hook forward priority filter; iifname \"wan\" ct state new drop; }}
                 }}"
            ),
        );
        self.lans += 1;
        assert!(self.lans < 255, "too many LANs");
        Router {
            site,
            lan: self.lans,
            hosts: 0,
        }
    }

    /// A region of the internet: a router `delay` (one way) from the core that routes
    /// (without NAT) a network of hosts of its own, reachable from everywhere; place
    /// hosts in it with [`Lab::host_behind`]. Latency inside a region is then twice
    /// the hosts' delay, between regions the hosts' and both routers' delays.
    pub fn region(&mut self, name: &str, delay: Duration) -> Router {
        let site = self.site(name, delay);
        forward(&site.netns);
        self.lans += 1;
        assert!(self.lans < 255, "too many LANs");
        let network = format!("198.18.{}.0/24", self.lans);
        ip(&[
            "-n",
            &self.core,
            "route",
            "add",
            &network,
            "via",
            &site.ip.to_string(),
        ]);
        Router {
            site,
            lan: self.lans,
            hosts: 0,
        }
    }

    /// A host on `router`'s LAN, `delay` (one way) from the router.
    pub fn host_behind(&mut self, router: &mut Router, name: &str, delay: Duration) -> Site {
        router.hosts += 1;
        assert!(
            router.hosts < 64,
            "too many hosts behind {}",
            router.site.netns
        );
        let gateway = Ipv4Addr::new(198, 18, router.lan, 4 * router.hosts + 1);
        let ip = Ipv4Addr::new(198, 18, router.lan, 4 * router.hosts + 2);
        let netns = format!("{}{name}", self.prefix);
        self.namespace(&netns);
        let device = format!("h{}", router.hosts);
        self.link(
            Side {
                netns: &router.site.netns,
                device: &device,
                address: gateway,
                peer: ip,
            },
            Side {
                netns: &netns,
                device: "lan",
                address: ip,
                peer: gateway,
            },
            delay,
        );
        default_route(&netns, gateway);
        Site { netns, ip }
    }

    /// A namespace on the internet with a link to the core.
    fn site(&mut self, name: &str, delay: Duration) -> Site {
        self.sites += 1;
        assert!(self.sites < 64, "too many sites on the internet");
        let core_ip = Ipv4Addr::new(198, 51, 100, 4 * self.sites + 1);
        let ip = Ipv4Addr::new(198, 51, 100, 4 * self.sites + 2);
        let netns = format!("{}{name}", self.prefix);
        self.namespace(&netns);
        let core = self.core.clone();
        let device = format!("s{}", self.sites);
        self.link(
            Side {
                netns: &core,
                device: &device,
                address: core_ip,
                peer: ip,
            },
            Side {
                netns: &netns,
                device: "wan",
                address: ip,
                peer: core_ip,
            },
            delay,
        );
        default_route(&netns, core_ip);
        Site { netns, ip }
    }

    /// A point-to-point link: a veth pair when there is no delay, else a
    /// [`DelayedLink`].
    fn link(&mut self, a: Side, b: Side, delay: Duration) {
        if delay.is_zero() {
            ip(&[
                "-n", a.netns, "link", "add", a.device, "type", "veth", "peer", "name", b.device,
                "netns", b.netns,
            ]);
            for side in [&a, &b] {
                let address = format!("{}/30", side.address);
                ip(&[
                    "-n",
                    side.netns,
                    "addr",
                    "add",
                    &address,
                    "dev",
                    side.device,
                ]);
                ip(&["-n", side.netns, "link", "set", side.device, "up"]);
            }
        } else {
            let link = DelayedLink::new(a, b, delay).expect("a delayed link");
            self.links.push(link);
        }
    }

    fn namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.links.clear();
        for name in &self.namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

impl Site {
    /// `program` to be run inside this site's namespace: killed when dropped, and
    /// also when the test's thread dies without dropping it (a killed test run).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command.kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// Runs `ww args` here, feeding it `stdin`; returns (success, stdout, stderr).
    pub async fn ww(&self, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
        let child = self
            .command(WW)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ww in a lab namespace");
        crate::support::outcome_of_process(child, stdin).await
    }

    /// `GET path` on `addr` from inside this namespace (plain HTTP/1.1); the status
    /// code and body.
    pub async fn http_get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let netns = self.netns.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            let mut socket = in_netns(&netns, move || std::net::TcpStream::connect(addr))
                .expect("entering the namespace")
                .unwrap_or_else(|e| panic!("cannot reach {addr} in {netns}: {e}"));
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            socket.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            socket.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
            let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            (code, body.to_string())
        })
        .await
        .unwrap()
    }
}

/// A `ww run` inside a lab namespace, listening on [`PORT`] (TCP, QUIC or both) on
/// every address there, with its admin endpoint on the namespace's own loopback; killed
/// when dropped.
pub struct LabNode {
    /// The process (`ip netns exec` execs `ww` in place), killed on drop.
    _process: Child,
    pub site: Site,
    pub peer: PeerId,
    /// Its TCP address on its site's IP, if it listens on TCP.
    pub tcp: Option<Multiaddr>,
    /// Its QUIC address on its site's IP, if it listens on QUIC.
    pub quic: Option<Multiaddr>,
    /// Its admin endpoint (inside its namespace).
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl LabNode {
    /// Starts `ww run` at `site`, listening on `transports` (`tcp`, `quic`), with
    /// `args` added (and no mDNS: lab sites are each alone on their links).
    pub async fn start(site: &Site, transports: &[&str], args: &[&str]) -> LabNode {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let admin: SocketAddr = "127.0.0.1:2026".parse().unwrap();
        let mut child = site
            .command(WW)
            .env(
                "RUST_LOG",
                "info,ww=debug,libp2p_dcutr=debug,libp2p_autonat=debug",
            )
            .args(["run", "--no-mdns", "--admin", &admin.to_string()])
            .args(transports.iter().flat_map(|transport| {
                let addr = match *transport {
                    "tcp" => format!("/ip4/0.0.0.0/tcp/{PORT}"),
                    "quic" => format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"),
                    other => panic!("no transport {other}"),
                };
                ["--listen".to_string(), addr]
            }))
            .arg("--identity")
            .arg(dir.path().join("identity.key"))
            .arg("--cache-dir")
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cell-cache"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning ww run in a lab namespace");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut tcp, mut quic) = (None, None);
        let wants = |transport| transports.contains(&transport);
        while (wants("tcp") && tcp.is_none()) || (wants("quic") && quic.is_none()) {
            let addr = crate::support::next_listen_addr(&mut lines, dir.path()).await;
            if addr.iter().next() != Some(Protocol::Ip4(site.ip)) {
                continue;
            }
            if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
                quic = Some(addr);
            } else {
                tcp = Some(addr);
            }
        }
        // Keep reading stdout, so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let any = tcp.as_ref().or(quic.as_ref()).expect("an address");
        let Some(Protocol::P2p(peer)) = any.iter().last() else {
            panic!("no /p2p in {any}")
        };
        LabNode {
            _process: child,
            site: site.clone(),
            peer,
            tcp,
            quic,
            admin,
            dir,
        }
    }

    /// Its address on `transport` (`tcp` or `quic`).
    pub fn addr(&self, transport: &str) -> &Multiaddr {
        match transport {
            "tcp" => self.tcp.as_ref(),
            _ => self.quic.as_ref(),
        }
        .unwrap_or_else(|| panic!("not listening on {transport}"))
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The node's `/api/state` (the dashboard's JSON).
    pub async fn state(&self) -> serde_json::Value {
        let (code, body) = self.site.http_get(self.admin, "/api/state").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Why labs cannot run here, if they cannot.
fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the network-namespace lab needs root (CI runs as root)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if !has(tool) && !apt_install(package) {
            return Err(format!(
                "the lab needs `{tool}`; installing Debian's {package} failed (`apt-get install {package}`)"
            ));
        }
    }
    Ok(())
}

fn has(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn apt_install(package: &str) -> bool {
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "-qq"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    apt(&["install", "-y", package]) || (apt(&["update"]) && apt(&["install", "-y", package]))
}

/// Removes the namespaces of lab test processes that no longer run, and the
/// processes still inside them.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let pids = std::process::Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}

/// Runs `ip args`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn default_route(netns: &str, via: Ipv4Addr) {
    ip(&[
        "-n",
        netns,
        "route",
        "add",
        "default",
        "via",
        &via.to_string(),
    ]);
}

/// Lets `netns` route between its links.
fn forward(netns: &str) {
    in_netns(netns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enabling forwarding")
    })
    .expect("entering the namespace");
}

/// Loads the nftables `ruleset` in `netns`.
fn nft(netns: &str, ruleset: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "nft: {}\n{ruleset}",
        String::from_utf8_lossy(&output.stderr)
    );
}
